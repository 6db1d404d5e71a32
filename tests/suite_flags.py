"""The XLA flags the suite runs under, written once: conftest.py sets them for the test
processes and the subprocesses that inherit their environment; tests that start processes
with XLA_FLAGS of their own take them from here.

- 2 simulated CPU devices: data-parallel code paths run in every test.
- Fast compiles: the suite compiles hundreds of small programs and runs each a few times,
  so compiling them faster matters more than running them faster. LLVM at -O0
  (`--xla_backend_optimization_level=0`), and XLA:CPU's older fusion code generator
  (`--xla_cpu_use_fusion_emitters=false`) where this jaxlib still has it (an unknown flag
  aborts XLA, so the first test process asks a child process once). docs/performance.md
  has the measurements, and where -O0 costs compute.
  The README's main job, which trains a real model as a user does, runs without them:
  `user_environment()`.
"""

import os
import subprocess
import sys

DEVICES_FLAG = '--xla_force_host_platform_device_count'
OPTIMIZATION_FLAG = '--xla_backend_optimization_level=0'
FUSION_EMITTERS_FLAG = '--xla_cpu_use_fusion_emitters=false'
# What the first process found, inherited by pytest-xdist's workers and the subprocesses.
_DECIDED = 'RESNET_JAX_TEST_FAST_COMPILE_FLAGS'


def fast_compile_flags() -> tuple[str, ...]:
    """The suite's compile-time flags that this jaxlib accepts."""
    decided = os.environ.get(_DECIDED)
    if decided is None:
        accepted = subprocess.run(
            [sys.executable, '-c', 'import jax; jax.devices()'], capture_output=True,
            env=dict(os.environ, XLA_FLAGS=FUSION_EMITTERS_FLAG, JAX_PLATFORMS='cpu'),
        ).returncode == 0
        decided = f'{OPTIMIZATION_FLAG} {FUSION_EMITTERS_FLAG}' if accepted else OPTIMIZATION_FLAG
        os.environ[_DECIDED] = decided
    return tuple(decided.split())


def xla_flags(devices: int = 2) -> str:
    """XLA_FLAGS of a test process with `devices` simulated CPU devices."""
    return ' '.join((f'{DEVICES_FLAG}={devices}', *fast_compile_flags()))


def user_environment() -> dict[str, str]:
    """This environment without the suite's XLA flags: XLA's defaults and one CPU device,
    as on a user's machine."""
    flags = os.environ.get('XLA_FLAGS', '').split()
    kept = [f for f in flags if not f.startswith(DEVICES_FLAG)
            and f not in (OPTIMIZATION_FLAG, FUSION_EMITTERS_FLAG)]
    return dict(os.environ, XLA_FLAGS=' '.join(kept))
