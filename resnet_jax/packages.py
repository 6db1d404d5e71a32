"""Imports of the heavy packages that only some runs need, with a one-line error if absent.

TensorFlow and tensorflow-datasets are dependencies of the project (`pip install -e .`
installs them), but the in-memory path never imports them, and an environment can still
lack them (an install with --no-deps, a platform without TensorFlow wheels). A run that
needs them then stops before anything is compiled, with what to install.
"""

from __future__ import annotations

import importlib
import types

INSTALL_HINT = ('pip install -e .  (in the repository; it installs tensorflow-datasets and '
                'TensorFlow)')


class MissingPackageError(ImportError):
    """A package that this run needs is not installed; the message says what to install."""


def import_for(module: str, purpose: str) -> types.ModuleType:
    """Imports `module`; a third-party package missing under it is a MissingPackageError.

    `purpose` says what needs it ("the streaming input pipeline"). A missing module of
    this project itself is a bug, not an install problem, and is raised unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if not error.name or error.name.split('.')[0] == 'resnet_jax':
            raise
        raise MissingPackageError(
            f'{purpose} needs the package {error.name!r}, which is not installed: '
            f'{INSTALL_HINT}') from error
