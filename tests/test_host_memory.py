"""The malloc settings for CPU training (resnet_jax.backend.cpu.host_memory): applied only to
CPU-only runs, and they stop XLA's per-step buffers from being faulted in afresh at every step."""

import os
import subprocess
import sys

import pytest

FAULTS_PER_CALL = '''
import resource, sys
from resnet_jax.backend.cpu import host_memory
if sys.argv[1] == 'keep':
    assert host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
# A temporary of 48 MB (beyond glibc's largest mmap threshold, 32 MB) that XLA allocates
# and frees at every call; cheap arithmetic, so that the calls cost little but the faults.
step = jax.jit(lambda x: jnp.sum(x * x[::-1] + x))
x = jnp.ones(12 * 1024 * 1024)
faults = []
for _ in range(60):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# After the heap's first growths, while fragments of it settle (a few calls, at times a
# few dozen), the same memory serves every call.
print(sum(faults[20:]))
'''


def _python(code: str, *args: str, **env: str) -> str:
    result = subprocess.run([sys.executable, '-c', code, *args], capture_output=True,
                            text=True, timeout=300, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_kept_memory_is_not_faulted_in_again_at_every_step():
    default = float(_python(FAULTS_PER_CALL, 'default'))
    kept = float(_python(FAULTS_PER_CALL, 'keep'))
    assert default > 40 * 10000  # 48 MB of fresh 4 KiB pages (12288) at each of 40 calls
    assert kept < default / 5, (kept, default)


def test_applied_only_when_jax_runs_on_the_cpu_alone():
    code = 'from resnet_jax.backend.cpu import host_memory; print(host_memory.cpu_only_run())'
    assert _python(code, JAX_PLATFORMS='cpu') == 'True'
    assert _python(code, JAX_PLATFORMS='cuda,cpu') == 'False'
    assert _python(code, JAX_PLATFORMS='tpu') == 'False'
    disabled = ('from resnet_jax.backend.cpu import host_memory; '
                'print(host_memory.configure_for_cpu_training(enabled=False))')
    assert _python(disabled, JAX_PLATFORMS='cpu') == 'False'
