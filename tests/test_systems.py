"""Comparator systems (hfcn_bench.systems): report shape, better than chance on phantoms,
determinism, training-side thresholds, clear errors. Tiny phantoms and small models keep the
file fast on a loaded 2-core machine."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from PIL import Image

from hfcn_bench.data import load_dataset, split_train_test, write_synthetic_ddti
from hfcn_bench.data.report import DataWarning
from hfcn_bench.data.rois import Sample
from hfcn_bench.errors import HfcnError

pytest.importorskip("sklearn")

from hfcn_bench.systems import SYSTEMS, available_systems, evaluate_system  # noqa: E402
from hfcn_bench.systems import shape_rf, transfer  # noqa: E402


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = write_synthetic_ddti(tmp_path_factory.mktemp("phantoms") / "ddti", n_cases=24, seed=0, difficulty="easy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load_dataset(root)


@pytest.fixture(scope="module")
def split(ds):
    return split_train_test(ds, test_fraction=0.25, seed=0)


# The quick settings of each system, shrunk further for the test run.
# Trunks are randomly initialised (no weights offline); the ones picked here carry enough of
# the phantoms' cues at 32-48 px for each head, and are the fast ones.
TINY = {
    "shape_rf": {"n_estimators": 60},
    "transfer_svm": {"backbone": "vgg16", "image_size": 32, "threads": 1},
    "transfer_rf": {"backbone": "resnet50", "image_size": 48, "rf_trees": 60, "threads": 1},
    "transfer_softmax": {"backbone": "efficientnet_b0", "image_size": 32, "threads": 1},
    "mccnn_spp": {"trunk": "paper", "image_size": 32, "epochs": 4, "threads": 1},
    "mccnn_cascade": {"trunk": "paper", "image_size": 32, "epochs": 4, "threads": 1, "frame_size": (64, 96),
                      "det_epochs": 10},
    "two_stage": {"frame_size": (48, 64), "unet_base": 8, "unet_depth": 3, "seg_epochs": 20, "seg_batch": 4,
                  "seg_lr": 3e-3, "image_size": 32, "epochs": 3, "rf_trees": 30, "threads": 1},
}


@pytest.fixture(scope="module")
def reports(ds, split):
    """One run per system, shared by the shape/AUC tests (each run costs seconds)."""
    return {name: evaluate_system(name, ds, split, config=TINY[name], n_boot=50, seed=0) for name in TINY}


def test_registry_covers_the_tested_systems():
    # A system added to the registry without a tiny test setting would go untested.
    assert set(TINY) == set(SYSTEMS) == set(available_systems())


@pytest.mark.parametrize("name", sorted(TINY))
def test_report_has_the_train_and_evaluate_shape(name, reports, split, ds):
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
    assert "case-level split" in r["protocol"]
    # Thresholds come from the training side: out-of-fold training scores or validation cases.
    assert r["threshold_source"].startswith(("training out-of-fold", "validation"))
    assert r["skipped"] == [] and r["n_samples"] == len(split.select(ds)[1])
    assert r["timings"]["total_s"] > 0
    assert r["limitations"] and all(isinstance(x, str) and x for x in r["limitations"])
    assert r["system"]["name"] == name and r["data"]["fingerprint"] == ds.fingerprint


@pytest.mark.parametrize("name", sorted(TINY))
def test_beats_chance_on_phantoms(name, reports):
    # The phantoms carry the TI-RADS cues (shape, margin, echogenicity) every system can see.
    assert reports[name]["auc"] > 0.6


@pytest.mark.parametrize("name", sorted(TINY))
def test_deterministic_under_a_seed(name, reports, ds, split):
    again = evaluate_system(name, ds, split, config=TINY[name], n_boot=50, seed=0)
    first = reports[name]
    assert again["roc"] == first["roc"]
    assert again["threshold"] == first["threshold"]
    assert again["metrics"]["ci"] == first["metrics"]["ci"]


def test_threshold_never_sees_the_test_labels(ds, split):
    # Flipping every test label must leave the threshold alone (it comes from training-side
    # out-of-fold scores) while the scored metrics change.
    train_s, test_s = split.select(ds)
    flipped = [dataclasses.replace(s, label=1 - s.label) for s in test_s]
    cfg = shape_rf.ShapeRFConfig(n_estimators=30)
    a = shape_rf.run(train_s, test_s, cfg, n_boot=10)
    b = shape_rf.run(train_s, flipped, cfg, n_boot=10)
    assert a["threshold"] == b["threshold"]
    assert math.isclose(a["auc"] + b["auc"], 1.0)


def test_unknown_system_lists_the_known_ones(ds, split):
    with pytest.raises(HfcnError, match="unknown system 'nope'.*mccnn_spp.*shape_rf.*transfer_softmax"):
        evaluate_system("nope", ds, split)


def test_bad_config_is_named(ds, split):
    with pytest.raises(HfcnError, match="n_trees"):
        evaluate_system("shape_rf", ds, split, config={"n_trees": 3})
    with pytest.raises(HfcnError, match="ring"):
        evaluate_system("shape_rf", ds, split, config={"ring": -1})
    with pytest.raises(HfcnError, match="quick"):
        evaluate_system("shape_rf", ds, split, config="fast")


def test_shape_rf_needs_outlines(ds, split):
    # Folder-format images (no mask outline) give polygon=None: the error must say why.
    boxed = dataclasses.replace(ds, samples=[dataclasses.replace(s, polygon=None, roi_kind="frame")
                                             for s in ds.samples])
    with pytest.raises(HfcnError, match="needs a nodule outline.*have none") as e:
        evaluate_system("shape_rf", boxed, split, config=TINY["shape_rf"], n_boot=10)
    assert "DDTI-format" in e.value.hint


def _sample(tmp_path, polygon, name="f.png", size=(200, 160), inside=60, outside=140) -> Sample:
    img = Image.new("L", size, outside)
    from PIL import ImageDraw

    ImageDraw.Draw(img).polygon([tuple(p) for p in polygon], fill=inside)
    path = tmp_path / name
    img.save(path)
    xs, ys = zip(*polygon)
    return Sample("c1", 0, path, tuple(map(tuple, polygon)), (min(xs), min(ys), max(xs) + 1, max(ys) + 1), 1,
                  "tirads", size)


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

    from hfcn_bench.systems import _common

    real = builtins.__import__

    def no_sklearn(name, *a, **kw):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError("No module named 'sklearn'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(HfcnError) as e:
        _common.sklearn()
    assert e.value.hint == "pip install scikit-learn"


def test_transfer_finetuning_trains_the_last_blocks_and_thresholds_on_validation(ds, split):
    cfg = {"backbone": "efficientnet_b0", "image_size": 32, "finetune_layers": 2, "epochs": 1, "threads": 1}
    r = evaluate_system("transfer_softmax", ds, split, config=cfg, n_boot=10)
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


def test_transfer_bad_config_is_named(ds, split):
    with pytest.raises(HfcnError, match="backbone must be one of vgg16, resnet50, efficientnet_b0"):
        evaluate_system("transfer_svm", ds, split, config={"backbone": "alexnet"})
    with pytest.raises(HfcnError, match="image_size must be >= 32"):
        evaluate_system("transfer_rf", ds, split, config={"image_size": 16})


def test_transfer_reports_random_init(reports):
    lim = " ".join(reports["transfer_svm"]["limitations"])
    assert "no ImageNet weights offline" in lim and "randomly initialised" in lim


@pytest.mark.parametrize("name", ["mccnn_spp", "mccnn_cascade"])
def test_mccnn_reports_name_the_trunk_they_could_not_use(name, reports):
    lim = reports[name]["limitations"]
    assert "no ImageNet weights offline: the paper trunk is randomly initialised (seed 0)" in lim
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
    hist = r["training"]["history"]
    assert len(hist) == r["training"]["epochs_run"]
    assert r["training"]["best_val_auc"] == max(h["val_auc"] for h in hist)
    assert any("detector" in x for x in r["limitations"])


def test_mccnn_bad_config_is_named(ds, split):
    with pytest.raises(HfcnError, match="alexnet trunk needs image_size >= 64"):
        evaluate_system("mccnn_spp", ds, split, config={"image_size": 32})
    with pytest.raises(HfcnError, match="trunk must be one of alexnet"):
        evaluate_system("mccnn_spp", ds, split, config={"trunk": "lenet"})


def test_bad_dataset_and_progress_callback(ds, split):
    with pytest.raises(HfcnError, match="must be a LoadedDataset"):
        evaluate_system("shape_rf", ds.samples, split)
    seen = []
    evaluate_system("shape_rf", ds, split, config={"n_estimators": 10}, n_boot=10,
                    progress=lambda kind, done, total, info: seen.append((kind, info.get("what"), done, total)))
    n_train, n_test = (len(x) for x in split.select(ds))
    # One "load" call per ROI, on each side, ending at done == total.
    assert ("load", "train", n_train, n_train) in seen and ("load", "test", n_test, n_test) in seen


def test_outline_outside_the_frame_gives_finite_features(tmp_path):
    # A few DDTI outline points lie outside the 560x360 frame; an outline wholly outside must
    # still give a finite feature row rather than NaNs from empty pixel sets.
    s = _sample(tmp_path, [(10, 10), (30, 10), (30, 30)], "o.png")
    s = dataclasses.replace(s, polygon=((500, 500), (540, 500), (540, 560)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy warns on the mean of an empty set
        f = shape_rf.outline_features(s)
    assert np.isfinite(f).all() and f.shape == (len(shape_rf.FEATURE_NAMES),)
