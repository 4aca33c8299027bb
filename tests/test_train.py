"""Training library: presets, fit/predict, run folder, atomic checkpoints, resume, threshold
hygiene, cross-validation. Tiny phantoms at 32 px and 1-3 epochs keep the file fast."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from hfcn_bench import train as T
from hfcn_bench.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from hfcn_bench.data import load_dataset, split_train_test, write_synthetic_ddti
from hfcn_bench.data.report import DataWarning
from hfcn_bench.errors import HfcnError


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = write_synthetic_ddti(tmp_path_factory.mktemp("phantoms") / "ddti", n_cases=24, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load_dataset(root)


def tiny(**kw) -> T.TrainConfig:
    return T.preset_config("quick", **{"image_size": 32, "epochs": 2, "eval_batch_size": 32, "threads": 1, **kw})


@pytest.fixture(scope="module")
def split(ds):
    return split_train_test(ds, test_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def run(ds, split, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r1"
    report = T.train_and_evaluate(ds, split, tiny(), out_dir=out, n_boot=50)
    return out, report


# ---------------------------------------------------------------------------------------------
# configuration


def test_paper_preset_has_the_papers_settings():
    c = T.preset_config("paper")
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.batch_size) == ("sgd", 1e-5, 0.9, 5e-4, 16)
    assert (c.w_malignant, c.w_benign, c.branch_weight, c.alpha, c.image_size) == (3.0, 2.0, 0.5, 0.6, 224)
    assert c.loss_reduction == "sum" and c.preset == "paper"
    assert T.preset_config("default", crop="rfc").crop == "rfc"


@pytest.mark.parametrize("kw, needle", [
    ({"lr": -1.0}, "lr"), ({"epochs": 0}, "epochs"), ({"optimizer": "lbfgs"}, "optimizer"),
    ({"crop": "middle"}, "crop"), ({"val_fraction": 1.0}, "val_fraction"), ({"alpha": 1.5}, "alpha"),
])
def test_bad_options_name_the_field(kw, needle):
    with pytest.raises(HfcnError, match=needle):
        T.preset_config("quick", **kw)


def test_unknown_preset_and_option():
    with pytest.raises(HfcnError, match="unknown preset"):
        T.preset_config("fast")
    with pytest.raises(HfcnError, match="unknown training option"):
        T.preset_config("quick", learning_rate=0.1)
    cfg = tiny()
    assert T.TrainConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------------------------------------
# one run


def test_run_folder_layout_and_report(run, split, ds):
    out, report = run
    for name in ("config.json", "split.json", "last.pt", "best.pt", "history.json", "metrics.json",
                 "predictions.csv"):
        assert (out / name).is_file(), name
    _, test = split.select(ds)
    assert report["n_samples"] == len(test)
    assert report["resampling"] == "case" and report["level"] == "roi"
    assert report["majority_baseline"]["majority_class"] in (0, 1)
    assert report["threshold_source"] == "validation"
    assert set(report["roc"]) == {"fpr", "tpr"}
    for key in ("accuracy", "precision", "recall", "f1", "specificity", "auc", "pr_auc", "ci"):
        assert key in report["metrics"], key
    assert json.loads((out / "metrics.json").read_text())["auc"] == report["auc"]
    lines = (out / "predictions.csv").read_text().splitlines()
    assert len(lines) == 1 + len(test)
    hist = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in hist["history"]] == [1, 2]


def test_checkpoints_are_plain_and_final(run):
    out, report = run
    best = load_checkpoint(out / "best.pt")
    last = load_checkpoint(out / "last.pt")
    assert best["format"] == CHECKPOINT_FORMAT and last["epoch"] == 2
    assert best["metrics"]["final"] is True
    assert best["metrics"]["threshold"] == pytest.approx(report["threshold"])
    assert last["optimizer"] is not None and "torch" in last["rng"]
    # Loading through torch directly with weights_only succeeds: nothing but tensors/containers.
    raw = torch.load(out / "last.pt", weights_only=True)
    assert isinstance(raw["config"], dict) and raw["config"]["image_size"] == 32


def test_model_from_checkpoint_reproduces_predictions(run, split, ds):
    out, _ = run
    model, cfg, _ = T.model_from_checkpoint(out / "best.pt")
    _, test = split.select(ds)
    prob, labels, cases = T.predict_samples(model, test, cfg)
    assert prob.shape == labels.shape == cases.shape == (len(test),)
    assert ((prob >= 0) & (prob <= 1)).all()
    csv_prob = [float(line.split(",")[7]) for line in (out / "predictions.csv").read_text().splitlines()[1:]]
    np.testing.assert_allclose(prob, csv_prob, atol=2e-6)


def test_fit_is_deterministic_on_cpu(ds, split):
    train, test = split.select(ds)
    a = T.fit(train, test[:6], tiny(epochs=1))
    b = T.fit(train, test[:6], tiny(epochs=1))
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_threshold_is_chosen_on_validation_cases_only(ds, split, monkeypatch):
    seen = []
    real = T._choose_threshold

    def spy(pred, rule, aggregate=None):
        seen.append(set(pred.case_ids.tolist()))
        return real(pred, rule, aggregate)

    monkeypatch.setattr(T, "_choose_threshold", spy)
    report = T.train_and_evaluate(ds, split, tiny(epochs=1), n_boot=20)
    train_cases = set(split.train)
    assert seen, "no threshold was chosen"
    for cases in seen:
        assert cases and cases <= train_cases and not cases & set(split.test)
    # and the validation part is a strict subset of the training cases, not all of them
    assert all(len(c) < len(train_cases) for c in seen)
    assert report["threshold_source"] == "validation"


def test_without_validation_threshold_comes_from_training(ds, split):
    train, _ = split.select(ds)
    res = T.fit(train, None, tiny(epochs=1, val_fraction=0.0))
    assert res.threshold_source == "training" and res.best_epoch == 1
    assert set(res.threshold_predictions.case_ids.tolist()) == {s.case_id for s in train}


def test_per_case_scoring(ds, split):
    report = T.train_and_evaluate(ds, split, tiny(epochs=1), n_boot=20, aggregate="mean")
    assert report["level"] == "case-mean"
    assert report["n_samples"] == report["n_cases"] == len(split.test)


# ---------------------------------------------------------------------------------------------
# checkpoints: atomic, safe, clear errors


def _dummy(path, epoch=1):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(path, model, None, epoch, {"x": 1}, {"m": 0.5})
    return model


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    model = _dummy(path, epoch=1)
    before = path.read_bytes()

    def dies_half_way(obj, fh, *a, **k):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, None, 2, {"x": 1})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "best.pt"
    _dummy(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(HfcnError, match=r"best\.pt.*truncated or damaged"):
        load_checkpoint(path)


@pytest.mark.parametrize("content, needle", [
    (b"not a checkpoint at all", "not a readable torch checkpoint"),
    (b"", "not a readable torch checkpoint"),
])
def test_junk_file_is_a_clear_error(tmp_path, content, needle):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(HfcnError, match=needle) as exc:
        load_checkpoint(path)
    assert "junk.pt" in str(exc.value)


def test_foreign_torch_file_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(HfcnError, match=r"other\.pt: not an hfcn-bench checkpoint"):
        load_checkpoint(path)
    torch.save({"format": CHECKPOINT_FORMAT, "version": 99, "epoch": 1, "model": {}, "config": {}}, path)
    with pytest.raises(HfcnError, match="version 99"):
        load_checkpoint(path)
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "epoch": 1}, path)
    with pytest.raises(HfcnError, match="missing model, config"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this would create a marker file: the code execution weights_only prevents."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "epoch": 1, "model": {}, "config": {},
                "extra": _Payload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(HfcnError, match=r"evil\.pt: refused to load"):
        load_checkpoint(path)
    assert not marker.exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(HfcnError, match="plain.pkl"):
        load_checkpoint(plain)
    assert not marker.exists()


def test_load_checkpoint_asks_torch_for_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    _dummy(path)
    calls = []
    real = torch.load

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(path)
    assert calls and calls[0].get("weights_only") is True and calls[0].get("map_location") == "cpu"


def test_checkpoint_rejects_non_plain_values(tmp_path):
    with pytest.raises(TypeError, match="config.when"):
        save_checkpoint(tmp_path / "c.pt", torch.nn.Linear(2, 2), None, 1, {"when": object()})
    assert not (tmp_path / "c.pt").exists()


# ---------------------------------------------------------------------------------------------
# resume


class _Killed(Exception):
    pass


@pytest.mark.parametrize("crop", ["bfc", "rfc"])  # rfc: the window generator's state must resume too
def test_killed_run_resumes_to_the_same_weights(ds, split, tmp_path, crop):
    train, test = split.select(ds)
    val = test[:6]
    cfg = tiny(epochs=3, crop=crop)
    straight = T.fit(train, val, cfg)

    def kill_after_two(kind, done, total, info):
        if kind == "epoch" and done == 2:
            raise _Killed

    out = tmp_path / "run"
    with pytest.raises(_Killed):
        T.fit(train, val, cfg, out_dir=out, progress=kill_after_two)
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    resumed = T.fit(train, val, cfg, out_dir=out, resume=True)
    assert resumed.resumed_from == 2
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    for (k, va), vb in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_crash_while_checkpointing_resumes_from_last_good_epoch(ds, split, tmp_path, monkeypatch):
    train, test = split.select(ds)
    out = tmp_path / "run"
    real = T.save_checkpoint
    writes = {"n": 0}

    def flaky(path, *a, **k):
        if os.path.basename(path) == "last.pt":
            writes["n"] += 1
            if writes["n"] == 2:
                raise OSError("killed mid-write")
        return real(path, *a, **k)

    monkeypatch.setattr(T, "save_checkpoint", flaky)
    with pytest.raises(OSError):
        T.fit(train, test[:6], tiny(epochs=2), out_dir=out)
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    res = T.fit(train, test[:6], tiny(epochs=2), out_dir=out, resume=True)
    assert res.resumed_from == 1 and len(res.history) == 2


def test_resume_refuses_a_different_configuration(run, split, ds):
    out, _ = run
    train, test = split.select(ds)
    with pytest.raises(HfcnError, match=r"cannot resume .*lr"):
        T.fit(train, test[:4], tiny(lr=0.1), out_dir=out, resume=True)


# ---------------------------------------------------------------------------------------------
# bad input, cross-validation


def test_unloadable_roi_is_skipped_with_a_warning(ds, split, tmp_path):
    import dataclasses

    train, test = split.select(ds)
    gone = dataclasses.replace(train[0], image_path=tmp_path / "vanished_1.jpg")
    with pytest.warns(DataWarning, match="vanished_1.jpg"):
        res = T.fit([gone] + train[1:], test[:6], tiny(epochs=1))
    assert len(res.skipped) == 1 and "vanished_1.jpg" in res.skipped[0]


def test_cross_validation_pools_every_case_once(ds, tmp_path):
    out = tmp_path / "cv"
    report = T.cross_validate(ds, 3, tiny(epochs=1), out_dir=out, n_boot=20)
    assert report["kind"] == "kfold" and len(report["folds"]) == 3
    assert report["n_samples"] == len(ds) and report["n_cases"] == len(ds.case_labels())
    assert sum(f["n_samples"] for f in report["folds"]) == len(ds)
    assert report["fold_summary"]["auc"]["n"] >= 1
    for i in range(3):
        assert (out / f"fold{i}" / "best.pt").is_file()
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == len(ds) and {r.split(",")[0] for r in rows} == {"0", "1", "2"}
    # Each fold's decisions survive pooling: the pooled confusion counts are the folds' sums.
    for key in ("tp", "fp", "tn", "fn"):
        assert report["metrics"][key] == sum(f["metrics"][key] for f in report["folds"])
    # training and prediction seconds are both summed over the folds, inside the wall clock
    t = report["timings"]
    assert t["train_s"] > 0 and t["predict_s"] > 0 and t["total_s"] >= t["train_s"] + t["predict_s"] - 1e-6
    assert t["threads"] >= 1 and t["device"] == "cpu"


# ---------------------------------------------------------------------------------------------
# acceptance (minutes of CPU): opt in


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HFCN_RUN_SLOW") != "1",
                    reason="minutes of CPU: set HFCN_RUN_SLOW=1 to run the synthetic acceptance check")
def test_synthetic_acceptance_auc(tmp_path):
    report = T.synthetic_acceptance(out_dir=tmp_path / "acceptance")
    assert report["passed"], f"ROC-AUC {report['auc']} < {report['min_auc']}"
