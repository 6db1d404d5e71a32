"""What the small command-line tools (convert, predict, export) share: one-line errors
and quiet Orbax logs."""

from __future__ import annotations

import logging as std_logging
import sys
from typing import NoReturn

from absl import logging


def quiet_orbax_logs() -> None:
    """Orbax logs every step of every read and save at INFO; keep its warnings and errors."""
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname)


def fail(line: str) -> NoReturn:
    """Exits with status 1 after writing `line` (a user's mistake: no traceback)."""
    sys.stderr.write(f'{line}\n')
    sys.exit(1)
