"""Helpers of the tests of pretrained models: small model directories and torchvision-style
state dicts made in-process (no torch), and one-line error checks of the entry points."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import configs, models, pretrained
from resnet_jax.pretrained import torchvision_weights

REPO = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = REPO / 'tests' / 'fixtures' / 'torchvision_tiny'


def random_variables(model: models.ResNet, seed: int = 0, image_size: int = 32) -> dict:
    """Initialised variables with non-trivial BatchNorm statistics and scales."""
    # A jitted init with an 'rbg' key: compiles in a fraction of the time of threefry's.
    key = jax.random.key(seed, impl='rbg')
    variables = jax.jit(lambda x: model.init(key, x, train=False))(
        jnp.zeros((1, image_size, image_size, 3)))
    rng = np.random.default_rng(seed)

    def perturb(path, leaf):
        name = path[-1].key
        if name == 'mean':
            return rng.normal(0, 0.1, leaf.shape).astype(np.float32)
        if name == 'var':
            return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
        if name == 'scale':
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if name == 'bias':
            return rng.normal(0, 0.1, leaf.shape).astype(np.float32)
        return np.asarray(leaf)

    return jax.tree_util.tree_map_with_path(perturb, variables)


def cifar_model_dir(directory: pathlib.Path, name: str = 'cifar_resnet8',
                    num_classes: int = 10, **fields) -> tuple[models.ResNet, dict]:
    """A model directory of a CIFAR-10 model (as a training run's workdir would hold);
    `fields` override the config's (dataset='image_folder', data_dir=...)."""
    config = configs.get_base_config()
    config.model.name = name
    config.dataset = 'cifar10'
    config.update(fields)
    model = pretrained.build_model(config, num_classes)
    variables = random_variables(model)
    pretrained.save(str(directory), config, model, variables)
    return model, variables


def imagenet_model_dir(directory: pathlib.Path, name: str = 'resnet18',
                       num_classes: int = 1000) -> tuple[models.ResNet, dict]:
    """A model directory as `convert` writes it for a torchvision model, random weights."""
    config = pretrained.imagenet_config(name, num_classes)
    model = pretrained.build_model(config, num_classes)
    variables = random_variables(model)
    pretrained.save(str(directory), config, model, variables)
    return model, variables


def torchvision_state_dict(name: str, num_classes: int, seed: int = 0) -> dict:
    """A torchvision-named state dict of `name` with random values (a stand-in for a file
    of torchvision's; tests/fixtures holds ones torchvision wrote)."""
    model = pretrained.build_model(pretrained.imagenet_config(name, num_classes), num_classes)
    return torchvision_weights.to_state_dict(random_variables(model, seed))


def shapes_only_state_dict(name: str, num_classes: int = 1000) -> dict:
    """torchvision's names and shapes of `name`, values zero, no memory used."""
    model = pretrained.build_model(pretrained.imagenet_config(name, num_classes), num_classes)
    shapes = torchvision_weights.variable_shapes(model)
    zeros = jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes)
    return torchvision_weights.to_state_dict(zeros)


def run_module(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repository root."""
    return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def usage_error_in_process(parse, args: list[str], capsys) -> subprocess.CompletedProcess:
    """What `parse(args)` (an argparse-based main or parser) exits with and prints, as the
    process result assert_one_line_error reads. For the many bad-argument cases of a
    command whose entry point one subprocess test already covers: no process each."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        parse(args)
    return subprocess.CompletedProcess(args, exit_info.value.code, '', capsys.readouterr().err)


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str,
                          returncode: int = 1) -> None:
    """Exit status, no traceback, and the whole of `expected` on one line of stderr."""
    assert result.returncode == returncode, (result.returncode, result.stderr[-3000:])
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert any(expected in line for line in result.stderr.splitlines()), result.stderr[-3000:]
