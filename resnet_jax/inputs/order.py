"""The order of the training examples: a new permutation every epoch, from (seed, epoch) alone.

Both input paths use it (the in-memory batches and a random-access streamed source), so a
resumed run continues the same order without saving any input state.
"""

import numpy as np


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The int32 order of `num_examples` examples in epoch `epoch` of a run seeded `seed`."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)
