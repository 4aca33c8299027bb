"""The systems registry: every system (HFCN and the comparators) trained, scored, saved, loaded,
re-evaluated, validated externally and used for prediction through the same code path, at
tiny settings; leakage guards; system-specific checks. Tiny phantoms and small models keep
the file fast on a loaded 2-core machine."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from hfcn_bench.data import load_dataset, split_train_test, write_synthetic_ddti
from hfcn_bench.data.rois import Sample
from hfcn_bench.errors import HfcnError

pytest.importorskip("sklearn")

from hfcn_bench.protocol import read_fitted  # noqa: E402
from hfcn_bench.runs import evaluate_run, predict_inputs, train_run  # noqa: E402
from hfcn_bench.systems import SYSTEMS, available_systems, get_system, resolve_names, shape_rf, transfer  # noqa: E402  # noqa: E402


@pytest.fixture(scope="module")
def root(easy_phantoms):
    return easy_phantoms


@pytest.fixture(scope="module")
def ds(root):
    return load_dataset(root, warn=False)


@pytest.fixture(scope="module")
def split(ds):
    return split_train_test(ds, test_fraction=0.25, seed=0)


# Each system's smoke setting, shrunk or chosen so that it sees the phantoms' cues at 32-64 px
# in seconds. Trunks: the ImageNet EfficientNet-Lite0 for one transfer head, random ones else.
TINY = {
    "hfcn": {"image_size": 32, "epochs": 3, "augment": True, "threads": 1},
    "shape_rf": {"n_estimators": 60},
    "transfer_svm": {"image_size": 64, "threads": 1},
    "transfer_rf": {"backbone": "vgg16", "weights": None, "image_size": 32, "rf_trees": 60, "threads": 1},
    "transfer_softmax": {"backbone": "efficientnet_b0", "weights": None, "image_size": 32, "threads": 1},
    "mccnn_spp": {"trunk": "paper", "image_size": 32, "epochs": 4, "threads": 1},
    "mccnn_cascade": {
        "trunk": "paper",
        "image_size": 32,
        "epochs": 4,
        "threads": 1,
        "frame_size": (64, 96),
        "det_epochs": 10,
    },
    "two_stage": {
        "frame_size": (48, 64),
        "unet_base": 8,
        "unet_depth": 3,
        "seg_epochs": 20,
        "seg_batch": 4,
        "seg_lr": 3e-3,
        "image_size": 32,
        "epochs": 3,
        "rf_trees": 30,
        "threads": 1,
    },
}


def _cfg(name, over=None):
    return get_system(name).configure("smoke", {**TINY[name], **(over or {})})


def _train(name, data, split, over=None, out=None, n_boot=50):
    return train_run(name, _cfg(name, over), data, [split], out_dir=out, n_boot=n_boot)


@pytest.fixture(scope="module")
def runs(ds, split, tmp_path_factory):
    """One run folder per system (each costs seconds), shared by the tests below."""
    base = tmp_path_factory.mktemp("runs")
    return {name: base / name for name in TINY if _train(name, ds, split, out=base / name) is not None}


@pytest.fixture(scope="module")
def reports(runs):
    return {name: json.loads((path / "metrics.json").read_text()) for name, path in runs.items()}


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """A second phantom set, another seed: external data for every run."""
    return write_synthetic_ddti(tmp_path_factory.mktemp("external") / "ddti", n_cases=16, seed=11, difficulty="easy")


def test_registry_covers_the_tested_systems():
    # A system added to the registry without a tiny test setting would go untested.
    assert set(TINY) == set(SYSTEMS) == set(available_systems())
    assert resolve_names(["all"]) == list(available_systems()) and available_systems()[0] == "hfcn"
    with pytest.raises(HfcnError, match="unknown system 'nope'.*mccnn_spp.*shape_rf.*transfer_softmax"):
        resolve_names(["nope"])


@pytest.mark.parametrize("name", sorted(TINY))
def test_report_shape(name, reports, split, ds):
    r = reports[name]
    m = r["metrics"]
    for key in ("accuracy", "precision", "recall", "f1", "specificity", "auc", "pr_auc", "ci"):
        assert key in m, key
    assert m["auc"] == r["auc"]
    assert set(m["ci"]) >= {"accuracy", "f1", "auc"}
    low, high = m["ci"]["auc"]
    assert low <= r["auc"] <= high
    assert len(r["roc"]["fpr"]) == len(r["roc"]["tpr"]) >= 2
    assert r["majority_baseline"]["majority_class"] in (0, 1)
    assert 0 <= r["calibration"]["brier"] <= 1 and sum(b["n"] for b in r["calibration"]["bins"]) == r["n_samples"]
    assert "case-level split" in r["protocol"]
    # Thresholds come from the training side: out-of-fold training scores or validation cases.
    assert r["threshold_source"].startswith(("training out-of-fold", "validation"))
    assert r["skipped"] == [] and r["n_samples"] == len(split.select(ds)[1])
    assert r["timings"]["total_s"] > 0
    assert r["limitations"] and all(isinstance(x, str) and x for x in r["limitations"])
    assert r["system"]["name"] == name and r["data"]["fingerprint"] == ds.fingerprint
    assert set(r.get("variants") or {}) == set(SYSTEMS[name].variants)


@pytest.mark.parametrize("name", sorted(TINY))
def test_beats_chance_on_phantoms(name, reports):
    # The phantoms carry the TI-RADS cues (shape, margin, echogenicity) every system can see.
    assert reports[name]["auc"] > 0.6


@pytest.mark.parametrize("name", sorted(TINY))
def test_run_folder_holds_verified_fitted_models(name, runs):
    rec = read_fitted(runs[name])
    assert rec["system"] == name and rec["files"]
    for rel, digest in rec["files"].items():
        assert (runs[name] / rel).is_file() and len(digest) == 64
    header = json.loads((runs[name] / "config.json").read_text())
    assert header["format"] == "hfcn-bench/run" and header["version"] == 2 and header["status"] == "finished"
    assert header["system"] == name


@pytest.mark.parametrize("name", sorted(TINY))
def test_eval_reloads_the_models_and_reproduces_the_report(name, runs, reports):
    again = evaluate_run(runs[name])
    first = reports[name]
    assert again["external"] is False
    assert again["auc"] == first["auc"] and again["threshold"] == first["threshold"]
    assert again["metrics"]["ci"] == first["metrics"]["ci"]
    for v in first.get("variants") or {}:
        assert again["variants"][v]["auc"] == first["variants"][v]["auc"]


@pytest.mark.parametrize("name", sorted(TINY))
def test_external_validation(name, runs, reports, external):
    rep = evaluate_run(runs[name], data=external, n_boot=30)
    assert rep["external"] is True and isinstance(rep["metrics"]["auc"], float)
    # the run's own threshold, never re-tuned on the external set
    assert rep["threshold"] == pytest.approx(reports[name]["threshold"])
    assert rep["threshold_source"].startswith("the run's")
    assert 0 < rep["prevalence"]["external"] < 1 and 0 < rep["prevalence"]["training"] < 1
    assert rep["majority_baseline"]["n_positive"] + rep["majority_baseline"]["n_negative"] == rep["n_samples"]
    assert rep["calibration"]["brier"] >= 0 and rep["data"]["root"] == str(external)


@pytest.mark.parametrize("name", sorted(TINY))
def test_predict_an_xml_through_the_training_reader(name, runs, root, ds):
    # one XML gives the ROIs the training reader gave it
    items, errors, _ = predict_inputs(runs[name], [root / "xml" / "3.xml"], explain=False)
    want = [s for s in ds.samples if s.case_id == "3"]
    assert not errors and [(r.sample.key, r.sample.bbox) for _, r in items] == [(s.key, s.bbox) for s in want]
    assert all(0 <= r.prob <= 1 and r.call in ("benign", "malignant") for _, r in items)


def _flip_test_labels(ds, split):
    test = set(split.test)
    return dataclasses.replace(
        ds, samples=[dataclasses.replace(s, label=1 - s.label) if s.case_id in test else s for s in ds.samples]
    )


def _no_clock(obj):
    """``obj`` without wall-clock fields (seconds differ from run to run, nothing else may)."""
    if isinstance(obj, dict):
        return {k: _no_clock(v) for k, v in obj.items() if k != "seconds" and not k.endswith("_s")}
    if isinstance(obj, list):
        return [_no_clock(v) for v in obj]
    return obj


def _same_model(a, b, where):
    """Two fitted scikit-learn objects hold the same state (every array equal, trees too)."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _same_model(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_model(x, y, f"{where}[{i}]")
    elif hasattr(a, "__getstate__") and type(a).__module__.startswith("sklearn"):
        assert type(a) is type(b), where
        _same_model(a.__getstate__(), b.__getstate__(), f"{where}:{type(a).__name__}")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, where


def _tensors(path):
    from hfcn_bench.checkpoint import load_checkpoint

    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("name", sorted(TINY))
def test_test_labels_never_reach_the_training_side(name, runs, ds, split, tmp_path):
    """Flip every test label: everything chosen on the training side (thresholds and the
    predictions they come from, best epochs, weights, trees, the detector's and segmenter's
    checkpoints) must be bitwise the same, while the scores change."""
    flipped = _train(name, _flip_test_labels(ds, split), split, out=tmp_path / "flipped")
    a, b = read_fitted(runs[name]), read_fitted(tmp_path / "flipped")
    assert a["threshold_predictions"] == b["threshold_predictions"]
    assert a["threshold_source"] == b["threshold_source"] and a["val_cases"] == b["val_cases"]
    assert _no_clock(a["training"]) == _no_clock(b["training"])
    assert set(a["files"]) == set(b["files"])
    for rel in a["files"]:
        if rel.endswith(".pt"):
            ta, tb = _tensors(runs[name] / rel), _tensors(tmp_path / "flipped" / rel)
            assert set(ta) == set(tb), rel  # key sets first, then every tensor
            for k in ta:
                assert torch.equal(ta[k], tb[k]), (rel, k)
        else:  # skops (its entry names are object ids): the loaded models, attribute by attribute
            from hfcn_bench.systems.common import load_sklearn

            _same_model(load_sklearn(runs[name] / rel), load_sklearn(tmp_path / "flipped" / rel), rel)
    first = json.loads((runs[name] / "metrics.json").read_text())
    assert flipped["threshold"] == first["threshold"]
    if first["auc"] is not None:
        assert math.isclose(flipped["auc"] + first["auc"], 1.0, abs_tol=1e-9)


def test_a_tampered_skops_file_is_refused_with_its_name(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["shape_rf"], run)
    path = run / "forest.skops"
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    schema = json.loads(entries["schema.json"])
    schema["__module__"], schema["__class__"] = "os", "system"  # a type that would run code
    entries["schema.json"] = json.dumps(schema).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    path.write_bytes(buf.getvalue())
    from hfcn_bench.systems.common import load_sklearn

    with pytest.raises(HfcnError, match=r"forest\.skops: refused to load: the file holds types .*os\.system"):
        load_sklearn(path)
    # through eval the integrity record names the file first
    with pytest.raises(HfcnError, match=r"forest\.skops: model file is damaged"):
        evaluate_run(run)


def _sample(tmp_path, polygon, name="f.png", size=(200, 160), inside=60, outside=140) -> Sample:
    img = Image.new("L", size, outside)
    from PIL import ImageDraw

    ImageDraw.Draw(img).polygon([tuple(p) for p in polygon], fill=inside)
    path = tmp_path / name
    img.save(path)
    xs, ys = zip(*polygon)
    return Sample(
        "c1", 0, path, tuple(map(tuple, polygon)), (min(xs), min(ys), max(xs) + 1, max(ys) + 1), 1, "tirads", size
    )


def _ellipse(cx, cy, a, b, n=90):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [(int(round(cx + a * np.cos(u))), int(round(cy + b * np.sin(u)))) for u in t]


def _star(cx, cy, r_out, r_in, spikes=8):
    pts = []
    for i in range(2 * spikes):
        r = r_out if i % 2 == 0 else r_in
        u = np.pi * i / spikes
        pts.append((int(round(cx + r * np.cos(u))), int(round(cy + r * np.sin(u)))))
    return pts


def test_outline_features_follow_the_tirads_cues(tmp_path):
    f = {n: i for i, n in enumerate(shape_rf.FEATURE_NAMES)}
    wide = shape_rf.outline_features(_sample(tmp_path, _ellipse(100, 80, 50, 25), "w.png"))
    tall = shape_rf.outline_features(_sample(tmp_path, _ellipse(100, 80, 20, 45), "t.png"))
    star = shape_rf.outline_features(_sample(tmp_path, _star(100, 80, 50, 22), "s.png"))
    # Taller-than-wide: height > width in the frame (depth runs downwards).
    assert wide[f["taller_than_wide"]] == 0 and tall[f["taller_than_wide"]] == 1
    assert wide[f["aspect_hw"]] == pytest.approx(51 / 101, rel=0.05)
    assert wide[f["area"]] == pytest.approx(np.pi * 50 * 25, rel=0.03)
    assert wide[f["elongation"]] == pytest.approx(2.0, rel=0.05)
    # A smooth ellipse is convex; a spiculated star is not and has an irregular radius.
    assert wide[f["solidity"]] == pytest.approx(1.0, abs=0.02)
    assert star[f["solidity"]] < 0.8 and star[f["defect_depth_max"]] > 0.3
    circle = shape_rf.outline_features(_sample(tmp_path, _ellipse(100, 80, 35, 35), "c.png"))
    assert circle[f["radial_cv"]] < 0.05 < star[f["radial_cv"]]
    # Roughness (local radial wiggle) separates spicules from mere elongation.
    assert star[f["radial_roughness"]] > 3 * wide[f["radial_roughness"]]
    assert star[f["circularity"]] < wide[f["circularity"]] <= 1.0
    # Hypoechoic nodule (60) in brighter tissue (140): negative contrast, measured means.
    assert wide[f["in_mean"]] == pytest.approx(60, abs=3)
    assert wide[f["ring_mean"]] == pytest.approx(140, abs=3)
    assert wide[f["contrast"]] < -0.5


def test_missing_sklearn_gives_an_install_hint(monkeypatch):
    import builtins

    from hfcn_bench.systems import common

    real = builtins.__import__

    def no_sklearn(name, *a, **kw):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError("No module named 'sklearn'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(HfcnError) as e:
        common.sklearn()
    assert e.value.hint == "pip install scikit-learn"


def test_transfer_finetuning_trains_the_last_blocks_and_thresholds_on_validation(ds, split):
    cfg = {
        "backbone": "efficientnet_b0",
        "weights": None,
        "image_size": 32,
        "finetune_layers": 2,
        "epochs": 1,
        "threads": 1,
    }
    r = _train("transfer_softmax", ds, split, cfg)
    # The fine-tuned trunk has seen every fit case, so the threshold must come from held-out
    # validation cases, not out-of-fold scores over the fit cases.
    assert r["threshold_source"] == "validation"
    assert r["training"]["finetuned_blocks"] == 2 and len(r["training"]["history"]) == 1
    assert r["training"]["val_rois"] > 0
    assert math.isfinite(r["training"]["history"][0]["train_loss"])
    assert r["auc"] is not None


def test_transfer_trunk_loads_local_weights(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch = pytest.importorskip("torch")
    torch.manual_seed(5)
    ref = torchvision.models.efficientnet_b0(weights=None)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    blocks, dim = transfer.build_trunk("efficientnet_b0", weights=str(path), seed=0)
    assert dim == 1280
    assert torch.equal(blocks[0][0].weight, ref.features[0][0].weight)
    assert torch.equal(blocks[-1][0].weight, ref.features[-1][0].weight)
    # A state dict of another network is refused with a message naming the file.
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "bad.pt")
    with pytest.raises(HfcnError, match="bad.pt does not fit torchvision efficientnet_b0"):
        transfer.build_trunk("efficientnet_b0", weights=str(tmp_path / "bad.pt"))
    with pytest.raises(HfcnError, match="not found"):
        transfer.build_trunk("efficientnet_b0", weights=str(tmp_path / "missing.pt"))


def test_transfer_bad_config_is_named():
    sysm = get_system("transfer_svm")
    with pytest.raises(HfcnError, match="backbone must be one of efficientnet_lite0, vgg16, resnet50, efficientnet_b0"):
        sysm.configure("default", {"backbone": "alexnet"})
    with pytest.raises(HfcnError, match="image_size must be >= 32"):
        sysm.configure("default", {"image_size": 16})
    with pytest.raises(HfcnError, match="weights='imagenet' ships for efficientnet_lite0, efficientnet_lite1, "):
        sysm.configure("default", {"backbone": "vgg16"})


def test_transfer_reports_its_trunk(reports):
    # the ImageNet trunk is the study's setting; a random one is labelled as such
    assert "ImageNet EfficientNet-Lite0" in " ".join(reports["transfer_svm"]["limitations"])
    assert "randomly initialised vgg16" in " ".join(reports["transfer_rf"]["limitations"])


@pytest.mark.parametrize("name", ["mccnn_spp", "mccnn_cascade"])
def test_mccnn_reports_name_the_trunk_they_could_not_use(name, reports):
    lim = reports[name]["limitations"]
    assert any(x.startswith("randomly initialised paper trunk (seed 0)") for x in lim)
    assert "trunk paper instead of the published AlexNet" in lim


def test_spatial_pyramid_module_shapes_and_levels():
    torch = pytest.importorskip("torch")
    from hfcn_bench.systems.mccnn import SpatialPyramidModule

    spm = SpatialPyramidModule(96)
    # Three levels (1x1, 3x3, 5x5), each reduced to 96 // 3 channels, same spatial size.
    assert [lvl[0].kernel_size for lvl in spm.levels] == [(1, 1), (3, 3), (5, 5)]
    assert [lvl[2].kernel_size for lvl in spm.levels] == [1, 3, 5]
    assert [lvl[3].out_channels for lvl in spm.levels] == [32, 32, 32]
    assert spm(torch.randn(2, 96, 5, 7)).shape == (2, 96, 5, 7)
    assert SpatialPyramidModule(256).out_channels == 255
    with pytest.raises(HfcnError, match="at least 3 input channels"):
        SpatialPyramidModule(2)


def test_mccnn_alexnet_trunk_runs_at_the_published_layout():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from hfcn_bench.systems.mccnn import MCCNNConfig, build_mccnn

    m = build_mccnn(MCCNNConfig(image_size=64))
    assert m.spm.levels[0][0].in_channels == 256  # AlexNet conv5 width
    assert m(torch.zeros(2, 3, 64, 64)).shape == (2, 2)


def test_mccnn_picks_its_epoch_and_threshold_on_validation(reports):
    r = reports["mccnn_spp"]
    assert r["threshold_source"] == "validation"
    hist = r["training"]["classifier"]["history"]
    assert len(hist) == r["training"]["classifier"]["epochs_run"]
    # the first epoch of the highest validation AUC is kept (ties: the earlier one)
    best = r["training"]["classifier"]["best_epoch"]
    aucs = [h["val_auc"] for h in hist]
    assert aucs[best - 1] == max(aucs) and aucs.index(max(aucs)) == best - 1
    assert any("detector" in x for x in r["limitations"])


def test_mccnn_bad_config_is_named():
    with pytest.raises(HfcnError, match="alexnet trunk needs image_size >= 64"):
        get_system("mccnn_spp").configure("default", {"image_size": 32})
    with pytest.raises(HfcnError, match="trunk must be one of alexnet"):
        get_system("mccnn_spp").configure("default", {"trunk": "lenet"})


def test_bad_dataset_and_progress_callback(ds, split):
    with pytest.raises(HfcnError, match="must be a LoadedDataset"):
        train_run("shape_rf", get_system("shape_rf").configure("smoke"), ds.samples, [split])
    seen = []
    train_run(
        "shape_rf",
        get_system("shape_rf").configure("default", {"n_estimators": 10}),
        ds,
        [split],
        n_boot=10,
        progress=lambda kind, done, total, info: seen.append((kind, info.get("what"), done, total)),
    )
    n_train, n_test = (len(x) for x in split.select(ds))
    # One "load" call per ROI, on each side, ending at done == total.
    assert ("load", "train", n_train, n_train) in seen and ("load", "test", n_test, n_test) in seen


def test_shape_rf_needs_outlines(ds, split):
    # Folder-format images (no mask outline) give polygon=None: the error must say why.
    boxed = dataclasses.replace(
        ds, samples=[dataclasses.replace(s, polygon=None, roi_kind="frame") for s in ds.samples]
    )
    with pytest.raises(HfcnError, match="needs a nodule outline.*have none") as e:
        _train("shape_rf", boxed, split, TINY["shape_rf"])
    assert "DDTI-format" in e.value.hint


def test_outline_outside_the_frame_gives_finite_features(tmp_path):
    # A few DDTI outline points lie outside the 560x360 frame; an outline wholly outside must
    # still give a finite feature row rather than NaNs from empty pixel sets.
    s = _sample(tmp_path, [(10, 10), (30, 10), (30, 30)], "o.png")
    s = dataclasses.replace(s, polygon=((500, 500), (540, 500), (540, 560)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy warns on the mean of an empty set
        f = shape_rf.outline_features(s)
    assert np.isfinite(f).all() and f.shape == (len(shape_rf.FEATURE_NAMES),)
