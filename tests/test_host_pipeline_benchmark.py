"""The host pipeline benchmark on tiny sizes: every pipeline runs and reports positive rates.

Speed itself is not tested here; benchmarks/host_pipeline.py prints it.
"""

import json
import pathlib
import sys

import numpy as np
import pytest

pytest.importorskip('tensorflow')

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'benchmarks'))

import host_pipeline  # noqa: E402


@pytest.mark.slow
def test_every_mode_reports_positive_rates(tmp_path, capsys):
    out = tmp_path / 'host.json'
    results = host_pipeline.main([
        '--num-images', '8', '--sizes', '64x48:3,48x64', '--image-size', '32',
        '--batch-size', '4', '--threads', '1,2', '--repeats', '1', '--warmup', '1',
        '--device-images-per-sec', '1000', '--json', str(out)])
    printed = capsys.readouterr().out
    rows = results['rows']
    assert {(row['mode'], row['threads']) for row in rows} == {
        (mode, threads) for mode in host_pipeline.MODES for threads in (1, 2)}
    for row in rows:
        assert row['images'] == 8
        assert row['images_per_sec'] > 0 and row['images_per_sec_per_thread'] > 0
        assert row['images_per_cpu_sec'] > 0 and row['cores_needed'] > 0
        assert row['name'] in printed
    assert 'cores for 1,000 img/s' in printed
    assert json.loads(out.read_text())['rows'] == json.loads(json.dumps(rows))


def test_generated_jpegs_look_like_photos(tmp_path):
    """Neither flat nor noise: JPEG sizes in the range of photographs at quality 90."""
    host_pipeline.write_image_folder(str(tmp_path), 4, [(200, 150, 1)])
    stats = host_pipeline.folder_stats(str(tmp_path), 4)
    assert (stats.images, stats.mean_width, stats.mean_height) == (4, 200, 150)
    assert 1.5 < stats.bits_per_pixel < 6
    image = host_pipeline.natural_image(np.random.default_rng(0), 120, 90)
    assert image.shape == (90, 120, 3) and image.dtype == np.uint8
    assert 20 < image.std() < 90
