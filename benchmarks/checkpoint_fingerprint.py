"""Fingerprints of two short CPU runs' final checkpoints: a refactor must not change them.

    python benchmarks/checkpoint_fingerprint.py            # run on each revision, compare
    python benchmarks/checkpoint_fingerprint.py --config.schedule.lr=0.1   # extra overrides

Trains a CIFAR ResNet-8 for 12 steps in memory (synthetic data, the paper's augmentation,
an evaluation half-way) and 8 steps streamed (a generated image folder of mixed sizes,
scale augmentation, lighting), each with `python -m resnet_jax.main` from the repository
root, and prints a SHA-256 over every array of each final checkpoint (paths and bytes)
with the final evaluation. Equal lines on two revisions mean bitwise-equal training.
Arguments are added to both runs' commands (to hold a setting fixed across revisions that
changed its default).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np
from orbax import checkpoint as ocp
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parent.parent
COMMON = ['--config', 'experiments/smoke.py', '--config.model.name=cifar_resnet8']
RUNS = {
    'memory': ['--config.total_steps=12', '--config.eval_every_steps=6',
               '--config.checkpoint_every_steps=6'],
    'stream': ['--config.dataset=image_folder', '--config.pipeline=streaming',
               '--config.image_size=32', '--config.num_classes=3',
               '--config.streaming.scale_range=(32,48)', '--config.streaming.eval_resize=36',
               '--config.streaming.lighting_std=0.1', '--config.batch_size=12',
               '--config.eval_batch_size=12', '--config.total_steps=8',
               '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4'],
}


def write_folder(root: pathlib.Path) -> None:
    """3 classes, 24 train and 8 val JPEGs each, random sizes 40-79 px (seeded)."""
    rng = np.random.default_rng(0)
    for split, count in (('train', 24), ('val', 8)):
        for name in ('a', 'b', 'c'):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                height, width = rng.integers(40, 80, 2)
                pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f'{i}.jpg')


def fingerprint(workdir: pathlib.Path) -> str:
    """SHA-256 of the newest checkpoint's arrays, with the final evaluation."""
    steps = [int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()]
    last = max(steps)
    state = ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(last) / 'state')
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.asarray(leaf).tobytes())
    final = json.loads((workdir / 'final_eval.json').read_text())
    return (f'step {last}: {digest.hexdigest()[:16]}; top-1 {final["top1_accuracy"]!r}, '
            f'loss {final["loss"]!r}')


def main(overrides: list[str]) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        write_folder(scratch / 'folder')
        for name, extra in RUNS.items():
            data = ([f'--config.data_dir={scratch / "folder"}'] if name == 'stream' else [])
            command = [sys.executable, '-m', 'resnet_jax.main', *COMMON, *extra, *data, *overrides,
                       '--workdir', str(scratch / name)]
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            if result.returncode != 0:
                sys.stderr.write(result.stderr[-2000:])
                return result.returncode
            print(f'{name}: {fingerprint(scratch / name)}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
