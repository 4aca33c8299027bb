"""The model-agnostic protocol: thresholds on training-side predictions, calibration, k-fold
pooling, the fold ensemble, and the versioned run folder with its integrity record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hfcn_bench.errors import HfcnError
from hfcn_bench.protocol import (
    Predictions,
    calibration,
    ensemble,
    read_fitted,
    read_run,
    remove_stray_temps,
    sha256_file,
    threshold_from_predictions,
    verify_files,
    write_fitted,
)
from hfcn_bench.protocol.runfolder import check_reusable


def _pred(prob, labels, cases=None):
    n = len(prob)
    return Predictions(
        np.asarray(prob, float), np.asarray(labels), np.asarray(cases or [str(i) for i in range(n)], dtype=object), []
    )


def test_threshold_falls_back_on_one_class():
    thr, src = threshold_from_predictions(_pred([0.2, 0.9, 0.4, 0.8], [0, 1, 0, 1]), "youden")
    assert 0.4 < thr < 0.8 and src == "validation"
    thr, src = threshold_from_predictions(_pred([0.2, 0.3], [1, 1]), "youden", source="training")
    assert thr == 0.5 and src == "training (one class only: fixed 0.5)"
    # per case: the threshold is chosen on case means
    thr, _ = threshold_from_predictions(
        _pred([0.1, 0.3, 0.9, 0.7], [0, 0, 1, 1], ["a", "a", "b", "b"]), "youden", "mean"
    )
    assert 0.2 < thr < 0.8


def test_calibration_brier_and_bins():
    cal = calibration([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.4])
    assert cal["brier"] == pytest.approx((0.01 + 0.01 + 0.04 + 0.16) / 4)
    assert sum(b["n"] for b in cal["bins"]) == 4 and len(cal["bins"]) == 10
    filled = [b for b in cal["bins"] if b["n"]]
    assert filled[0]["low"] == 0.1 and filled[0]["observed"] == 0.0
    assert calibration([0, 1], [-0.3, 0.2]) is None  # margins are not probabilities


def test_ensemble_is_the_mean_probability_at_the_mean_threshold():
    a = Predictions(np.array([0.2, 0.8]), np.array([0, 1]), np.array(["x", "y"], dtype=object), [])
    b = Predictions(np.array([0.4, 0.6]), np.array([0, 1]), np.array(["x", "y"], dtype=object), [])
    p, t = ensemble([a, b], [0.5, 0.3])
    assert np.allclose(p.prob, [0.3, 0.7]) and t == pytest.approx(0.4)
    # the same decisions as the mean margin: mean(p_i) >= mean(t_i)  <=>  mean(p_i - t_i) >= 0
    margins = np.mean([a.prob - 0.5, b.prob - 0.3], axis=0)
    assert ((p.prob >= t) == (margins >= 0)).all()


def _run_dir(tmp_path, version=2):
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps(
            {
                "format": "hfcn-bench/run",
                "version": version,
                "system": "hfcn",
                "config": {},
                "split": {},
                "protocol": {},
            }
        )
    )
    return d


def test_run_folder_versions_and_reuse(tmp_path):
    d = _run_dir(tmp_path, version=1)
    with pytest.raises(HfcnError, match="run format version 1; this hfcn-bench reads version 2") as e:
        read_run(d)
    assert "retrain" in e.value.hint
    check_reusable(d, force=False, resume=False)  # a header alone: a failed start, reusable
    (d / "last.pt").write_bytes(b"x")
    with pytest.raises(HfcnError, match="holds an interrupted run"):
        check_reusable(d, force=False, resume=False)
    (d / "metrics.json").write_text("{}")
    with pytest.raises(HfcnError, match="already holds a finished run"):
        check_reusable(d, force=False, resume=False)
    check_reusable(d, force=True, resume=False)


def test_model_files_are_recorded_and_checked(tmp_path):
    d = tmp_path / "fit"
    d.mkdir()
    (d / "best.pt").write_bytes(b"weights" * 100)
    write_fitted(d, {"system": "x"}, ["best.pt"])
    rec = read_fitted(d)
    assert rec["files"] == {"best.pt": sha256_file(d / "best.pt")}
    verify_files(d, rec["files"])
    (d / "best.pt").write_bytes(b"weightz" * 100)
    with pytest.raises(HfcnError, match=r"best\.pt: model file is damaged") as e:
        verify_files(d, rec["files"])
    assert "--checkpoint last" in e.value.hint
    (d / "best.pt").unlink()
    with pytest.raises(HfcnError, match="model file missing"):
        verify_files(d, rec["files"])


def test_stray_temporary_files_are_removed(tmp_path):
    (tmp_path / "fold0").mkdir()
    stray = [tmp_path / ".best.pt.abc123.tmp", tmp_path / "fold0" / ".last.pt.9x.tmp"]
    for p in stray:
        p.write_bytes(b"half")
    keep = tmp_path / "best.pt"
    keep.write_bytes(b"ok")
    assert sorted(remove_stray_temps(tmp_path)) == sorted(stray)
    assert keep.exists() and not any(p.exists() for p in stray)
