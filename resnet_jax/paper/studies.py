"""The paper's CIFAR-10 studies that `python -m resnet_jax.paper.reproduce` runs, and its numbers.

A study is a list of models of an experiment file, by default `experiments/cifar10.py`
(the recipe of section 4.2), each trained with the paper's schedule or the short one, for
some seeds. The valid model names (its `MODELS`) and both schedules (`MODEL` and
`MODEL,short`) are that file's: it stays the one place the recipe is written.
experiments/preact_cifar10.py and experiments/se_resnet.py are such files too.
"""

from __future__ import annotations

import dataclasses
import pathlib
import types

from resnet_jax import pyfiles

# The experiment file of the CIFAR-10 recipe, found beside the package (an editable
# install or a checkout), so that a study runs from any directory.
CIFAR10_EXPERIMENT = pathlib.Path(__file__).resolve().parents[2] / 'experiments' / 'cifar10.py'

# Schedule name -> the suffix of the experiment argument (`resnet20` or `resnet20,short`).
SCHEDULES = {'paper': '', 'short': ',short'}

# Table 6 of the paper (CIFAR-10 test error, %; the original lossless images) and its
# parameter counts (millions). ResNet-110's is the best of 5 runs (mean 6.61).
PAPER_TEST_ERROR = {'resnet20': 8.75, 'resnet32': 7.51, 'resnet44': 7.17, 'resnet56': 6.97,
                    'resnet110': 6.43, 'resnet1202': 7.93}
PAPER_PARAMS_M = {'resnet20': 0.27, 'resnet32': 0.46, 'resnet44': 0.66, 'resnet56': 0.85,
                  'resnet110': 1.7, 'resnet1202': 19.4}


@dataclasses.dataclass(frozen=True)
class Study:
    """What one study runs (`models`, unless --models says otherwise) and draws."""

    name: str
    reproduces: str  # the part of the paper, for the header of results.md
    models: tuple[str, ...]
    # Models whose layer responses (Figure 7) are drawn when all of them have finished;
    # () draws none.
    layer_response_models: tuple[str, ...] = ()


STUDIES = {
    'cifar10': Study(
        'cifar10', 'Table 6 (CIFAR-10 test error of the ResNets) and Figure 6, middle',
        ('resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet110')),
    'degradation': Study(
        'degradation', 'Figure 6, left and middle (plain nets degrade with depth, ResNets '
        'do not), and Figure 7 (layer responses)',
        ('plain20', 'plain32', 'plain44', 'plain56',
         'resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet110'),
        layer_response_models=('plain20', 'plain56', 'resnet20', 'resnet56', 'resnet110')),
}


def load_experiment(path: str | pathlib.Path = CIFAR10_EXPERIMENT) -> types.ModuleType:
    """An experiment file as a module (its get_config and MODELS)."""
    module = pyfiles.import_file(str(path))
    if not hasattr(module, 'MODELS') or not hasattr(module, 'get_config'):
        raise ValueError(f'{path} is no CIFAR experiment of a study: it needs MODELS (the '
                         'model arguments) and get_config(MODEL) / get_config("MODEL,short")')
    return module


def model_names(path: str | pathlib.Path = CIFAR10_EXPERIMENT) -> tuple[str, ...]:
    """Every model an experiment file takes (experiments/cifar10.py: resnet20 ...
    resnet1202, plain20 ... plain110)."""
    return tuple(load_experiment(path).MODELS)


def experiment_spec(model: str, schedule: str,
                    path: str | pathlib.Path = CIFAR10_EXPERIMENT) -> str:
    """The `--config` value of one run: `<path>/experiments/cifar10.py:resnet20,short`."""
    return f'{pathlib.Path(path).resolve()}:{model}{SCHEDULES[schedule]}'


def run_name(model: str, schedule: str, seed: int) -> str:
    """The workdir of one run under the study's directory: `resnet20_short_seed0`."""
    return f'{model}_{schedule}_seed{seed}'
