"""Experiment configuration: the base config, loading config files, and validation.

Every field a run reads lives in `get_base_config()` with its default and a comment, so
that an experiment file only states what differs from the defaults. Values that can
be derived (steps per epoch, the number of classes of a known data set, schedule
boundaries given in epochs) are computed in code at run time, not frozen here.
"""

from __future__ import annotations

import pathlib

import ml_collections
from ml_collections import config_dict

from resnet_jax import backend, models, pyfiles
from resnet_jax.inputs import arrays, device_preprocessing, streaming_choices
from resnet_jax.training import optim

# Each list of valid values lives with what implements it; validate_config checks against
# those. The two below name what this module itself resolves.
PIPELINES = ('auto', 'memory', 'streaming')  # see `pipeline()`
DTYPES = ('float32', 'bfloat16')  # the compute dtype, `jnp.dtype(config.dtype)`


class ConfigError(ValueError):
    """A configuration that cannot run; the message says which field and how to fix it."""


def get_base_config() -> ml_collections.ConfigDict:
    """Returns every field of an experiment with its default (the paper's CIFAR recipe)."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Input. 'memory': the data set is loaded once and kept on the device ('cifar10',
    # 'image_folder', 'synthetic'). 'streaming': tf.data reads, decodes and augments on the
    # hosts ('imagenet2012', 'tfds:NAME', 'image_folder' with images of any size).
    # 'auto': streaming for imagenet2012 and tfds:NAME, memory for the others.
    config.pipeline = 'auto'
    config.dataset = 'cifar10'
    config.data_dir = ''  # '' searches $RESNET_JAX_DATA_DIR, ./data/cifar10-jpeg, tfds.
    config.validation_examples = 0  # >0 holds these out of train and evaluates on them.
    config.num_classes = config_dict.placeholder(int)  # None: from the data set.
    config.image_size = config_dict.placeholder(int)  # None: from the data set.
    config.synthetic = ml_collections.ConfigDict()
    config.synthetic.num_train_examples = 1024
    config.synthetic.num_eval_examples = 256
    # Augmentation of in-memory data, on the device: 'pad_crop_flip' (the paper's CIFAR
    # augmentation: 4-pixel zero pad, random crop, horizontal flip), 'flip' or 'none'.
    # (Streamed data: streaming.augment.)
    config.augment = 'pad_crop_flip'
    config.pad_pixels = 4
    # In-memory images are normalised as (pixels - the training set's per-pixel mean) /
    # pixel_scale. (Streamed data: streaming.mean_rgb and std_rgb.)
    config.pixel_scale = 255.0
    config.streaming = streaming_config()

    # The architecture: name, block, variant and the options of models.ResNet, with their
    # defaults and meaning in resnet_jax/models (architecture.fields()).
    config.model = models.architecture.config_section()
    # The compute dtype; parameters and BN statistics stay float32. A CPU computes bfloat16
    # only where it pays (resnet_jax.backend.compute_dtype).
    config.dtype = 'float32'
    config.cpu_kernels = 'auto'  # backend.CPU_KERNEL_CHOICES; see backend/cpu/kernel_layers.py
    # False: BatchNorm statistics per device, as the paper's multi-GPU training.
    config.sync_batch_norm = False

    # Fine-tuning (resnet_jax/pretrained/init_from.py). init_from: a model directory
    # (resnet_jax.pretrained.convert) or another run's workdir whose newest checkpoint starts
    # this run ('' : the initialisers); a head of another number of classes is initialised afresh.
    # frozen_stages: parts left untrained: any of 'stem', 'stage1', 'stage2', ..., 'head'.
    # frozen_batch_norm: BatchNorms normalise with their running statistics and keep them.
    config.init_from = ''
    config.frozen_stages = ()
    config.frozen_batch_norm = False

    # Length of the run: total_steps, or num_epochs when total_steps is None.
    config.batch_size = 128  # global, over all devices and hosts.
    config.eval_batch_size = 500
    config.total_steps = config_dict.placeholder(int)
    config.num_epochs = config_dict.placeholder(float)

    # >1 splits each device's share of the batch into this many micro-batches, run one
    # after the other, and averages their gradients: the update of the whole batch, with
    # BatchNorm statistics per micro-batch (as on that many times more devices).
    config.grad_accum_steps = 1

    config.loss = ml_collections.ConfigDict()
    # >0: cross-entropy against (1 - s) * one_hot + s / num_classes (Szegedy et al. 2016);
    # the paper has none. Evaluation losses stay plain cross-entropy.
    config.loss.label_smoothing = 0.0

    config.optim = ml_collections.ConfigDict()
    # 'sgd' (the paper) or 'lars' (You et al. 2017: a per-kernel trust ratio, for batches
    # of thousands; BatchNorm and bias parameters are excluded from the ratio).
    config.optim.name = 'sgd'
    config.optim.momentum = 0.9
    config.optim.nesterov = False
    config.optim.weight_decay = 1e-4
    # 'all' decays every parameter (the paper, torchvision); 'kernels' skips BN and biases.
    config.optim.weight_decay_params = 'all'
    config.optim.trust_coefficient = 0.001  # LARS: eta of the trust ratio.
    config.optim.trust_eps = 0.0  # LARS: added to the ratio's denominator.

    config.schedule = ml_collections.ConfigDict()
    # 'step' (the paper), 'cosine' or 'polynomial' (to end_lr, with `power`).
    config.schedule.name = 'step'
    # The peak rate is base_lr for every base_batch_size images of the global batch,
    # scaled linearly (Goyal et al. 2017): the paper's 0.1 is per 128 images on CIFAR and
    # per 256 on ImageNet. `lr` set: exactly that peak rate, whatever the batch.
    config.schedule.base_lr = 0.1
    config.schedule.base_batch_size = 128
    config.schedule.lr = config_dict.placeholder(float)
    config.schedule.unit = 'steps'  # unit of `boundaries` and `warmup`: 'steps' or 'epochs'.
    config.schedule.boundaries = ()  # step schedule: multiply by decay_factor at each.
    config.schedule.decay_factor = 0.1
    config.schedule.end_lr = 0.0  # polynomial schedule: the rate at the end of the run.
    config.schedule.power = 2.0  # polynomial schedule: the exponent.
    # Length of the warm-up, in `unit`. None: 5 epochs when the rate is scaled up for a
    # batch above base_batch_size (Goyal et al.), none otherwise.
    config.schedule.warmup = config_dict.placeholder(float)
    # None: linear warm-up from 0 to the peak rate. A value: constant warm-up at this rate
    # (the paper's ResNet-110 uses 0.01 for the first 400 iterations).
    config.schedule.warmup_lr = config_dict.placeholder(float)

    # False: a non-finite loss stops the run. True: such steps are skipped (no update).
    config.skip_nonfinite_steps = False

    config.log_every_steps = 100  # a line and a metrics record (averaged over the steps).
    # A console progress line (step, loss, images/s, ETA) after the first step and then at
    # least this often, whatever log_every_steps is; 0: only every log_every_steps.
    config.log_every_seconds = 30.0
    # Train steps dispatched but not yet finished: the loop waits for step N-k+1 before it
    # dispatches step N+1. 2 keeps the device busy while the host dispatches the next step,
    # and bounds SIGTERM -> checkpoint to about two steps plus the save.
    config.steps_in_flight = 2
    config.eval_every_steps = 0  # 0: evaluate only at the end.
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    return config


def streaming_config() -> ml_collections.ConfigDict:
    """Fields of the streaming pipeline; the defaults are the paper's ImageNet recipe."""
    stream = ml_collections.ConfigDict()
    # Host augmentation of the training images: 'scale' (the paper: shorter side resized to
    # a random size in scale_range, random image_size crop, flip), 'inception' (random-
    # resized crop, flip) or 'none' (centre crop, as evaluated).
    stream.augment = 'scale'
    stream.scale_range = (256, 480)  # 'scale': the shorter side's random size (inclusive).
    stream.area_range = (0.08, 1.0)  # 'inception': fraction of the image area kept.
    stream.aspect_range = (3 / 4, 4 / 3)  # 'inception': aspect ratio of the crop.
    # Per-channel normalisation of the 0-255 pixels (ImageNet's training-set statistics).
    stream.mean_rgb = (123.675, 116.28, 103.53)
    stream.std_rgb = (58.395, 57.12, 57.375)
    # AlexNet's PCA colour augmentation, on the device: 0 turns it off (the paper uses it,
    # with 0.1). Eigen-decomposition of ImageNet's RGB covariance, pixels in [0, 1].
    stream.lighting_std = 0.0
    stream.lighting_eigenvalues = (0.2175, 0.0188, 0.0045)
    stream.lighting_eigenvectors = ((-0.5675, 0.7192, 0.4009),
                                    (-0.5808, -0.0045, -0.8140),
                                    (-0.5836, -0.6948, 0.4203))
    # Evaluation. The first mode runs every eval_every_steps; all of them at the end.
    # 'center_crop': shorter side to eval_resize, centre image_size crop. 'ten_crop': the
    # four corners and the centre and their mirror images (the paper's Table 3).
    # 'multi_scale': the whole image, fully convolutional, scores averaged over shorter
    # sides multi_scale_sizes (the paper's Table 4); the longer side is cut to the nearest
    # lower of multi_scale_aspect_ratios so that images batch in a few shapes.
    stream.eval_modes = ('center_crop',)
    stream.eval_resize = 256
    stream.multi_scale_sizes = (224, 256, 384, 480, 640)
    stream.multi_scale_aspect_ratios = (1.0, 1.25, 4 / 3, 1.5, 16 / 9, 2.0)
    # tfds sources only: examples in the shuffle buffer (an image folder is permuted whole).
    stream.shuffle_buffer = 16384
    # Threads of tf.data and of TensorFlow's ops per process (0: one per CPU core); lower
    # it to leave cores to other work on the host.
    stream.threads = 0
    return stream


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `FILE[:ARG]` the way `--config` does: `get_config()` or `get_config(ARG)`."""
    path, _, arg = spec.partition(':')
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f'config file {path!r} does not exist')
    module = pyfiles.import_file(path, again=True)
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    return config


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for a config that cannot run, before any data or compilation."""
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    check(config.pipeline in PIPELINES, f'pipeline={config.pipeline!r}: choose {PIPELINES}')
    if pipeline(config) == 'memory':
        check(config.dataset in arrays.DATASETS,
              f'dataset={config.dataset!r} with pipeline=memory: choose one of {arrays.DATASETS}'
              + (' (or set --config.pipeline=auto)'
                 if streaming_choices.is_streaming_only(config.dataset)
                 else ''))
        check(config.augment in device_preprocessing.AUGMENTATIONS,
              f'augment={config.augment!r} with pipeline=memory: choose one of '
              f'{device_preprocessing.AUGMENTATIONS}')
    else:
        _validate_streaming(config, check)
    try:
        models.architecture.validate(config.model)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check(config.dtype in DTYPES, f'dtype={config.dtype!r}: choose one of {DTYPES}')
    parts = models.model_parts(config.model.name)
    check(set(config.frozen_stages) <= set(parts),
          f'frozen_stages={tuple(config.frozen_stages)}: choose among {parts}')
    check(config.cpu_kernels in backend.CPU_KERNEL_CHOICES,
          f'cpu_kernels={config.cpu_kernels!r}: choose one of {backend.CPU_KERNEL_CHOICES}')
    for field in ('batch_size', 'eval_batch_size', 'log_every_steps', 'keep_checkpoints',
                  'checkpoint_every_steps'):
        check(config[field] > 0, f'{field}={config[field]} must be positive')
    check(config.eval_every_steps >= 0, 'eval_every_steps must be >= 0 (0: only at the end)')
    check(config.log_every_seconds >= 0,
          'log_every_seconds must be >= 0 (0: a line only every log_every_steps)')
    check(config.steps_in_flight >= 1, 'steps_in_flight must be >= 1')
    check(config.grad_accum_steps >= 1, 'grad_accum_steps must be >= 1 (1: no accumulation)')
    check(0 <= config.loss.label_smoothing < 1, 'loss.label_smoothing must be in [0, 1)')
    check(config.pad_pixels >= 0, 'pad_pixels must be >= 0')
    check(config.pixel_scale > 0, 'pixel_scale must be positive')
    check(not (config.model.bn_group_size and config.sync_batch_norm),
          'model.bn_group_size and sync_batch_norm exclude each other: groups are per device')
    check(config.total_steps is not None or config.num_epochs is not None,
          'set total_steps or num_epochs (total_steps wins when both are set)')
    check(config.total_steps is None or config.total_steps > 0, 'total_steps must be positive')
    check(config.num_epochs is None or config.num_epochs > 0, 'num_epochs must be positive')
    if config.dataset == 'synthetic':
        check(config.num_classes is not None and config.image_size is not None,
              'dataset=synthetic needs --config.num_classes and --config.image_size')
    check(config.num_classes is None or config.num_classes > 1, 'num_classes must be > 1')
    check(config.image_size is None or config.image_size > 0, 'image_size must be positive')

    schedule = config.schedule
    check(schedule.name in optim.SCHEDULES,
          f'schedule.name={schedule.name!r}: choose {optim.SCHEDULES}')
    check(schedule.unit in optim.DURATION_UNITS,
          f'schedule.unit={schedule.unit!r}: choose one of {optim.DURATION_UNITS}')
    check(schedule.base_lr > 0, f'schedule.base_lr={schedule.base_lr} must be positive')
    check(schedule.base_batch_size > 0, 'schedule.base_batch_size must be positive')
    check(schedule.lr is None or schedule.lr > 0,
          'schedule.lr must be positive (or None: base_lr scaled with the batch)')
    check(schedule.warmup is None or schedule.warmup >= 0, 'schedule.warmup must be >= 0')
    check(schedule.end_lr >= 0, 'schedule.end_lr must be >= 0')
    check(schedule.power > 0, 'schedule.power must be positive')
    check(schedule.warmup_lr is None or schedule.warmup_lr > 0,
          'schedule.warmup_lr must be positive (or None for a linear warm-up)')
    boundaries = list(schedule.boundaries)
    check(boundaries == sorted(boundaries) and all(b > 0 for b in boundaries),
          f'schedule.boundaries={tuple(boundaries)} must be positive and increasing')
    optimizer = config.optim
    check(optimizer.name in optim.OPTIMIZERS,
          f'optim.name={optimizer.name!r}: choose one of {optim.OPTIMIZERS}')
    check(optimizer.trust_coefficient > 0 and optimizer.trust_eps >= 0,
          'optim.trust_coefficient must be positive and optim.trust_eps >= 0')
    check(0 <= optimizer.momentum < 1, 'optim.momentum must be in [0, 1)')
    check(optimizer.weight_decay >= 0, 'optim.weight_decay must be >= 0')
    check(optimizer.weight_decay_params in optim.WEIGHT_DECAY_PARAMS,
          f'optim.weight_decay_params: choose one of {optim.WEIGHT_DECAY_PARAMS}')


def pipeline(config: ml_collections.ConfigDict) -> str:
    """'memory' or 'streaming': the input path that the config's pipeline and dataset pick."""
    if config.pipeline != 'auto':
        return config.pipeline
    return 'streaming' if streaming_choices.is_streaming_only(config.dataset) else 'memory'


def _validate_streaming(config: ml_collections.ConfigDict, check) -> None:
    stream = config.streaming
    check(config.dataset == 'image_folder' or streaming_choices.is_streaming_only(config.dataset)
          and config.dataset != 'tfds:',
          f'dataset={config.dataset!r} with pipeline=streaming: choose one of '
          f'{streaming_choices.STREAMING_DATASETS}')
    check(stream.augment in streaming_choices.HOST_AUGMENTATIONS,
          f'streaming.augment={stream.augment!r}: choose one of '
          f'{streaming_choices.HOST_AUGMENTATIONS}')
    check(config.image_size is not None,
          'pipeline=streaming needs --config.image_size (the side of the training crops)')
    check(config.validation_examples == 0,
          'validation_examples is for in-memory data sets; a streamed data set is evaluated '
          'on its validation (or test) split')
    low, high = stream.scale_range
    check(config.image_size <= low <= high,
          f'streaming.scale_range={tuple(stream.scale_range)} must be increasing and start '
          f'at image_size={config.image_size} or above (the crop must fit)')
    check(0 < stream.area_range[0] <= stream.area_range[1] <= 1,
          'streaming.area_range must satisfy 0 < low <= high <= 1')
    check(0 < stream.aspect_range[0] <= stream.aspect_range[1],
          'streaming.aspect_range must satisfy 0 < low <= high')
    check(len(stream.mean_rgb) == 3 and len(stream.std_rgb) == 3
          and all(s > 0 for s in stream.std_rgb),
          'streaming.mean_rgb and std_rgb need three values each, std positive')
    check(stream.lighting_std >= 0, 'streaming.lighting_std must be >= 0')
    modes = tuple(stream.eval_modes)
    check(len(modes) > 0 and all(m in streaming_choices.EVAL_MODES for m in modes),
          f'streaming.eval_modes={modes}: choose one or more of '
          f'{streaming_choices.EVAL_MODES}')
    check(stream.eval_resize >= config.image_size,
          f'streaming.eval_resize={stream.eval_resize} must be >= image_size')
    check(len(stream.multi_scale_sizes) > 0 and min(stream.multi_scale_sizes) > 0,
          'streaming.multi_scale_sizes needs positive sizes')
    check(len(stream.multi_scale_aspect_ratios) > 0
          and min(stream.multi_scale_aspect_ratios) >= 1,
          'streaming.multi_scale_aspect_ratios must be >= 1 (longer side over shorter)')
    check(stream.shuffle_buffer > 0, 'streaming.shuffle_buffer must be positive')
    check(stream.threads >= 0, 'streaming.threads must be >= 0 (0: one per core)')
