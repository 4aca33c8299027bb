"""HFCN training: presets, fit/predict, the run folder, atomic and verified checkpoints,
bit-exact resume, threshold and best-epoch hygiene, cross-validation, and a learning check.
Tiny phantoms at 32 px and 1-3 epochs keep the file fast."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from hfcn_bench.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from hfcn_bench.data import kfold, load_dataset, split_train_test, write_synthetic_ddti
from hfcn_bench.data.report import DataWarning
from hfcn_bench.errors import HfcnError
from hfcn_bench.runs import train_run
from hfcn_bench.systems import hfcn_training as T


@pytest.fixture(scope="module")
def ds(phantom_ds):
    return phantom_ds


def tiny(**kw) -> T.TrainConfig:
    return T.preset_config("quick", **{"image_size": 32, "epochs": 2, "eval_batch_size": 32, "threads": 1, **kw})


@pytest.fixture(scope="module")
def split(ds):
    return split_train_test(ds, test_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def run(ds, split, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r1"
    report = train_run("hfcn", tiny(), ds, [split], out_dir=out, n_boot=50)
    return out, report


# ---------------------------------------------------------------------------------------------
# configuration


def test_paper_preset_has_the_papers_settings():
    c = T.preset_config("paper")
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.batch_size) == ("sgd", 1e-5, 0.9, 5e-4, 16)
    assert (c.w_malignant, c.w_benign, c.branch_weight, c.alpha, c.image_size) == (3.0, 2.0, 0.5, 0.6, 224)
    assert c.loss_reduction == "sum" and c.preset == "paper"
    assert T.preset_config("default", crop="rfc").crop == "rfc"
    assert T.preset_config("cpu").image_size == 224


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"lr": -1.0}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"crop": "middle"}, "crop"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
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


def test_model_fields_are_declared_once():
    # The training config inherits the model's fields: no flattened copy to drift apart.
    import dataclasses as dc

    from hfcn_bench.models import HFCNConfig, ModelSpec

    spec = {f.name for f in dc.fields(ModelSpec)}
    assert spec <= {f.name for f in dc.fields(T.TrainConfig)} and spec <= {f.name for f in dc.fields(HFCNConfig)}
    assert issubclass(T.TrainConfig, ModelSpec) and issubclass(HFCNConfig, ModelSpec)
    m = tiny(crop="rfc", alpha=0.7, branch_weight=0.3).model_config()
    assert (m.crop, m.alpha, m.branch_weight, m.input_size, m.seed) == ("rfc", 0.7, 0.3, 32, 0)


# ---------------------------------------------------------------------------------------------
# one run


def test_run_folder_layout_and_report(run, split, ds):
    out, report = run
    for name in (
        "config.json",
        "split.json",
        "last.pt",
        "best.pt",
        "history.json",
        "metrics.json",
        "predictions.csv",
        "fitted.json",
    ):
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
    assert report["system"]["name"] == "hfcn" and report["config"]["crop"] == "bfc"


def test_checkpoints_are_plain_and_final(run):
    out, report = run
    best = load_checkpoint(out / "best.pt")
    last = load_checkpoint(out / "last.pt")
    assert best["format"] == CHECKPOINT_FORMAT and last["epoch"] == 2
    assert best["extra"]["final"] is True and best["extra"]["val_cases"]
    assert last["optimizer"] is not None and "torch" in last["rng"]
    # Loading through torch directly with weights_only succeeds: nothing but tensors/containers.
    raw = torch.load(out / "last.pt", weights_only=True)
    assert isinstance(raw["config"], dict) and raw["config"]["image_size"] == 32


def test_model_from_checkpoint_reproduces_predictions(run, split, ds):
    out, _ = run
    model, cfg, _ = T.model_from_checkpoint(out / "best.pt")
    _, test = split.select(ds)
    pred = T.predict(model, test, cfg)
    assert pred.prob.shape == pred.labels.shape == pred.case_ids.shape == (len(test),)
    assert ((pred.prob >= 0) & (pred.prob <= 1)).all()
    csv_prob = [float(line.split(",")[8]) for line in (out / "predictions.csv").read_text().splitlines()[1:]]
    np.testing.assert_allclose(pred.prob, csv_prob, atol=2e-6)


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)  # the same keys before any tensor is compared
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_fit_is_deterministic_on_cpu(ds, split):
    train, test = split.select(ds)
    a = T.fit(train, test[:6], tiny(epochs=1))
    b = T.fit(train, test[:6], tiny(epochs=1))
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    _same_state(a.model, b.model)


def test_threshold_and_best_epoch_are_chosen_on_validation_cases_only(ds, split, monkeypatch):
    """A spy on the threshold rule and on the per-epoch validation: both only ever see
    validation cases, a strict part of the training side."""
    from hfcn_bench import protocol

    seen_thr, seen_val = [], []
    real_thr = protocol.scoring.M.choose_threshold

    def spy_thr(y, p, rule="youden", fixed=0.5):
        seen_thr.append(len(y))
        return real_thr(y, p, rule=rule, fixed=fixed)

    real_val = T._HFCNTask.validate

    def spy_val(self, epoch):
        seen_val.append({s.case_id for s in self.val.samples})
        return real_val(self, epoch)

    monkeypatch.setattr(protocol.scoring.M, "choose_threshold", spy_thr)
    monkeypatch.setattr(T._HFCNTask, "validate", spy_val)
    out = train_run("hfcn", tiny(epochs=2), ds, [split], n_boot=20)
    train_cases = set(split.train)
    assert len(seen_val) == 2
    for cases in seen_val:
        assert cases and cases <= train_cases and not cases & set(split.test)
        assert len(cases) < len(train_cases)
    n_val = sum(1 for s in ds.samples if s.case_id in seen_val[0])
    assert seen_thr and all(n == n_val for n in seen_thr)
    assert out["threshold_source"] == "validation"


def test_without_validation_threshold_comes_from_training(ds, split):
    train, _ = split.select(ds)
    res = T.fit(train, None, tiny(epochs=1, val_fraction=0.0))
    assert res.threshold_source == "training" and res.best_epoch == 1
    assert set(res.threshold_predictions.case_ids.tolist()) == {s.case_id for s in train}


def test_per_case_scoring(ds, split):
    report = train_run("hfcn", tiny(epochs=1), ds, [split], n_boot=20, aggregate="mean")
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
    with pytest.raises(HfcnError, match=r"best\.pt.*(truncated or damaged|damaged zip)"):
        load_checkpoint(path)


def test_flipped_bytes_are_refused_not_loaded_as_garbage(tmp_path):
    # ~2 KB flipped inside a tensor, the zip index intact: torch would load garbage weights
    path = tmp_path / "best.pt"
    save_checkpoint(path, torch.nn.Linear(300, 20), None, 1, {"x": 1})
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 2000):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(HfcnError, match=r"best\.pt: damaged torch checkpoint: the checksum") as exc:
        load_checkpoint(path)
    assert "--checkpoint last" in exc.value.hint and "weights_only=False" not in str(exc.value)


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"not a checkpoint at all", "not a readable torch checkpoint"),
        (b"", "not a readable torch checkpoint"),
    ],
)
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
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "epoch": 1,
            "model": {},
            "config": {},
            "extra": _Payload(str(marker)),
        },
        path,
    )
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
    _same_state(straight.model, resumed.model)


def test_crash_while_checkpointing_resumes_to_the_uninterrupted_weights(ds, split, tmp_path, monkeypatch):
    from hfcn_bench.engine import loop

    train, test = split.select(ds)
    out = tmp_path / "run"
    straight = T.fit(train, test[:6], tiny(epochs=2))
    real = loop.save_checkpoint
    writes = {"n": 0}

    def flaky(path, *a, **k):
        if os.path.basename(path) == "last.pt":
            writes["n"] += 1
            if writes["n"] == 2:
                raise OSError("killed mid-write")
        return real(path, *a, **k)

    monkeypatch.setattr(loop, "save_checkpoint", flaky)
    with pytest.raises(OSError):
        T.fit(train, test[:6], tiny(epochs=2), out_dir=out)
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    res = T.fit(train, test[:6], tiny(epochs=2), out_dir=out, resume=True)
    assert res.resumed_from == 1 and len(res.history) == 2
    # the crash changed nothing: the resumed run ends where the uninterrupted one did
    _same_state(straight.model, res.model)
    assert res.threshold == straight.threshold


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
    report = train_run("hfcn", tiny(epochs=1), ds, kfold(ds, k=3, seed=0), out_dir=out, n_boot=20)
    assert report["kind"] == "kfold" and len(report["folds"]) == 3
    assert report["n_samples"] == len(ds) and report["n_cases"] == len(ds.case_labels())
    assert sum(f["n_samples"] for f in report["folds"]) == len(ds)
    assert report["fold_summary"]["auc"]["n"] >= 1
    for i in range(3):
        assert (out / f"fold{i}" / "best.pt").is_file() and (out / f"fold{i}" / "fitted.json").is_file()
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == len(ds) and {r.split(",")[1] for r in rows} == {"0", "1", "2"}
    # Each fold's decisions survive pooling: the pooled confusion counts are the folds' sums.
    for key in ("tp", "fp", "tn", "fn"):
        assert report["metrics"][key] == sum(f["metrics"][key] for f in report["folds"])
    # training and prediction seconds are both summed over the folds, inside the wall clock
    t = report["timings"]
    assert t["train_s"] > 0 and t["predict_s"] > 0 and t["total_s"] >= t["train_s"] + t["predict_s"] - 1e-6
    assert t["threads"] >= 1 and t["device"] == "cpu"


# ---------------------------------------------------------------------------------------------
# acceptance (minutes of CPU): opt in


def test_hfcn_learns_on_phantoms(tmp_path):
    """The reduced learning check of every CI run: on clean phantoms the paper CNN with BFC,
    a few epochs at 32 px, lowers its training loss and ranks validation and test cases well
    above chance. A change that silently breaks learning fails here."""
    root = write_synthetic_ddti(tmp_path / "easy", n_cases=48, seed=1, difficulty="easy")
    data = load_dataset(root, warn=False)
    split = split_train_test(data, test_fraction=0.25, seed=0)
    report = train_run("hfcn", tiny(epochs=6, augment=True), data, [split], n_boot=50)
    hist = report["training"]["history"]
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"], [h["train_loss"] for h in hist]
    assert max(h["val_auc"] for h in hist) >= 0.85
    assert report["auc"] >= 0.8, report["auc"]


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("HFCN_RUN_SLOW") != "1",
    reason="minutes of CPU: set HFCN_RUN_SLOW=1 to run the synthetic acceptance check",
)
def test_synthetic_acceptance_auc(tmp_path):
    """The model issue's acceptance check: the paper CNN with BFC reaches ROC-AUC >= 0.95 on the
    held-out quarter of clean (``difficulty="easy"``) phantoms, in a CPU run of minutes, through
    the same code path as ``hfcn-bench train`` (a 3:1 case split, seed 0, the default preset)."""
    from hfcn_bench.data import ensure_synthetic

    path = ensure_synthetic(tmp_path / "synthetic-easy", difficulty="easy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        data = load_dataset(path, label_rule="tirads")
    cfg = T.preset_config("default", backbone="paper", crop="bfc")
    split = split_train_test(data, test_fraction=0.25, seed=0)
    report = train_run("hfcn", cfg, data, [split], out_dir=tmp_path / "acceptance")
    assert report["auc"] is not None and report["auc"] >= 0.95, f"ROC-AUC {report['auc']} < 0.95"
