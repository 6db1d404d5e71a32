"""Reading data sets: whole into host memory (arrays.py), or streamed by tf.data (the rest)."""
