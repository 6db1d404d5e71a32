"""`python -m resnet_jax.pretrained.export`: the StableHLO file, reloaded with jax.export alone,
gives the live model's logits at several batch sizes (the batch dimension is symbolic)."""

import jax
import numpy as np
import pytest
from model_dirs import assert_one_line_error, cifar_model_dir, run_module
from rounding import assert_equal_up_to_rounding


@pytest.mark.slow
def test_exported_file_reloads_and_matches_the_live_model(tmp_path):
    model, variables = cifar_model_dir(tmp_path / 'model')
    out = tmp_path / 'model.jax_export'
    result = run_module('resnet_jax.pretrained.export', '--checkpoint', str(tmp_path / 'model'),
                        '--out', str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'input float32[batch,32,32,3]' in result.stderr
    exported = jax.export.deserialize(bytearray(out.read_bytes()))
    rng = np.random.default_rng(1)
    for batch in (1, 3, 8):
        images = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
        live = np.asarray(model.apply(variables, images, train=False))
        got = np.asarray(exported.call(images))
        assert got.shape == (batch, 10) and got.dtype == np.float32
        # Compiled for a symbolic batch, the same layers may sum in another order: the
        # longest dot product is a 3x3 window of 64 channels, one sum per layer.
        assert_equal_up_to_rounding(got, live, terms=3 * 3 * 64, steps=8)


def test_export_of_a_missing_directory_is_one_line(tmp_path):
    result = run_module('resnet_jax.pretrained.export', '--checkpoint', str(tmp_path / 'nope'),
                        '--out', str(tmp_path / 'x'))
    assert_one_line_error(result, 'is not a model directory or workdir (no such directory)')
