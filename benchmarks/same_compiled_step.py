"""Whether a change leaves the compiled training step as it was: the same program runs as fast.

    python benchmarks/same_compiled_step.py ../before      # a checkout of the revision before
    python benchmarks/same_compiled_step.py ../before --case experiments/r50.py@32

Builds the train step of each case (`resnet_jax.training.benchmark.build_steps`, as
benchmarks/cpu_vs_torch.py times it) once with this checkout's `resnet_jax` and once with
the one at the given path, has XLA write the optimised HLO of each, and compares them with
the source locations left out (file and function tables, `metadata={...}`). Prints, per
case, "identical" or the first lines that differ; exits 1 if any case differs. A refactor
that keeps the program needs no timing to show that it is no slower.
"""

from __future__ import annotations

import argparse
import difflib
import os
import pathlib
import re
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_CASES = ('experiments/cifar10.py:resnet20@128', 'experiments/r50.py@32')
_BUILD = '''
import sys
import resnet_jax
assert resnet_jax.__file__.startswith(sys.argv[2]), resnet_jax.__file__
from resnet_jax import backend
try:
    from resnet_jax.training import benchmark
except ImportError:  # a checkout from before the package was grouped by role
    from resnet_jax import benchmark
backend.configure_process()
spec, batch = sys.argv[1].rsplit('@', 1)
benchmark.build_steps(benchmark.load_config(spec, int(batch), 'float32'))
'''
_METADATA = re.compile(r',? ?metadata=\{[^}]*\}')


def optimised_train_step(checkout: pathlib.Path, case: str, dump: pathlib.Path) -> list[str]:
    """The optimised HLO of the train step of `case` built with `checkout`'s code."""
    env = dict(os.environ, PYTHONPATH=str(checkout),
               XLA_FLAGS=f'{os.environ.get("XLA_FLAGS", "")} --xla_dump_to={dump} '
                         '--xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*train_step.*')
    # Run outside both checkouts: `python -c` puts its working directory first on sys.path.
    dump.mkdir(parents=True)
    subprocess.run([sys.executable, '-c', _BUILD, str(REPO / case), str(checkout)], env=env,
                   cwd=dump, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (text,) = [f for f in dump.iterdir()
               if f.name.endswith('train_step.cpu_after_optimizations.txt')]
    # The computations only: the tables of source files and stack frames name the checkout.
    return [_METADATA.sub('', line) for line in text.read_text().splitlines()
            if line.startswith(('ENTRY', '%', 'ROOT', ' '))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('other', help='the checkout to compare with (e.g. ../before)')
    parser.add_argument('--case', action='append', help='CONFIG[:ARG]@BATCH (repeatable)')
    args = parser.parse_args()
    other = pathlib.Path(args.other).resolve()
    differs = False
    for case in args.case or DEFAULT_CASES:
        with tempfile.TemporaryDirectory() as tmp:
            here = optimised_train_step(REPO, case, pathlib.Path(tmp, 'here'))
            there = optimised_train_step(other, case, pathlib.Path(tmp, 'there'))
        if here == there:
            print(f'{case}: identical ({len(here)} lines of optimised HLO)')
            continue
        differs = True
        diff = list(difflib.unified_diff(there, here, str(other), str(REPO), n=0, lineterm=''))
        print(f'{case}: differs ({len(diff)} diff lines); the first:')
        print('\n'.join(diff[:20]))
    return 1 if differs else 0


if __name__ == '__main__':
    sys.exit(main())
