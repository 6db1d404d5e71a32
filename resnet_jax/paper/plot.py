"""Training curves as the paper's Figure 6: error (%) against iterations (or epochs), plain
nets and ResNets in panels side by side, training error thin and dashed, test error bold.

    python -m resnet_jax.paper.plot WORKDIR... -o FILE.png [--title TEXT] [--x epochs]

Each WORKDIR is a run's (its metrics.jsonl; config.json names the model). The training
error is 100 - the logged training accuracy (augmented minibatches, averaged over each
log_every_steps); the test error is 100 - the top-1 accuracy of each evaluation (on the
validation split instead, when the run held one out).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from resnet_jax.paper import results_table


class PlotError(ValueError):
    """A workdir that cannot be drawn; the message names it and says why."""


def model_label(config: dict | None, workdir: pathlib.Path) -> tuple[str, str]:
    """(family, label) of a run: ('plain', 'plain-20') or ('ResNet', 'ResNet-20'), with
    the block where it is not the paper's ('ResNet-56 (pre-act)'); a run without
    config.json is named after its directory."""
    model = (config or {}).get('model') or {}
    name = (model.get('name') or workdir.name).removeprefix('cifar_')
    # A block other than the paper's: 'pre-act' or the class name of a block file.
    block = model.get('block') or ''
    block = 'pre-act' if block.startswith('preact_') else block.rpartition(':')[2]
    for prefix, family in (('plain', 'plain'), ('resnet', 'ResNet')):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            label = f'{family}-{name[len(prefix):]}'
            return family, f'{label} ({block})' if block else label
    return 'other', name


def eval_split(records: Sequence[dict]) -> str | None:
    """'test' or 'validation': the split the run evaluated on (None if it has not yet)."""
    for record in records:
        for key in record:
            if key.endswith('/top1_accuracy'):
                return key.split('/')[0]
    return None


def curves(workdir: pathlib.Path) -> dict:
    """A run's curves: {'family', 'label', 'split', 'train': (steps, errors), 'test': ...}."""
    records = results_table.read_metrics(workdir)
    if not records:
        why = 'is not a directory' if not workdir.is_dir() else 'has no metrics.jsonl records'
        raise PlotError(f'{workdir} {why} (give the workdir of a run that has logged)')
    config = results_table.read_json(workdir / 'config.json')
    family, label = model_label(config, workdir)
    split = eval_split(records)

    # Steps per epoch, from a training record's epoch (runs of other batch sizes compare
    # at equal epochs); None for runs that predate the record.
    per_epoch = next((r['step'] / r['train/epoch'] for r in records
                      if r.get('train/epoch')), None)

    def series(key: str) -> tuple[list[float], list[float]]:
        points = [(r['step'], 100 * (1 - r[key])) for r in records if key in r]
        return [s for s, _ in points], [e for _, e in points]

    return {'family': family, 'label': label, 'split': split, 'steps_per_epoch': per_epoch,
            'train': series('train/accuracy'),
            'test': series(f'{split}/top1_accuracy') if split else ([], [])}


X_AXES = ('iterations', 'epochs')


def plot_workdirs(workdirs: Sequence[str | pathlib.Path], output: str | pathlib.Path,
                  title: str | None = None, x: str = 'iterations') -> pathlib.Path:
    """Draws the runs of `workdirs` into the PNG `output`, against iterations or epochs;
    PlotError for a bad workdir."""
    runs = [curves(pathlib.Path(w)) for w in workdirs]
    if x == 'epochs':
        for run, workdir in zip(runs, workdirs, strict=True):
            if not run['steps_per_epoch']:
                raise PlotError(f'{workdir} records no train/epoch (a run of an older '
                                'version): plot it against iterations')
            for kind in ('train', 'test'):
                steps, errors = run[kind]
                run[kind] = [s / run['steps_per_epoch'] for s in steps], errors
    # Several seeds of one model: tell them apart by their directory.
    labels = [r['label'] for r in runs]
    for run, workdir in zip(runs, workdirs, strict=True):
        if labels.count(run['label']) > 1:
            run['label'] = f'{run["label"]} ({pathlib.Path(workdir).name})'
    families = [f for f in ('plain', 'ResNet', 'other') if any(r['family'] == f for r in runs)]

    from matplotlib.figure import Figure  # no pyplot: no display, no global state

    figure = Figure(figsize=(6 * len(families), 4.5), layout='constrained')
    axes = figure.subplots(1, len(families), sharey=True, squeeze=False)[0]
    for ax, family in zip(axes, families, strict=True):
        members = [r for r in runs if r['family'] == family]
        for index, run in enumerate(members):
            color = f'C{index % 10}'
            ax.plot(*run['train'], color=color, linewidth=0.8, linestyle='--')
            ax.plot(*run['test'], color=color, linewidth=2.2, label=run['label'])
        splits = sorted({r['split'] for r in members if r['split']}) or ['test']
        ax.set_title({'plain': 'plain nets', 'ResNet': 'ResNets'}.get(family, 'other nets'))
        ax.set_xlabel(x)
        ax.grid(True, alpha=0.3)
        ax.legend(title=f'bold: {"/".join(splits)} error; dashed: training error',
                  fontsize=8, title_fontsize=8)
    axes[0].set_ylabel('error (%)')
    if title:
        figure.suptitle(title)
    return save(figure, output)


def save(figure, output: str | pathlib.Path) -> pathlib.Path:
    """Writes a matplotlib Figure as a PNG (its folder created); returns the path."""
    output = pathlib.Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the figure; a bad workdir or output exits 2 with one line."""
    parser = argparse.ArgumentParser(
        prog='python -m resnet_jax.paper.plot',
        description="Training and test error against iterations (the paper's Figure 6).")
    parser.add_argument('workdirs', nargs='+', metavar='WORKDIR')
    parser.add_argument('-o', '--output', required=True, metavar='FILE.png')
    parser.add_argument('--title', default=None)
    parser.add_argument('--x', choices=X_AXES, default='iterations',
                        help='the horizontal axis: iterations, or epochs (to compare runs '
                        'of other batch sizes)')
    args = parser.parse_args(argv)
    try:
        written = plot_workdirs(args.workdirs, args.output, args.title, args.x)
    except (ValueError, OSError) as error:  # PlotError, unreadable JSON, unwritable -o
        parser.error(str(error))
    print(written)
    return 0


if __name__ == '__main__':
    sys.exit(main())
