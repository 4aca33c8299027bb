"""The recipe ablation tool (issue 22, item 4) on phantoms at a smoke size: each step a k-fold run
on the same folds, small files without absolute paths, the ranked table with paired differences
and descriptor-head AUCs, resumption, one failing step recorded, the final step's external check."""

from __future__ import annotations

import json

import pytest
from clitools import run

from hfcn_bench.data import load_dataset
from hfcn_bench.data.holdout import write_holdout
from hfcn_bench.errors import HfcnError
from hfcn_bench.reproduce import recipe as R
from hfcn_bench.systems.hfcn_training import preset_config

SMALL = dict(image_size=32, epochs=1, folds=2, n_boot=30, final_size=32, final_epochs=1)


def test_the_chain_ends_at_the_pretrained_preset():
    """The preset is the ablation's last Lite0 step at its own size: what the table measures is
    what `--preset pretrained` trains (Global, since the ablation starts from Table 4's Global)."""
    end = R.step_config(R._BY_KEY["tta"], image_size=160, epochs=None, threads=1, seed=0).to_dict()
    preset = preset_config("pretrained", crop="none").to_dict()
    differ = {k for k in end if end[k] != preset[k]}
    assert differ == {"preset", "image_size", "threads"}, differ
    assert (end["image_size"], preset["image_size"]) == (160, 224)
    base = R.step_config(R._BY_KEY["base"], image_size=160, epochs=3, threads=1, seed=0)
    assert (base.head, base.backbone, base.weights, base.crop, base.epochs) == (
        "flatten",
        "efficientnet_lite0",
        "imagenet",
        "none",
        3,
    )
    lite2 = R.step_config(R._BY_KEY["lite2"], image_size=160, epochs=None, threads=1, seed=0)
    assert lite2.backbone == "efficientnet_lite2" and lite2.aux_descriptors == 0.5 and not lite2.tta_flip


@pytest.fixture(scope="module")
def ablation(make_phantoms, tmp_path_factory):
    data = make_phantoms(24, 0)
    root = tmp_path_factory.mktemp("recipe")
    write_holdout(load_dataset(data, warn=False), root / "ho", fraction=0.25, seed=0)
    work, docs = root / "work", root / "docs"
    table = R.run_recipe(
        data, work, docs, steps=("base", "pooled", "descriptors"), final=True, holdout=root / "ho", **SMALL
    )
    return data, root, work, docs, table


def test_steps_table_and_small_files(ablation):
    data, root, work, docs, table = ablation
    rows = {r["key"]: r for r in table["rows"]}
    assert all(rows[k]["done"] for k in ("base", "pooled", "descriptors", "final"))
    assert not rows["augment"]["done"] and not rows["lite2"]["done"]
    # paired difference against the parent, on the same folds' ROIs
    d = rows["pooled"]["delta"]
    assert d["low"] <= d["diff"] <= d["high"] and d["n_rois"] == rows["pooled"]["n_rois"]
    assert "delta" not in rows["descriptors"]  # its parent (context-32px) has not run
    assert rows["descriptors"]["heads"]["calcifications"] is not None and "micro" in rows["descriptors"]["heads"]
    assert rows["final"]["external"]["auc"] is not None
    assert sorted(r["rank"] for r in rows.values() if r["done"]) == [1, 2, 3, 4]
    md = (docs / "README.md").read_text()
    assert "| 1 |" in md and "Not measured yet" in md and "`augment`" in md and "ΔAUC" in md
    for key in ("base", "pooled", "descriptors", "final"):
        assert {p.name for p in (docs / key).iterdir()} >= {
            "config.json",
            "split.json",
            "metrics.json",
            "predictions.csv",
        }
    assert (docs / "final" / "eval_report.json").is_file()
    # no absolute path: neither the data, nor the work folder, nor the holdout copy
    for f in docs.rglob("*"):
        if f.is_file():
            text = f.read_text()
            assert str(root) not in text and str(data) not in text, f
    # the same folds for every step
    splits = {k: json.loads((docs / k / "split.json").read_text())["splits"] for k in ("base", "pooled")}
    assert [s["test"] for s in splits["base"]] == [s["test"] for s in splits["pooled"]]


def test_finished_steps_are_reused_and_the_protocol_is_kept(ablation):
    data, root, work, docs, _ = ablation
    before = (work / "base" / "metrics.json").stat().st_mtime_ns
    table = R.run_recipe(data, work, docs, steps=("base",), **SMALL)
    assert table["this_run"]["base"]["status"] == "cached"
    assert (work / "base" / "metrics.json").stat().st_mtime_ns == before
    with pytest.raises(HfcnError, match="image_size"):
        R.run_recipe(data, work, docs, steps=("base",), **{**SMALL, "image_size": 40})
    with pytest.raises(HfcnError, match="unknown recipe step"):
        R.run_recipe(data, work, docs, steps=("bogus",), **SMALL)


def test_an_edited_step_is_refused_not_reused_or_retrained(ablation, tmp_path):
    """A finished step whose split was edited afterwards is neither pooled nor silently trained
    again: the step is recorded as failed, naming the file."""
    import shutil

    data, _, work, _, _ = ablation
    copy = tmp_path / "work"
    shutil.copytree(work / "base", copy / "base")
    split = copy / "base" / "split.json"
    split.write_text(split.read_text().replace('"seed": 0', '"seed": 1', 1))
    before = (copy / "base" / "metrics.json").stat().st_mtime_ns
    table = R.run_recipe(data, copy, tmp_path / "docs", steps=("base",), **SMALL)
    assert table["this_run"]["base"]["status"] == "error"
    rows = {r["key"]: r for r in table["rows"]}
    assert "split.json was changed" in rows["base"]["error"]
    assert (copy / "base" / "metrics.json").stat().st_mtime_ns == before


def test_a_failing_step_is_recorded_and_the_rest_go_on(make_phantoms, tmp_path, monkeypatch):
    data = make_phantoms(24, 0)
    real = R.step_config

    def broken(step, **kw):
        if step.key == "base":
            raise RuntimeError("boom")
        return real(step, **kw)

    monkeypatch.setattr(R, "step_config", broken)
    table = R.run_recipe(data, tmp_path / "w", tmp_path / "d", steps=("base", "pooled"), **SMALL)
    assert table["this_run"]["base"]["status"] == "error" and table["this_run"]["pooled"]["status"] == "done"
    rows = {r["key"]: r for r in table["rows"]}
    assert "boom" in rows["base"]["error"] and rows["pooled"]["done"]
    assert "failed: RuntimeError: boom" in (tmp_path / "d" / "README.md").read_text()


def test_cli(ablation):
    data, root, work, docs, _ = ablation
    rc, out = run(["recipe", "--work", str(work), "--docs", str(docs), "--report-only"])
    assert rc == 0 and "ΔAUC" in out and "pooled" in out
