"""What the command-line tools (main, reproduce, convert, predict, export) share: one-line
errors and quiet Orbax logs."""

from __future__ import annotations

import logging as std_logging
import sys
from typing import NoReturn

from absl import logging


def quiet_orbax_logs() -> None:
    """Orbax logs every step of every read and save at INFO; keep its warnings and errors."""
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname)


def error_line(error: Exception) -> str:
    """What an error says, on one line: a traceback or a list of attempts ends with it."""
    while error.args and isinstance(error.args[0], Exception):  # ml_collections wraps
        error = error.args[0]
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if isinstance(error, KeyError):  # a misspelt override: the name, then a suggestion
        return ' '.join(lines)
    return lines[-1] if lines else type(error).__name__


def fail(line: str) -> NoReturn:
    """Exits with status 1 after writing `line` (a user's mistake: no traceback)."""
    sys.stderr.write(f'{line}\n')
    sys.exit(1)
