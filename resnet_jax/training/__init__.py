"""Training: the loop (`train`), the jitted train step (`steps`), the state it updates
(`train_state`), the optimiser and schedules (`optim`), exact evaluation (`evaluation`), and
the timing of the real steps on synthetic data (`benchmark`).
"""
