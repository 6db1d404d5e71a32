"""Seconds from SIGTERM to the exit of a training run (the checkpoint committed).

Starts `python -m resnet_jax.main` with the given arguments in a fresh workdir, waits
for `Compiled the train step`, lets it train `--after` seconds, sends SIGTERM and times
the exit; repeats `--repeats` times and prints each figure and the step it saved.

    python benchmarks/sigterm_latency.py --after 20 -- --config experiments/cifar10.py:resnet20 \
        --config.data_dir=../shared/data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def time_sigterm(main_args: list[str], after: float) -> tuple[float, str]:
    """(seconds from the signal to the exit, the line that says what was saved)."""
    with tempfile.TemporaryDirectory() as workdir:
        process = subprocess.Popen(
            [sys.executable, '-m', 'resnet_jax.main', *main_args, f'--workdir={workdir}'],
            cwd=REPO, stderr=subprocess.PIPE, text=True)
        lines = []
        for line in process.stderr:
            lines.append(line)
            if 'Compiled the train step' in line:
                break
        time.sleep(after)
        process.send_signal(signal.SIGTERM)
        signalled = time.perf_counter()
        rest = process.stderr.read()
        process.wait()
        elapsed = time.perf_counter() - signalled
    saved = re.search(r'stopped by SIGTERM: saved the checkpoint of step \d+', rest)
    if process.returncode != 128 + signal.SIGTERM or not saved:
        raise SystemExit(f'the run did not stop as expected (exit {process.returncode}):\n'
                         f'{("".join(lines) + rest)[-3000:]}')
    return elapsed, saved.group(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--after', type=float, default=20.0,
                        help='seconds of training after the compilation, before the signal')
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('main_args', nargs='+', help="resnet_jax.main's arguments, after --")
    args = parser.parse_args()
    for _ in range(args.repeats):
        elapsed, saved = time_sigterm(args.main_args, args.after)
        print(f'SIGTERM -> exit {elapsed:.1f} s ({saved})', flush=True)


if __name__ == '__main__':
    main()
