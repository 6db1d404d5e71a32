"""A run on disk and in time: its workdir (`workdir`), Orbax checkpoints and resume
(`checkpoint`), metric sinks (`metrics`), and graceful stops on SIGTERM (`preemption`).
"""
