"""Stopping a command for real: a signal once its log shows a line."""

import subprocess
from typing import NamedTuple


class Stopped(NamedTuple):
    returncode: int
    stderr: str


def signal_when_logged(command: list[str], marker: str, signum: int, timeout: float = 120,
                       **popen_args) -> Stopped:
    """Runs `command`, sends `signum` once a line of its stderr holds `marker`, and returns
    its exit status and the whole of its stderr."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, **popen_args)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if marker in line:
            process.send_signal(signum)
            break
    rest = process.stderr.read()
    process.wait(timeout=timeout)
    return Stopped(process.returncode, ''.join(lines) + rest)
