"""The inputs of training: data sets whole in memory (`arrays`, `in_memory`) or streamed by
tf.data (`sources`, `host_augment`, `tf_pipelines`, `streamed`), the preprocessing the
device applies to their batches (`device_preprocessing`), the checks and the contract both
paths share (`base`), and the choice between them (`factory`). An input yields batches;
training builds the steps that consume them.
"""
