"""Python files named by path, imported under a name of their own and kept in
`sys.modules` as a module should be (dataclasses, and so flax modules, defined in the
file need that): the one way config files, the experiments they build on, study files and
block files are read. A block's file is imported once per process,
so that its classes stay the same objects; `--config` itself is read by ml_collections'
flags, which import the file once more, as a module of their own."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import types


def import_file(path: str | os.PathLike, *, again: bool = False) -> types.ModuleType:
    """The module of the Python file at `path` (FileNotFoundError if there is none). A file
    imported before is not run again, so that its classes stay the same objects, unless
    `again` (a config file, which may have changed since)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    digest = hashlib.sha1(path.encode()).hexdigest()[:12]
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f'resnet_jax_file_{stem}_{digest}'
    if again or name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]
