"""The kernels' tests again, on a build for an AVX2 CPU without AVX-512 (`-march=x86-64-v3`):
its register tiles are not the AVX-512 ones, and whichever machine runs the suite, both
must compute what lax computes."""

import os
import pathlib
import subprocess
import sys

import pytest

TESTS = pathlib.Path(__file__).resolve().parent
KERNEL_TESTS = ('test_conv_kernels.py::test_kernels_compute_what_lax_computes',
                'test_conv_kernels.py::test_pointwise_weight_gradient_matches_lax',
                'test_conv_kernels.py::test_the_library_has_the_tiles_this_cpu_was_expected_to_get',
                'test_batch_norm_kernels.py', 'test_pooling_kernels.py')


def _cpu_flags() -> set[str]:
    try:
        return set(pathlib.Path('/proc/cpuinfo').read_text().split())
    except OSError:
        return set()


@pytest.mark.skipif(not {'avx2', 'fma'} <= _cpu_flags(), reason='this CPU cannot run AVX2 code')
@pytest.mark.skipif('avx512f' not in _cpu_flags(),
                    reason='no AVX-512 here: the native build is the AVX2 one, tested already')
@pytest.mark.slow
def test_kernel_tests_pass_on_an_avx2_build(tmp_path):
    env = {**os.environ, 'RESNET_JAX_KERNEL_MARCH': 'x86-64-v3',
           'RESNET_JAX_KERNEL_CACHE': str(tmp_path / 'kernels')}
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
         *(str(TESTS / t) for t in KERNEL_TESTS)],
        capture_output=True, text=True, timeout=900, env=env, cwd=TESTS.parent)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert ' passed' in result.stdout and 'skipped' not in result.stdout
