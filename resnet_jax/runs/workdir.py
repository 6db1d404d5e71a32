"""The run's directory: found writable and big enough before anything expensive starts."""

from __future__ import annotations

import os
import pathlib
import shutil

import jax
import ml_collections
from etils import epath

from resnet_jax.models import architecture


class WorkdirError(OSError):
    """The workdir cannot be created or written, or has no room for the checkpoints."""


def resolve_workdir(workdir: str) -> str:
    """The workdir as an absolute path: `~` expanded, relative to the current directory.

    Orbax accepts only absolute checkpoint paths, and a run that changes directory must
    keep writing to the same place; a bucket (gs://...) is returned unchanged.
    """
    if '://' in workdir:
        return workdir
    return os.path.abspath(os.path.expanduser(workdir))


def prepare_workdir(workdir: str) -> epath.Path:
    """Creates the workdir (a local path or a bucket such as gs://...) and proves it writable.

    Returns the resolved path (see `resolve_workdir`); everything after uses only that.
    """
    path = epath.Path(resolve_workdir(workdir))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f'.write_test_{jax.process_index()}'
        probe.write_text('ok')
        probe.unlink()
    except Exception as error:  # noqa: BLE001 - every backend raises its own kind
        reason = getattr(error, 'strerror', None) or f'{type(error).__name__}: {error}'
        raise WorkdirError(
            f'workdir {workdir!r} is not writable ({reason}); choose another --workdir, or '
            'fix its permissions, free space or bucket name') from error
    return path


def check_free_space(path: epath.Path, needed_bytes: int) -> None:
    """Raises WorkdirError when a local workdir has less free space than `needed_bytes`."""
    if '://' in str(path):
        return  # object stores have no meaningful free-space figure
    free = shutil.disk_usage(str(path)).free
    if free < needed_bytes:
        raise WorkdirError(
            f'workdir {str(path)!r} has {free / 2**20:.1f} MiB free but the checkpoints of '
            f'this run need about {needed_bytes / 2**20:.1f} MiB; free some space, lower '
            '--config.keep_checkpoints, or choose another --workdir')


def save_config(config: ml_collections.ConfigDict, path: epath.Path) -> None:
    """Writes the resolved config of the run as `config.json` (first process only), and a
    copy of the file of a block defined outside the package, from which the model can be
    rebuilt wherever the workdir goes (`pretrained.read_config`)."""
    if jax.process_index() != 0:
        return
    (path / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')
    block_file = architecture.block_file(config.model.block)
    if block_file is not None:
        copies = path / architecture.BLOCK_FILES_DIR
        copies.mkdir(exist_ok=True)
        (copies / os.path.basename(block_file)).write_text(
            pathlib.Path(block_file).expanduser().read_text())
