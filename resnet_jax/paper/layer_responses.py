"""Layer responses as the paper's Figure 7: the standard deviation of each 3x3 layer's
response over the eval split, for trained plain nets and ResNets.

    python -m resnet_jax.paper.layer_responses WORKDIR... -o FILE.png [--json FILE]

A layer's response is its output after BatchNorm and before the addition and the ReLU
(section 4.2): in a ResNet, the strength of the residual function. The model reports it
itself (`layers.BatchNorm` sows it into the 'intermediates' collection); it is evaluated
in inference mode (running BN statistics) from the run's latest checkpoint, on the run's
eval split (the test images, or the held-out validation ones). The layers are the 3x3
convolutions of the blocks, in network order: 2 per basic block, 6n for a CIFAR net of
6n+2 layers (a block's `three_by_three_norms`: 1 per pre-activation basic block); the
stem's 3x3 convolution is reported apart (`stem`, absent in pre-activation nets), as it is
no residual function. `std` is the standard deviation over all the response's values (examples,
positions and channels); `mean_channel_std` the mean over channels of each channel's.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import backend, configs, models, parallel, pretrained
from resnet_jax.inputs import arrays, base, in_memory
from resnet_jax.inputs.device_preprocessing import InMemoryPreprocessing
from resnet_jax.paper import plot
from resnet_jax.runs import checkpoint
from resnet_jax.training import train, train_state

DEFINITION = ("std of each 3x3 layer's response (after BN, before the addition and the "
              'ReLU) over the eval split, inference mode, latest checkpoint; std: over all '
              'values; mean_channel_std: mean over channels of per-channel std')


class ResponseError(ValueError):
    """A workdir whose layer responses cannot be computed; the message says why."""


def layer_paths(model: models.ResNet) -> list[tuple[str, str]]:
    """(block, norm) of each 3x3 layer of the blocks, in network order."""
    return [(f'stage{i}_block{j}', norm)
            for i, size in enumerate(model.stage_sizes, start=1)
            for j in range(1, size + 1) for norm in model.block.three_by_three_norms]


def responses(model: models.ResNet, variables: dict, batch: jax.Array) -> dict[str, jax.Array]:
    """{'stem' or 'stageI_blockJ/bnK': response} of one normalised batch, inference mode."""
    _, state = model.apply(variables, batch, train=False, mutable=['intermediates'])
    sown = state['intermediates']
    # A pre-activation net has no BN after its stem convolution: no stem response.
    found = {'stem': sown['stem_bn']['response'][0]} if 'stem_bn' in sown else {}
    for block, norm in layer_paths(model):
        found[f'{block}/{norm}'] = sown[block][norm]['response'][0]
    return found


def response_statistics(model: models.ResNet, variables: dict, images: np.ndarray,
                        normalize: Callable[[jax.Array], jax.Array],
                        batch_size: int) -> dict[str, dict[str, float]]:
    """{layer: {'std', 'mean_channel_std'}} over uint8 `images`, by batches; the last one
    is padded and its padding not counted."""

    @jax.jit
    def sums(variables, batch, mask):
        out = {}
        for name, value in responses(model, variables, normalize(batch)).items():
            value = value.astype(jnp.float32)
            weight = mask.reshape((-1,) + (1,) * (value.ndim - 1))
            axes = tuple(range(value.ndim - 1))
            out[name] = (jnp.sum(value * weight, axes), jnp.sum(value * value * weight, axes),
                         jnp.sum(weight) * np.prod(value.shape[1:-1]))
        return out

    totals: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        real = min(batch_size, len(images) - start)
        batch = np.zeros((batch_size, *images.shape[1:]), images.dtype)
        batch[:real] = images[start:start + real]
        mask = (np.arange(batch_size) < real).astype(np.float32)
        for name, parts in jax.device_get(sums(variables, batch, mask)).items():
            parts = [np.asarray(p, np.float64) for p in parts]
            totals[name] = parts if name not in totals else [
                a + b for a, b in zip(totals[name], parts, strict=True)]
    statistics = {}
    for name, (total, squares, count) in totals.items():
        channel_mean = total / count
        channel_var = np.maximum(squares / count - channel_mean ** 2, 0.0)
        overall_mean = total.sum() / (count * total.size)
        overall_var = max(squares.sum() / (count * total.size) - overall_mean ** 2, 0.0)
        statistics[name] = {'std': float(np.sqrt(overall_var)),
                            'mean_channel_std': float(np.sqrt(channel_var).mean())}
    return statistics


def config_from_workdir(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    """The config a run saved (config.json), as a ConfigDict."""
    if not (workdir / 'config.json').is_file():
        raise ResponseError(f'{workdir} has no config.json (give the workdir of a run)')
    return pretrained.read_config(str(workdir))


def run_responses(workdir: str | pathlib.Path) -> dict:
    """The layer responses of the run in `workdir`, from its latest checkpoint."""
    workdir = pathlib.Path(workdir)
    config = config_from_workdir(workdir)
    if configs.pipeline(config) != 'memory':
        raise ResponseError(f'{workdir}: layer responses read in-memory data sets (CIFAR-10, '
                            f'image folders), not dataset={config.dataset!r} streamed')
    if not (workdir / 'checkpoints').is_dir():
        raise ResponseError(f'{workdir} has no checkpoints/ to evaluate')
    data = in_memory.open_dataset(config)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, tx, _, _ = train.build_model_and_optimizer(
        config, data.num_classes, base.steps_per_epoch(config, data), mesh)
    init_key, _ = backend.run_keys(config.seed)
    state = train_state.create_train_state(model, tx, data.image_size, init_key, mesh)
    checkpointer = checkpoint.Checkpointer(workdir / 'checkpoints', config.keep_checkpoints,
                                           train.run_record(config, model))
    try:
        if checkpointer.latest_step() is None:
            raise ResponseError(f'{workdir} has no checkpoint to evaluate')
        state = checkpointer.restore_latest(state)
    finally:
        checkpointer.close()
    normalize = InMemoryPreprocessing.from_config(config, data.train_images,
                                                  model.dtype).normalize
    statistics = response_statistics(
        model, {'params': state.params, 'batch_stats': state.batch_stats}, data.eval_images,
        normalize, config.eval_batch_size)
    family, label = plot.model_label(config.to_dict(), workdir)
    return {
        'workdir': str(workdir), 'model': config.model.name, 'label': label, 'family': family,
        'step': int(state.step), 'split': data.eval_split, 'examples': len(data.eval_labels),
        'stem': statistics.pop('stem', None),
        'layers': [{'index': index, 'name': name, **values}
                   for index, (name, values) in enumerate(statistics.items(), start=1)],
    }


def plot_responses(runs: Sequence[dict], output: str | pathlib.Path) -> pathlib.Path:
    """Figure 7: std by layer index (top) and sorted by magnitude (bottom), a line per run."""
    from matplotlib.figure import Figure  # no pyplot: no display, no global state
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 7), layout='constrained')
    top, bottom = figure.subplots(2, 1)
    for index, run in enumerate(runs):
        stds = [layer['std'] for layer in run['layers']]
        style = {'color': f'C{index % 10}', 'linestyle': '--' if run['family'] == 'plain'
                 else '-', 'linewidth': 1.2, 'label': run['label']}
        top.plot(range(1, len(stds) + 1), stds, **style)
        bottom.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), **style)
    top.set_xlabel('layer index (original)')
    bottom.set_xlabel('layer index (sorted by magnitude)')
    for ax in (top, bottom):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel('std')
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return plot.save(figure, output)


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the figure (and the JSON); a bad workdir exits 2 with one line."""
    parser = argparse.ArgumentParser(
        prog='python -m resnet_jax.paper.layer_responses',
        description="Std of each 3x3 layer's response (the paper's Figure 7).")
    parser.add_argument('workdirs', nargs='+', metavar='WORKDIR')
    parser.add_argument('-o', '--output', required=True, metavar='FILE.png')
    parser.add_argument('--json', default=None, metavar='FILE',
                        help='also write the numbers here')
    args = parser.parse_args(argv)
    try:
        runs = [run_responses(w) for w in args.workdirs]
        written = plot_responses(runs, args.output)
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(
                {'definition': DEFINITION, 'runs': runs},
                indent=2) + '\n')
    except (ResponseError, configs.ConfigError, arrays.DatasetNotFoundError, arrays.DataError,
            checkpoint.IncompatibleCheckpointError, checkpoint.UnreadableCheckpointsError,
            OSError) as error:
        parser.error(str(error).splitlines()[0] if isinstance(error, ResponseError)
                     else f'{type(error).__name__}: {" ".join(str(error).split())}')
    print(written)
    return 0


if __name__ == '__main__':
    sys.exit(main())
