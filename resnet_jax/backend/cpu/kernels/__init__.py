"""CPU kernels that XLA:CPU lacks, compiled for the host on first use (see native.py)."""
