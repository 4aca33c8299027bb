"""``hfcn-bench rank``: one table over HFCN and comparator runs, refused when the runs were not
scored on the same data and held-out cases."""

from __future__ import annotations

import json
import shutil

import pytest
from clitools import run
from PIL import Image

from hfcn_bench.data import write_synthetic_ddti

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("rank")
    data = write_synthetic_ddti(base / "ddti", n_cases=24, seed=0)
    common = ["--data", str(data), "--n-boot", "30", "--folds", "2"]
    hfcn, rf, other = base / "hfcn", base / "rf", base / "rf-split"
    for argv in (
        ["--out", str(hfcn), "--preset", "quick", "--image-size", "32", "--epochs", "1", "--threads", "1"],
        ["--out", str(rf), "--system", "shape_rf", "--set", "n_estimators=20"],
        ["--out", str(other), "--system", "shape_rf", "--set", "n_estimators=20", "--seed", "3"],
        ["--out", str(base / "rf5"), "--system", "shape_rf", "--set", "n_estimators=5"],
    ):
        rc, text = run(["train", *common, *argv])
        assert rc == 0, text
    return base, hfcn, rf, other


def test_rank_orders_by_auc_with_intervals_and_the_baseline(runs, tmp_path):
    base, hfcn, rf, _ = runs
    rc, text = run(["rank", str(hfcn), str(rf), "--out", str(tmp_path)])
    assert rc == 0, text
    result = json.loads((tmp_path / "rank.json").read_text())
    names = [r["name"] for r in result["rows"]]
    assert sorted(names) == ["HFCN paper+bfc a0.6", "shape_rf"]
    aucs = [r["auc"] for r in result["rows"]]
    assert aucs == sorted(aucs, reverse=True)
    for r in result["rows"]:
        assert r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1] and r["f1_ci"][0] <= r["f1"] <= r["f1_ci"][1]
    assert result["protocol"].startswith("2-fold case-level CV") and "threshold" not in result["protocol"]
    by_name = {r["name"]: r for r in result["rows"]}
    assert "on its validation predictions" in by_name["HFCN paper+bfc a0.6"]["threshold"]
    assert "training out-of-fold" in by_name["shape_rf"]["threshold"]
    md = (tmp_path / "rank.md").read_text()
    assert "majority baseline" in md and "| 1 | " in md and "| 2 | " in md
    with Image.open(tmp_path / "rank.png") as im:
        assert im.width > 400 and im.height > 100
    assert "majority baseline" in text and "shape_rf" in text


def test_runs_of_one_system_are_named_by_their_settings_and_paired_to_the_top(runs, tmp_path):
    import numpy as np

    from hfcn_bench.metrics import delong_test
    from hfcn_bench.protocol.paired import run_scores

    base, hfcn, rf, _ = runs
    rc, text = run(["rank", str(rf), str(base / "rf5"), str(hfcn), "--n-boot", "200", "--out", str(tmp_path)])
    assert rc == 0, text
    result = json.loads((tmp_path / "rank.json").read_text())
    names = {r["name"] for r in result["rows"]}
    assert {"shape_rf (n_estimators=20)", "shape_rf (n_estimators=5)", "HFCN paper+bfc a0.6"} <= names
    top, *rest = result["rows"]
    assert "paired" not in top
    for row in rest:
        d = row["paired"]
        assert d["low"] <= d["diff"] <= d["high"] and d["n_rois"] == top["n_samples"]
        assert abs(d["diff"] - (row["auc"] - top["auc"])) < 1e-9
        # DeLong on the same aligned scores, computed here from the two predictions files
        a, b = run_scores(row["run"]), run_scores(top["run"])
        order = [b["keys"].index(k) for k in a["keys"]]
        want = delong_test(a["labels"], a["scores"], np.asarray(b["scores"])[order])
        assert abs(d["delong_p"] - want["p"]) < 1e-12
    assert "ΔAUC vs rank 1" in (tmp_path / "rank.md").read_text()
    # a run whose predictions are gone is ranked, not paired, and the reason is named
    gone = tmp_path / "gone"
    shutil.copytree(base / "rf5", gone)
    (gone / "predictions.csv").unlink()
    rc, text = run(["rank", str(hfcn), str(gone), str(rf), "--json"])
    assert rc == 0, text
    ranked = json.loads(text)["rows"]
    # below the top the lost run is unpaired; at the top, nothing can be paired to it
    unpaired = (
        ranked[1:]
        if ranked[0]["name"] == "shape_rf (n_estimators=5)"
        else [r for r in ranked if r["name"] == "shape_rf (n_estimators=5)"]
    )
    assert unpaired and all(r["paired"] is None and "predictions.csv: missing" in r["paired_note"] for r in unpaired)


def test_rank_refuses_runs_on_other_cases_or_without_metrics(runs, tmp_path):
    base, hfcn, rf, other = runs
    rc, text = run(["rank", str(rf), str(other)])
    assert rc == 1 and "held out other cases than" in text and "--seed" in text
    rc, text = run(["rank", str(hfcn), str(hfcn)])
    assert rc == 1 and "two runs of the same model with the same settings: HFCN paper+bfc a0.6" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, text = run(["rank", str(hfcn), str(empty)])
    assert rc == 1 and "is not a run folder (no config.json)" in text
    # a run that stopped before its last epoch says where it stopped
    stopped = tmp_path / "stopped"
    shutil.copytree(hfcn, stopped)
    (stopped / "metrics.json").unlink()
    header = json.loads((stopped / "config.json").read_text())
    header["status"] = "running"
    (stopped / "config.json").write_text(json.dumps(header))
    rc, text = run(["rank", str(hfcn), str(stopped)])
    assert rc == 1 and "did not finish training (stopped" in text and "--resume" in text
    broken = tmp_path / "broken"
    shutil.copytree(rf, broken)
    (broken / "metrics.json").write_text("{not json")
    rc, text = run(["rank", str(hfcn), str(broken)])
    assert rc == 1 and "metrics.json is not valid JSON" in text


def test_the_localisation_cell_names_the_segmenter():
    from hfcn_bench.bench.rank import localisation

    seg = {"dice": 0.6, "iou": 0.45, "frames": 12}
    assert localisation({"segmentation": {**seg, "segmenter": "transunet-small"}}) == (
        "segmenter transunet-small Dice 0.600, IoU 0.450 (12 frames)"
    )
    # a report written before the segmenter was named (or pooled over different ones)
    assert localisation({"segmentation": seg}) == "segmenter Dice 0.600, IoU 0.450 (12 frames)"
    assert localisation({"auc": 0.5}) is None


def test_per_case_rankings_are_not_paired_per_roi_and_bad_n_boot_is_one_error(runs, tmp_path):
    base, hfcn, rf, _ = runs
    copies = []
    for src in (rf, base / "rf5"):
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        metrics = json.loads((dst / "metrics.json").read_text())
        metrics["level"] = "case-mean"  # as a run trained with --per-case records it
        (dst / "metrics.json").write_text(json.dumps(metrics))
        copies.append(dst)
    rc, text = run(["rank", *map(str, copies), "--out", str(tmp_path / "out")])
    assert rc == 0, text
    result = json.loads((tmp_path / "out" / "rank.json").read_text())
    assert all(r["paired"] is None and "per case-mean" in r["paired_note"] for r in result["rows"][1:])
    assert "Not paired:" in (tmp_path / "out" / "rank.md").read_text() and "not paired:" in text
    rc, text = run(["rank", str(rf), str(base / "rf5"), "--n-boot", "0"])
    assert rc == 1 and "--n-boot 0" in text and "Traceback" not in text


def test_settings_that_differ_only_in_form_or_execution_do_not_name_runs():
    from hfcn_bench.bench.rank import _distinct_names
    from hfcn_bench.errors import HfcnError

    def fake(cfg, d):
        return {"dir": d, "report": {"system": {"name": "two_stage"}, "config": cfg}}

    a = fake({"frame_size": [96, 144], "roi_margin": 0, "threads": 1, "segmenter": "unet"}, "a")
    b = fake({"frame_size": (96, 144), "roi_margin": 0.0, "threads": 2, "segmenter": "unet"}, "b")
    with pytest.raises(HfcnError, match="same settings"):
        _distinct_names([a, b])
    c = fake({"frame_size": [96, 144], "roi_margin": 0, "segmenter": "transunet-small"}, "c")
    assert _distinct_names([a, c]) == ["two_stage (segmenter=unet)", "two_stage (segmenter=transunet-small)"]
