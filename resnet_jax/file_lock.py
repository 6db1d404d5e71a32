"""One process at a time: an exclusive lock on a file beside something several processes
may build at once (a decoded data set, the CPU kernels), so that the first builds it and
the others wait and then find it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

try:
    import fcntl
except ImportError:  # Windows: no lock; each process builds its own copy
    fcntl = None


@contextlib.contextmanager
def exclusive(lock_path: str | os.PathLike) -> Iterator[None]:
    """Holds an exclusive lock on `lock_path` (created if needed) while the block runs.
    Where it cannot be taken (no fcntl, an unwritable directory), the block runs unlocked:
    building twice is slower, never wrong, for callers that write by atomic rename."""
    if fcntl is None:
        yield
        return
    try:
        os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
