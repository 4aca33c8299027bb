"""Table 5 of ``hfcn-bench reproduce`` (feature cropping against image cropping, accuracy beside
cost measured in the same report) and the training-seed repeats (``--seeds``) with their
seed-pooled intervals, in-process at smoke settings."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from clitools import run

from hfcn_bench import metrics as M
from hfcn_bench.errors import HfcnError
from hfcn_bench.reproduce import ReproduceOptions, build_cells, build_configs, reproduce


@pytest.fixture(scope="module")
def data(phantoms):
    return phantoms


def _opts(data, out, **kw):
    base = dict(
        table="5",
        data=str(data),
        folds=2,
        preset="smoke",
        threads=1,
        engine="local",
        out=str(out),
        n_boot=30,
        backbones=("paper",),
    )
    return ReproduceOptions(**{**base, **kw})


def test_table5_is_table4_plus_image_crops():
    t4 = {c.key: c for c in build_configs("4")}
    t5 = {c.key: c for c in build_configs("5")}
    image = {f"{b}-image-a0.6-w0.5" for b in ("paper", "efficientnet_lite0")}
    assert set(t5) == set(t4) | image
    # Table 4's cells are Table 5's: same keys, both tags, so finished ones are reused
    assert all(t5[k].tables == ("4", "5") for k in t4)
    assert all(t5[k].crop == "image" and t5[k].alpha == 0.6 and t5[k].branch_weight == 0.5 for k in image)
    assert image <= {c.key for c in build_configs("all")}


def test_seed_repeats_are_cells_of_their_own():
    cfgs = build_configs("4", backbones=("paper",))
    cells = build_cells(cfgs, 2, seeds=(0, 1, 2), grid_seed=0, seed_crops=("none", "bfc"))
    keys = {c.key for c in cells}
    assert "paper-global-f0" in keys and "paper-global-f1-s2" in keys and "paper-bfc-a0.6-w0.5-f0-s1" in keys
    assert not any(k.endswith("-s0") for k in keys)  # the grid's own seed is the plain cell
    assert not any(k.startswith("paper-rfc") and "-s" in k for k in keys)
    assert len(cells) == 3 * 2 + 2 * 2 * 2
    with pytest.raises(HfcnError, match="unknown architecture 'bcf'"):
        build_cells(cfgs, 2, seeds=(1,), seed_crops=("bcf",))


def test_table5_next_to_table4_trains_only_the_image_cells(data, tmp_path):
    out = tmp_path / "g"
    reproduce(_opts(data, out, table="4"))
    seen = []
    rep = reproduce(_opts(data, out, table="5"), progress=lambda kind, spec, res: seen.append((kind, spec["key"])))
    started = {k for kind, k in seen if kind == "start"}
    assert started == {"paper-image-a0.6-w0.5-f0", "paper-image-a0.6-w0.5-f1"}
    assert {k for kind, k in seen if kind == "cached"} == {
        c.key for c in build_cells(build_configs("4", backbones=("paper",)), 2)
    }

    rows = {r["architecture"]: r for r in rep["table5"]}
    assert list(rows) == ["Global", "Global + RFC", "Global + BFC", "Global + Image crops"]
    for r in rows.values():
        c = r["cost"]
        assert r["done"] and c["train_per_image_s"] > 0 and c["infer_per_roi_s"] > 0 and c["peak_mib"] is not None
        assert c["batch"] == 16 and c["threads"] == 1
    assert rows["Global"]["cost"]["train_ratio"] == 1.0
    # six backbone passes per image cost more than one (a loose bound: the smoke model is tiny)
    assert rows["Global + Image crops"]["cost"]["backbone_passes"] == 6
    assert rows["Global + Image crops"]["cost"]["train_ratio"] > 1.5
    comparisons = {p["comparison"] for p in rep["paired"]}
    assert {"BFC (alpha 0.6) - Image", "RFC (alpha 0.6) - Image", "Image - Global"} <= comparisons
    md = (out / "report.md").read_text()
    assert "## Table 5" in md and "| Global + Image crops | paper |" in md and "x) |" in md
    assert "BFC (alpha 0.6) - Image" in md
    assert (out / "accuracy_cost.png").stat().st_size > 0

    # the costs are kept with their settings: a report-only rerun reuses them
    before = os.stat(out / "costs.json").st_mtime_ns
    rep2 = reproduce(_opts(data, out, table="5", report_only=True))
    assert os.stat(out / "costs.json").st_mtime_ns == before
    assert rep2["table5"] == rep["table5"]


def test_acceptance_command_writes_table5(data, tmp_path):
    out = tmp_path / "x"
    rc, text = run(
        [
            "reproduce",
            "--table",
            "5",
            "--preset",
            "smoke",
            "--folds",
            "2",
            "--engine",
            "local",
            "--backbones",
            "paper",
            "--data",
            str(data),
            "--out",
            str(out),
            "--n-boot",
            "30",
        ]
    )
    assert rc == 0, text
    md = (out / "report.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| Global + Image crops | paper |"))
    assert line.count("x)") == 3  # training, inference and memory, each with its ratio to Global
    assert "| paper | BFC (alpha 0.6) - Image |" in md
    assert (out / "accuracy_cost.png").is_file()


def test_seeds_give_a_spread_for_rows_and_paired_differences(data, tmp_path):
    out = tmp_path / "s"
    rep = reproduce(_opts(data, out, table="4", seeds=(0, 1), seed_architectures=("none", "bfc")))
    spread = {r["config"]: r for r in rep["seeds"]}
    assert set(spread) == {"paper-global", "paper-bfc-a0.6-w0.5"}
    for r in spread.values():
        assert r["seeds"] == [0, 1] and r["n_seeds"] == 2 and len(r["per_seed"]) == 2
        assert r["low"] <= min(r["per_seed"]) <= max(r["per_seed"]) <= r["high"] or r["low"] < r["high"]
    row = spread["paper-global"]
    assert row["per_seed"][0] == pytest.approx(next(t["auc"] for t in rep["table4"] if t["config"] == "paper-global"))
    pair = next(p for p in rep["paired"] if p["comparison"] == "BFC (alpha 0.6) - Global")
    assert pair["seeds"]["n_seeds"] == 2 and pair["seeds"]["per_seed"][0] == pytest.approx(pair["diff"])
    assert "seeds" not in next(p for p in rep["paired"] if p["comparison"] == "RFC (alpha 0.6) - Global")
    md = (out / "report.md").read_text()
    assert "## Training noise" in md and "± " in md
    # a seed repeat trains on the same folds with its own training seed
    a = json.loads((out / "cells" / "paper-global-f0" / "split.json").read_text())
    b = json.loads((out / "cells" / "paper-global-f0-s1" / "split.json").read_text())
    assert a["splits"][0]["test"] == b["splits"][0]["test"]
    head = json.loads((out / "cells" / "paper-global-f0-s1" / "config.json").read_text())
    assert head["cell"]["train_seed"] == 1


def test_seed_pooled_interval():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    cases = np.arange(120) // 2
    a = y + rng.normal(0, 1.2, 120)
    b = y + rng.normal(0, 1.5, 120)
    one = M.seed_pooled_auc(y, [(a, b)], cases, n_boot=200, seed=3)
    ref = M.paired_auc_difference(y, a, b, cases, n_boot=200, seed=3)
    # one seed: exactly the paired case bootstrap
    assert (one["low"], one["high"], one["mean"]) == pytest.approx((ref["low"], ref["high"], ref["diff"]))
    assert one["sd"] is None and one["n_seeds"] == 1
    # a second, identical seed adds no training noise; a seed far off widens the interval
    same = M.seed_pooled_auc(y, [(a, b), (a, b)], cases, n_boot=200, seed=3)
    assert (same["low"], same["high"]) == pytest.approx((one["low"], one["high"])) and same["sd"] == 0
    off = M.seed_pooled_auc(y, [(a, b), (a + 3 * y, b)], cases, n_boot=200, seed=3)
    assert off["high"] > one["high"] + 0.05 and off["sd"] > 0.05
    auc = M.seed_pooled_auc(y, [a], cases, n_boot=200, seed=3)
    assert auc["mean"] == pytest.approx(M.roc_auc(y, a))
