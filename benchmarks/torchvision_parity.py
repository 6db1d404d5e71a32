"""Parity of converted torchvision ResNets with torchvision, at every depth, and convert times.

    python tests/fixtures/make_torchvision_fixtures.py --full /tmp/tv   # needs torchvision
    python benchmarks/torchvision_parity.py /tmp/tv --out results/pretrained_2026-12-01

For each model that the first command wrote (resnet18 ... resnet152: seeded random
weights, BatchNorm statistics from random batches, 2 images of 224x224, torchvision's
float32 logits in inference mode), this runs `python -m resnet_jax.pretrained.convert` on the file
(timed as a whole command), loads the directory with `pretrained.load`, and compares the
model's logits with torchvision's: the largest absolute difference, and that divided by
the largest absolute logit. Prints a table and writes parity.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from resnet_jax import pretrained


def check(directory: str, entry: dict, file_format: str, work: str) -> dict:
    name = entry['name']
    out = os.path.join(work, f'{name}_{file_format}')
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, '-m', 'resnet_jax.pretrained.convert', '--torchvision',
         os.path.join(directory, f'{name}.{file_format}'), '--model', name, '--out', out],
        capture_output=True, text=True)
    convert_seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(result.stderr)
    model, variables = pretrained.load(out)
    images = np.load(os.path.join(directory, f'{name}_input.npy'))
    expected = np.load(os.path.join(directory, f'{name}_logits.npy'))
    logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
    max_abs = float(np.abs(logits - expected).max())
    largest = float(np.abs(expected).max())
    return {'model': name, 'format': file_format, 'images': list(images.shape),
            'max_abs_diff': max_abs, 'max_abs_logit': largest,
            'relative_to_largest_logit': max_abs / largest,
            'same_top1': bool((logits.argmax(-1) == expected.argmax(-1)).all()),
            'convert_command_seconds': round(convert_seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('directory', help='what make_torchvision_fixtures.py --full wrote')
    parser.add_argument('--out', help='folder for parity.json')
    args = parser.parse_args()
    with open(os.path.join(args.directory, 'fixtures.json')) as file:
        fixtures = json.load(file)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for entry in fixtures['models']:
            for file_format in entry['formats']:
                rows.append(check(args.directory, entry, file_format, work))
                row = rows[-1]
                print(f"{row['model']:10s} {row['format']:12s} max abs diff "
                      f"{row['max_abs_diff']:.3g}  / largest logit {row['max_abs_logit']:.4g} "
                      f"= {row['relative_to_largest_logit']:.2e}  top-1 same: "
                      f"{row['same_top1']}  convert {row['convert_command_seconds']:.1f} s",
                      flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, 'parity.json'), 'w') as file:
            json.dump({'torchvision': fixtures['versions'], 'jax': jax.__version__,
                       'device': jax.devices()[0].device_kind, 'rows': rows}, file, indent=2)
            file.write('\n')


if __name__ == '__main__':
    main()
