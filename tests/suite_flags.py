"""The XLA flags the suite runs under, written once: conftest.py sets them for the test
processes and the subprocesses that inherit their environment; tests that start processes
with XLA_FLAGS of their own take them from here.

- 2 simulated CPU devices: data-parallel code paths run in every test.
- LLVM at -O0 (`--xla_backend_optimization_level=0`): the suite compiles hundreds of small
  programs and runs each a few times, so compiling them faster matters more than running
  them faster (docs/performance.md has the measurements, and where -O0 costs compute).
  The tests that run large models as a user does (the README's main job, the GPU
  benchmark script, the ResNet-50 steps) run without it: `user_environment()`.
"""

import os

DEVICES_FLAG = '--xla_force_host_platform_device_count'
FAST_COMPILE_FLAG = '--xla_backend_optimization_level=0'


def xla_flags(devices: int = 2) -> str:
    """XLA_FLAGS of a test process with `devices` simulated CPU devices."""
    return f'{DEVICES_FLAG}={devices} {FAST_COMPILE_FLAG}'


def user_environment(devices: int | None = None) -> dict[str, str]:
    """This environment without the suite's XLA flags: XLA's default optimisation and one
    CPU device, as on a user's machine, or `devices` simulated ones."""
    flags = os.environ.get('XLA_FLAGS', '').split()
    kept = [f for f in flags if not f.startswith(DEVICES_FLAG) and f != FAST_COMPILE_FLAG]
    if devices is not None:
        kept.append(f'{DEVICES_FLAG}={devices}')
    return dict(os.environ, XLA_FLAGS=' '.join(kept))
