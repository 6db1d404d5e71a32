"""The ResNets of resnet_jax written in PyTorch, and their training step: a speed reference.

    python benchmarks/torch_reference.py --model cifar_resnet20 --batch-size 128
    python benchmarks/torch_reference.py --model resnet50 --variant v1.5 --batch-size 32 --compile

The architectures come from the same depth table as the JAX models
(`resnet_jax.models.model_spec`): ImageNet ResNets with shortcut B (the v1.5 ResNet-50 is
torchvision's `resnet50`, 25,557,032 parameters), the CIFAR nets with option A and their
plain twins. The initialisation follows the same distributions as the JAX models: He
(fan-out, normal) convolutions, BatchNorm weight 1 and bias 0, and the head as Flax's
`nn.Dense` (LeCun truncated normal kernel, zero bias). The step does what the JAX step
does: gather the batch from uint8 images in memory, the paper's CIFAR augmentation where
the config asks for it, (x - per-pixel mean) / pixel_scale, forward in channels-last
(NHWC memory), softmax cross-entropy, backward, SGD with momentum 0.9 and weight decay
1e-4 on every parameter (or the optimiser given). bfloat16 runs under `torch.autocast`
(parameters float32, as in JAX). benchmarks/torch_cifar10.py trains with it.

Torch is an optional dependency (`pip install 'resnet_jax[bench]'`): nothing in the package
or its tests imports this file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from resnet_jax import models


class BatchNorm2d(nn.BatchNorm2d):
    """torch's BatchNorm2d; with `group_size` ("ghost" BatchNorm, ours `model.bn_group_size`)
    training normalises each group of that many consecutive examples by its own
    statistics, and the running averages take the mean of the groups' statistics."""

    group_size = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.training or not self.group_size or n <= self.group_size:
            return super().forward(x)
        groups = x.reshape(n // self.group_size, self.group_size, *x.shape[1:])
        axes = (1, 3, 4)  # per group and channel: over its examples, rows and columns
        mean = groups.mean(axes, keepdim=True)
        var = groups.var(axes, unbiased=False, keepdim=True)
        y = ((groups - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        with torch.no_grad():  # torch's convention: the unbiased variance in the average
            count = self.group_size * x.shape[2] * x.shape[3]
            self.running_mean.lerp_(mean.mean(0).flatten(), self.momentum)
            self.running_var.lerp_(var.mean(0).flatten() * count / (count - 1), self.momentum)
        return y * self.weight[:, None, None] + self.bias[:, None, None]


def _conv(cin: int, cout: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)


class Shortcut(nn.Module):
    """Identity, option A (subsample and zero-pad channels), a 1x1 projection + BN (B, C),
    or nothing (kind 'none', a plain net: forward returns None)."""

    def __init__(self, cin: int, cout: int, stride: int, kind: str):
        super().__init__()
        self.cout, self.stride = cout, stride
        changes = stride != 1 or cin != cout
        self.kind = 'identity' if not changes and kind not in ('C', 'none') else kind
        if self.kind in ('B', 'C'):
            self.proj = nn.Sequential(_conv(cin, cout, 1, stride), BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.kind == 'none':
            return None
        if self.kind == 'identity':
            return x
        if self.kind == 'A':
            x = x[:, :, ::self.stride, ::self.stride]
            return F.pad(x, (0, 0, 0, 0, 0, self.cout - x.shape[1]))
        return self.proj(x)


def _merge(branch: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """relu(branch + skip), or relu(branch) in a plain net."""
    return F.relu(branch if skip is None else branch + skip)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, shortcut: str, variant: str):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, width, 3, stride), BatchNorm2d(width)
        self.conv2, self.bn2 = _conv(width, width, 3, 1), BatchNorm2d(width)
        self.last_bn = self.bn2
        self.shortcut = Shortcut(cin, width, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return _merge(self.bn2(self.conv2(y)), self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, shortcut: str, variant: str):
        super().__init__()
        s1, s2 = (stride, 1) if variant == 'v1' else (1, stride)
        self.conv1, self.bn1 = _conv(cin, width, 1, s1), BatchNorm2d(width)
        self.conv2, self.bn2 = _conv(width, width, 3, s2), BatchNorm2d(width)
        self.conv3, self.bn3 = _conv(width, 4 * width, 1, 1), BatchNorm2d(4 * width)
        self.last_bn = self.bn3
        self.shortcut = Shortcut(cin, 4 * width, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return _merge(self.bn3(self.conv3(y)), self.shortcut(x))


class ResNet(nn.Module):
    """Stem, stages, global average pool, linear head: the JAX `ResNet` in torch.

    `bn_momentum` is Flax's (the weight of the old running average: 0.9 is torch's
    momentum 0.1); `zero_init_residual` zeroes the last BN weight of each block;
    `bn_group_size` normalises training batches in groups of that many examples.
    """

    def __init__(self, name: str, num_classes: int, variant: str = 'v1',
                 shortcut: str | None = None, *, bn_momentum: float = 0.9,
                 bn_epsilon: float = 1e-5, zero_init_residual: bool = False,
                 bn_group_size: int = 0):
        super().__init__()
        spec = models.model_spec(name)
        if spec.plain:
            shortcut = 'none'
        shortcut = shortcut or ('A' if spec.stem == 'cifar' else 'B')
        block = {'basic': BasicBlock, 'bottleneck': Bottleneck}[spec.block]
        width = spec.stage_widths[0]
        if spec.stem == 'imagenet':
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False),
                                      BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(_conv(3, width, 3, 1), BatchNorm2d(width),
                                      nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, (size, w) in enumerate(zip(spec.stage_sizes, spec.stage_widths, strict=True)):
            for j in range(size):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(block(cin, w, stride, shortcut, variant))
                cin = w * block.expansion
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # models.he_normal: N(0, 2 / fan_out), untruncated
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):  # weight 1, bias 0 (torch's default too)
                m.momentum, m.eps, m.group_size = 1.0 - bn_momentum, bn_epsilon, bn_group_size
            elif isinstance(m, (BasicBlock, Bottleneck)) and zero_init_residual:
                nn.init.zeros_(m.last_bn.weight)
        lecun_normal_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Flax's `lecun_normal` (nn.Dense's default kernel init) on a torch [out, in] weight:
    a normal truncated at 2 standard deviations, rescaled to variance 1 / fan_in."""
    # 0.8796... is the std of a standard normal truncated to [-2, 2] (jax.nn.initializers).
    std = (1.0 / weight.shape[1]) ** 0.5 / 0.87962566103423978
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def augment(images: torch.Tensor, pad: int,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Random `pad`-pixel crop and horizontal flip of uint8 NHWC images (the paper's);
    pad 0 flips only."""
    b, h, w, _ = images.shape
    padded = F.pad(images, (0, 0, pad, pad, pad, pad))
    device = images.device
    offsets = torch.randint(0, 2 * pad + 1, (2, b), device=device, generator=generator)
    rows = (offsets[0, :, None] + torch.arange(h, device=device))[:, :, None]
    cols = (offsets[1, :, None] + torch.arange(w, device=device))[:, None, :]
    cropped = padded[torch.arange(b, device=device)[:, None, None], rows, cols]
    flip = (torch.rand(b, device=device, generator=generator) < 0.5)[:, None, None, None]
    return torch.where(flip, cropped.flip(2), cropped)


def normalize(images: torch.Tensor, pixel_mean: torch.Tensor | None,
              pixel_scale: float) -> torch.Tensor:
    """uint8 NHWC images -> (x - mean) / pixel_scale as NCHW in channels-last memory."""
    x = images.float()
    if pixel_mean is not None:
        x = x - pixel_mean
    # NHWC memory seen as NCHW: exactly torch's channels-last layout.
    return (x / pixel_scale).permute(0, 3, 1, 2)


def make_train_step(
    model: nn.Module, *, dtype: str = 'float32', augment_pad: int | None = None,
    pixel_mean: torch.Tensor | None = None, pixel_scale: float = 255.0, compile: bool = False,
    optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None,
    with_accuracy: bool = False,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """`step(images_uint8_nhwc, labels, indices) -> loss`: one SGD step, as the JAX step.

    `augment_pad` None: no augmentation; 0: flips only. `optimizer` defaults to SGD with lr
    0.1, momentum 0.9 and weight decay 1e-4 on every parameter. With `with_accuracy` the
    step returns (loss, training accuracy of the batch).
    """
    model = model.to(memory_format=torch.channels_last).train()
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                       weight_decay=1e-4)
    forward = torch.compile(model) if compile else model
    autocast_dtype = torch.bfloat16 if dtype == 'bfloat16' else None

    def step(images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        x = images[indices]
        if augment_pad is not None:
            x = augment(x, augment_pad, generator)
        x = normalize(x, pixel_mean, pixel_scale)
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            logits = forward(x)
        batch_labels = labels[indices]
        loss = F.cross_entropy(logits.float(), batch_labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if with_accuracy:
            return loss.detach(), (logits.detach().argmax(-1) == batch_labels).float().mean()
        return loss.detach()

    return step


def make_eval_step(model: nn.Module, *, dtype: str = 'float32', compile: bool = False,
                   pixel_mean: torch.Tensor | None = None, pixel_scale: float = 255.0):
    """`evaluate(images_uint8_nhwc, indices) -> logits`, BN in inference mode, the input
    normalised as in training."""
    model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile else model
    autocast_dtype = torch.bfloat16 if dtype == 'bfloat16' else torch.float32

    @torch.no_grad()
    def evaluate(images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        model.eval()
        x = normalize(images[indices], pixel_mean, pixel_scale)
        with torch.autocast(x.device.type, dtype=autocast_dtype,
                            enabled=dtype == 'bfloat16'):
            logits = forward(x)
        model.train()
        return logits

    return evaluate


def synthetic_data(batch_size: int, image_size: int, num_classes: int, seed: int = 0):
    """uint8 NHWC images and int64 labels for 4 batches, as the JAX benchmark makes them."""
    g = torch.Generator().manual_seed(seed)
    n = 4 * batch_size
    images = torch.randint(0, 256, (n, image_size, image_size, 3), generator=g,
                           dtype=torch.uint8)
    return images, torch.randint(0, num_classes, (n,), generator=g)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='cifar_resnet20')
    parser.add_argument('--variant', default='v1', choices=('v1', 'v1.5'))
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--compile', action='store_true')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    def sync():  # CUDA runs asynchronously: wait for it before reading the clock
        if device.type == 'cuda':
            torch.cuda.synchronize()

    cifar = models.model_spec(args.model).stem == 'cifar'
    num_classes, image_size = (10, 32) if cifar else (1000, 224)
    model = ResNet(args.model, num_classes, args.variant).to(device)
    images, labels = (t.to(device) for t in synthetic_data(
        args.batch_size, image_size, num_classes))
    step = make_train_step(model, dtype=args.dtype, augment_pad=4 if cifar else None,
                           pixel_mean=images.float().mean(0), compile=args.compile)
    batches = [torch.arange(i * args.batch_size, (i + 1) * args.batch_size, device=device)
               for i in range(4)]
    start = time.perf_counter()
    step(images, labels, batches[0])
    sync()
    print(f'first step (compile) {time.perf_counter() - start:.1f} s')
    times = []
    for r in range(args.repeats):
        start = time.perf_counter()
        for i in range(args.steps):
            step(images, labels, batches[(r * args.steps + i) % 4])
        sync()
        times.append((time.perf_counter() - start) / args.steps)
    median = statistics.median(times)
    print(f'{args.model} {args.variant} batch {args.batch_size} {args.dtype}'
          f'{" compiled" if args.compile else ""}: median {1e3 * median:.1f} ms/step '
          f'(min {1e3 * min(times):.1f}, max {1e3 * max(times):.1f}), '
          f'{args.batch_size / median:.1f} images/s on {device.type}, '
          f'{torch.get_num_threads()} threads')
    return 0


if __name__ == '__main__':
    sys.exit(main())
