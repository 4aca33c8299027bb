"""Tests for hfcn_bench.bench.figures: each helper writes a valid PNG atomically."""

import os

import matplotlib
import numpy as np
import pytest

from hfcn_bench.bench import figures

Image = pytest.importorskip("PIL.Image", reason="Pillow reads the PNGs back")


def _check_png(path, returned):
    assert returned == path
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > 100 and im.size[1] > 100
        im.load()
    # No temporary file is left beside the image.
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_roc_curves(tmp_path):
    path = tmp_path / "roc.png"
    curves = {
        "HFCN (BFC)": ([0, 0, 0.2, 1], [0, 0.6, 0.9, 1], 0.91),
        "global only": (np.array([0, 0.5, 1]), np.array([0, 0.7, 1]), None),
    }
    _check_png(path, figures.plot_roc_curves(curves, path))


def test_speed_bars(tmp_path):
    path = tmp_path / "speed.png"
    rows = [
        {"name": "fused crop_resize", "median_s": 0.0008, "iqr_s": 0.0001},
        {"name": "naive slice+interpolate", "median_s": 0.0083, "iqr_s": 0.0004},
        {"name": "grid_sample", "median_s": 0.0209, "iqr_s": 0.001, "q1_s": 0.0205, "q3_s": 0.0215},
    ]
    _check_png(path, figures.plot_speed_bars(rows, path, title="forward, 1 thread"))


def test_alpha_sweep_with_ci(tmp_path):
    path = tmp_path / "alpha.png"
    alphas = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    # The paper's Table 3 (BFC branch alone), as fractions.
    values = {
        "accuracy": [0.9227, 0.9503, 0.9448, 0.9337, 0.9337, 0.8950],
        "F1": [0.9054, 0.9388, 0.9324, 0.9189, 0.9189, 0.8707],
    }
    ci = {"F1": ([v - 0.03 for v in values["F1"]], [v + 0.03 for v in values["F1"]])}
    backend = matplotlib.get_backend()
    _check_png(path, figures.plot_alpha_sweep(alphas, values, path, ci=ci))
    # Drawing on a bare Figure must not switch the backend of the process that imported us.
    assert matplotlib.get_backend() == backend


def test_overwrites_existing_file_and_creates_directories(tmp_path):
    path = tmp_path / "new" / "dir" / "alpha.png"
    figures.plot_alpha_sweep([0.5, 1.0], {"F1": [0.8, 0.9]}, path)
    first = path.read_bytes()
    figures.plot_alpha_sweep([0.5, 1.0], {"F1": [0.1, 0.2], "AUC": [0.5, 0.6]}, str(path))
    assert path.read_bytes() != first
    _check_png(path, path)


def test_bad_input_leaves_existing_file_untouched(tmp_path):
    path = tmp_path / "speed.png"
    rows = [{"name": "a", "median_s": 1e-3, "iqr_s": 1e-4}]
    figures.plot_speed_bars(rows, path)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        figures.plot_speed_bars([{"name": "a", "median_s": 1e-3}], path)
    with pytest.raises(ValueError):
        figures.plot_speed_bars([{"name": "a", "median_s": -1.0, "iqr_s": 0.0}], path)
    with pytest.raises(ValueError):
        figures.plot_roc_curves({"m": ([0, 1], [0, 0.5, 1], 0.5)}, path)
    with pytest.raises(ValueError):
        figures.plot_roc_curves({}, path)
    with pytest.raises(ValueError):
        figures.plot_alpha_sweep([0.5, 0.6], {"F1": [0.9]}, path)
    with pytest.raises(ValueError):
        figures.plot_alpha_sweep([0.5], {"F1": [0.9]}, path, ci={"AUC": ([0.1], [0.2])})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["speed.png"]


def test_failed_write_removes_temp_file(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(figures.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        figures.plot_alpha_sweep([0.5], {"F1": [0.9]}, tmp_path / "a.png")
    assert os.listdir(tmp_path) == []


def test_forest_plot(tmp_path):
    rows = [
        {"name": "shape_rf", "auc": 0.66, "auc_ci": [0.55, 0.76], "f1": 0.8, "f1_ci": [0.7, 0.85]},
        {"name": "HFCN paper+bfc", "auc": 0.57, "auc_ci": None, "f1": None},
    ]
    path = tmp_path / "f" / "rank.png"
    _check_png(path, figures.plot_forest(rows, path, baseline={"auc": 0.5, "f1": 0.91}))
    with pytest.raises(ValueError, match="nothing to plot"):
        figures.plot_forest([], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def _roofline_rows():
    rows = []
    for shape in ("16x128x14x14 a0.6 ->14", "16x128x28x28 a0.6 ->28"):
        for threads in (1, 2):
            for direction in ("forward", "backward", "forward+backward"):
                for method, gbps in (("fused", 20.0 * threads), ("naive", 1.5), ("floor", 30.0 * threads)):
                    rows.append(
                        {"shape": shape, "method": method, "direction": direction, "threads": threads, "gbps": gbps}
                    )
    # image multi-crop has no GB/s: left out, not an error
    rows.append({"shape": "16x128x14x14 a0.6 ->14", "method": "image-multicrop", "direction": "forward", "threads": 1})
    return rows


def test_roofline_against_copy_bandwidth_and_peak(tmp_path):
    copy = [{"threads": 1, "gbps": 25.0}, {"threads": 2, "gbps": 40.0}]
    path = tmp_path / "roofline.png"
    _check_png(path, figures.plot_roofline(_roofline_rows(), copy, path))
    gpu = tmp_path / "gpu" / "roofline.png"
    written = figures.plot_roofline(_roofline_rows(), copy, gpu, peak_gbps=3350.0, peak_how="(device properties)")
    _check_png(gpu, written)


def test_roofline_needs_bandwidth_rows(tmp_path):
    with pytest.raises(ValueError, match="no row has a GB/s figure"):
        figures.plot_roofline(
            [{"shape": "s", "method": "fused", "direction": "forward", "threads": 1}], [], tmp_path / "r.png"
        )
    assert not (tmp_path / "r.png").exists()
