"""Where resnet_jax keeps what it can rebuild (compiled steps, the CPU kernels, decoded data
sets): `$XDG_CACHE_HOME/resnet_jax`, else `~/.cache/resnet_jax`. Each kind has its own
variable that moves it alone."""

from __future__ import annotations

import os
import pathlib


def root() -> pathlib.Path:
    return pathlib.Path(os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache',
                        'resnet_jax')
