"""The two-stage comparator (hfcn_bench.systems.two_stage, .segmentation): U-Net shapes, mask
metrics and regions on hand-made masks, the outline round trip, the pairing rule, the loss, and
tiny end-to-end runs on phantoms (report shape, the segmenter learns, determinism, bad data;
the TransUNet segmenter and its weights). Small frames and few epochs keep the file fast on a
loaded 2-core machine."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from PIL import Image

from hfcn_bench.data import load_dataset, split_train_test
from hfcn_bench.data.report import DataWarning
from hfcn_bench.data.rois import Sample, polygon_bbox
from hfcn_bench.errors import HfcnError

pytest.importorskip("sklearn")
pytest.importorskip("torchvision")
torch = pytest.importorskip("torch")

from hfcn_bench.runs import train_run  # noqa: E402
from hfcn_bench.systems import get_system  # noqa: E402
from hfcn_bench.systems import segmentation as SEG  # noqa: E402
from hfcn_bench.systems.frames import FrameTensors, group_frames  # noqa: E402

# 48x64 frames, a 3-level U-Net of width 8 and 20 epochs: the phantoms' nodules are learnt
# (test Dice ~0.85) in a few seconds; a 32 px ResNet-18 for 3 epochs separates the classes.
TINY = {
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
}


def evaluate_system(name, ds, split, config=None, n_boot=50, seed=0):
    """Train and score ``name`` on one split through the one code path (runs.train_run)."""
    return train_run(name, get_system(name).configure("default", config or {}, seed=seed), ds, [split], n_boot=n_boot)


@pytest.fixture(autouse=True)
def one_thread():
    """The tests that call the segmenter directly run on one thread, as the tiny config does
    (two threads on a loaded 2-core machine are several times slower, not faster)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def phantom_root(easy_phantoms):
    return easy_phantoms


def _load(root):
    return load_dataset(root, warn=False)


@pytest.fixture(scope="module")
def ds(phantom_root):
    return _load(phantom_root)


@pytest.fixture(scope="module")
def split(ds):
    return split_train_test(ds, test_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def report(ds, split):
    return evaluate_system("two_stage", ds, split, config=TINY, n_boot=50, seed=0)


# ---------------------------------------------------------------------------------------------
# end to end on phantoms


def test_report_shape(report, ds, split):
    _, test = split.select(ds)
    n_frames = len(group_frames(test))
    for rep in (report, *report["variants"].values()):
        for key in ("accuracy", "precision", "recall", "f1", "specificity", "auc", "pr_auc", "ci"):
            assert key in rep["metrics"], key
        low, high = rep["metrics"]["ci"]["auc"]
        assert low <= rep["auc"] <= high
        assert rep["n_samples"] == len(test)
    assert set(report["variants"]) == {"annotated_roi", "shape_rf_predicted"}
    assert all(v["description"] for v in report["variants"].values())
    assert report["threshold_source"] == "validation"
    assert report["variants"]["annotated_roi"]["threshold_source"] == "validation"
    assert report["variants"]["shape_rf_predicted"]["threshold_source"].startswith("training out-of-fold")
    seg = report["segmentation"]
    assert seg["frames"] == n_frames and seg["salvaged_frames_excluded"] == 0
    assert 0.0 <= seg["iou"] <= seg["dice"] <= 1.0
    assert seg["dice_ci"][0] <= seg["dice"] <= seg["dice_ci"][1] and seg["iou_ci"][0] <= seg["iou"] <= seg["iou_ci"][1]
    assert report["pairing"]["nodules"] == len(test) and report["pairing"]["frames"] == n_frames
    assert 0 <= report["pairing"]["missed"] <= len(test)
    assert 0 <= report["pairing"]["empty_mask_fallbacks"] <= len(test)
    t = report["timings"]
    assert t["seg_train_s"] > 0 and t["train_s"] > 0 and t["threads"] == 1 and t["device"] == "cpu"
    tr = report["training"]
    assert tr["best_val_auc"] == max(h["val_auc"] for h in tr["history"])
    assert tr["history"][tr["best_epoch"] - 1]["val_auc"] == tr["best_val_auc"]
    assert tr["segmenter"]["best_val_dice"] == max(h["val_dice"] for h in tr["segmenter"]["history"])
    assert len(tr["segmenter"]["history"]) == TINY["seg_epochs"]
    assert report["skipped"] == []
    lim = " ".join(report["limitations"])
    assert "TransUNet" in lim and "randomly initialised" in lim and "pairing" in lim
    assert report["system_config"]["frame_size"] == [48, 64]
    assert report["system"]["name"] == "two_stage"


def test_segmenter_learns_and_the_cascade_classifies(report):
    # An empty prediction scores Dice 0 (every phantom frame has a nodule); predicting the
    # whole frame scores ~0.07 (nodules cover ~4 % of it). A learnt U-Net gets ~0.85 here.
    seg = report["segmentation"]
    assert seg["dice"] > 0.6 and seg["iou"] > 0.45 and seg["empty_predictions"] == 0
    assert report["pairing"]["missed"] == 0
    assert report["auc"] > 0.6
    assert report["variants"]["annotated_roi"]["auc"] > 0.6


def test_outline_less_samples_are_refused(ds, split):
    boxed = dataclasses.replace(
        ds, samples=[dataclasses.replace(s, polygon=None, roi_kind="frame") for s in ds.samples]
    )
    with pytest.raises(HfcnError, match="has no nodule outline; the segmentation stage") as e:
        evaluate_system("two_stage", boxed, split, config=TINY, n_boot=10)
    assert "DDTI-format" in e.value.hint
    full = dataclasses.replace(ds, samples=[dataclasses.replace(s, roi_kind="full-frame") for s in ds.samples])
    with pytest.raises(HfcnError, match="has no nodule outline; the segmentation stage"):
        evaluate_system("two_stage", full, split, config=TINY, n_boot=10)


@pytest.mark.parametrize(
    "over, msg",
    [
        ({"frame_size": (8, 64)}, "frame_size sides must be >= 16"),
        ({"frame_size": (32, 64), "unet_depth": 6}, "frame_size sides must be >= 64 for a depth-6 U-Net"),
        ({"frame_size": "48x64"}, r"frame_size expects two integers \(e.g. 96,144\), got '48x64'"),
        ({"image_size": 16}, "image_size must be >= 32"),
        ({"seg_batch": 1}, "seg_batch >= 2"),
        ({"roi_margin": -0.1}, "roi_margin must be >= 0"),
        ({"unet_layers": 3}, "unknown option 'unet_layers' for TwoStageConfig"),
        ({"segmenter": "segformer"}, "segmenter must be one of unet, transunet, transunet-small, got 'segformer'"),
        (
            {"segmenter": "transunet-small", "frame_size": (8, 64)},
            "sides must be >= 16 for the transunet-small segmenter",
        ),
    ],
)
def test_bad_config_is_named(over, msg):
    with pytest.raises(HfcnError, match=msg):
        get_system("two_stage").configure("default", over)


def test_transunet_small_segments_and_the_report_names_it(ds, split):
    # 10 epochs of the reduced TransUNet at 48x64 (a 3x4 token grid): it learns the phantoms'
    # nodules (test Dice ~0.6 here; an empty prediction scores 0, the whole frame ~0.07).
    cfg = {**TINY, "segmenter": "transunet-small", "seg_lr": 3e-4, "seg_epochs": 10}
    r = evaluate_system("two_stage", ds, split, config=cfg, n_boot=20)
    seg = r["segmentation"]
    assert seg["segmenter"] == "transunet-small"
    assert seg["dice"] > 0.45 and seg["iou"] > 0.3 and seg["empty_predictions"] == 0
    tr = r["training"]["segmenter"]
    assert tr["network"] == "transunet-small" and len(tr["history"]) == 10
    from hfcn_bench.models import TransUNet

    assert tr["parameters"] == sum(p.numel() for p in TransUNet("transunet-small", img_size=(48, 64)).parameters())
    assert r["system_config"]["segmenter"] == "transunet-small"
    lim = " ".join(r["limitations"])
    assert "segmenter: transunet-small, a reduced TransUNet" in lim and "at 48x64" in lim
    assert "randomly initialised TransUNet (transunet-small) and ResNet-18" in lim
    assert "ImageNet-21k" in lim


def test_segmenter_weights_load_and_a_misfit_stops_before_training(ds, split, tmp_path):
    sysm = get_system("two_stage")
    torch.manual_seed(5)
    for name in ("unet", "transunet-small"):
        src = SEG.build_segmenter(sysm.configure("default", {**TINY, "segmenter": name}))
        path = tmp_path / f"{name}.pt"
        torch.save(src.state_dict(), path)
        cfg = sysm.configure("default", {**TINY, "segmenter": name, "seg_weights": str(path)})
        got = SEG.build_segmenter(cfg).state_dict()
        assert all(torch.equal(v, got[k]) for k, v in src.state_dict().items())
        fresh = SEG.build_segmenter(cfg, weights=False).state_dict()  # a checkpoint replaces these
        assert any(not torch.equal(v, fresh[k]) for k, v in src.state_dict().items())
        lim = " ".join(sysm.limitations(cfg))
        assert f"weights from {path}" in lim
    # U-Net weights for a TransUNet segmenter: one error naming the file, before any epoch runs
    epochs = []
    bad = get_system("two_stage").configure(
        "default", {**TINY, "segmenter": "transunet-small", "seg_weights": str(tmp_path / "unet.pt")}
    )
    with pytest.raises(HfcnError, match=r"unet\.pt does not fit TransUNet transunet-small: .* are missing"):
        train_run("two_stage", bad, ds, [split], n_boot=10, progress=lambda *a: epochs.append(a))
    assert not [e for e in epochs if e[0] in ("seg_epoch", "epoch")]
    # the classifier's --weights are checked up front too, not after the segmenter trained
    clf = get_system("two_stage").configure("default", {**TINY, "weights": str(tmp_path / "unet.pt")})
    with pytest.raises(HfcnError, match=r"unet\.pt does not fit backbone resnet18"):
        train_run("two_stage", clf, ds, [split], n_boot=10, progress=lambda *a: epochs.append(a))
    assert not [e for e in epochs if e[0] in ("seg_epoch", "epoch")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the no-GPU refusal cannot be exercised")
def test_a_cuda_segmenter_without_a_gpu_is_refused_before_training(ds, split):
    cfg = get_system("two_stage").configure("default", {**TINY, "segmenter": "transunet-small", "device": "cuda"})
    assert get_system("two_stage").configure("default").device == "cpu"
    epochs = []
    with pytest.raises(HfcnError, match="device 'cuda' requested but torch sees no CUDA GPU"):
        train_run("two_stage", cfg, ds, [split], n_boot=10, progress=lambda *a: epochs.append(a))
    assert not [e for e in epochs if e[0] in ("seg_epoch", "epoch")]


@pytest.mark.cuda
def test_transunet_segmenter_trains_and_predicts_on_cuda(ds, split):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    cfg = {**TINY, "segmenter": "transunet-small", "seg_lr": 3e-4, "seg_epochs": 10, "device": "cuda"}
    r = evaluate_system("two_stage", ds, split, config=cfg, n_boot=20)
    assert r["timings"]["seg_device"].startswith("cuda")
    assert r["segmentation"]["segmenter"] == "transunet-small" and r["segmentation"]["dice"] > 0.45


def test_segmentation_loss_is_cross_entropy_plus_dice():
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2, :2] = 1  # 4 of 16 pixels
    target[1, 0, 1:3, 1:3] = 1
    zeros = torch.zeros(2, 1, 4, 4)  # p = 0.5 everywhere: CE = ln 2, Dice = (2*2 + 1) / (8 + 4 + 1)
    assert float(SEG.segmentation_loss(zeros, target)) == pytest.approx(np.log(2) + 1 - 5 / 13, rel=1e-6)
    perfect = 20 * (2 * target - 1)  # confident and right: both terms ~0
    assert float(SEG.segmentation_loss(perfect, target)) < 1e-6
    inverted = -perfect  # confident and wrong: CE ~20; Dice (0 + 1) / (12 + 4 + 1) of the smoothing alone
    assert float(SEG.segmentation_loss(inverted, target)) == pytest.approx(20 + 1 - 1 / 17, abs=1e-4)


def test_folds_keep_the_segmenter_name_they_share():
    from hfcn_bench.runs.training import pool_summary

    same = pool_summary(
        [
            {"segmenter": "transunet-small", "frames": 2, "dice": 0.5},
            {"segmenter": "transunet-small", "frames": 6, "dice": 0.7},
        ]
    )
    assert same["segmenter"] == "transunet-small" and same["frames"] == 8 and same["dice"] == pytest.approx(0.65)
    mixed = pool_summary([{"segmenter": "unet", "frames": 2}, {"segmenter": "transunet", "frames": 2}])
    assert "segmenter" not in mixed and [d["segmenter"] for d in mixed["per_fold"]] == ["unet", "transunet"]


def test_config_takes_a_json_frame_size():
    sysm = get_system("two_stage")
    assert sysm.configure("default", {"frame_size": [48, 64]}).frame_size == (48, 64)
    assert sysm.configure("default", {"frame_size": "48,64"}).frame_size == (48, 64)
    assert sysm.configure("quick").frame_size == (96, 144)


def test_unreadable_frames_skip_their_nodules(tmp_path, phantom_root):
    root = tmp_path / "ddti"
    shutil.copytree(phantom_root, root)
    ds = _load(root)  # loaded (and verified) before the damage, as a file may rot mid-study
    split = split_train_test(ds, test_fraction=0.25, seed=0)
    train, test = split.select(ds)
    bad_test, bad_train = test[0].image_path, train[-1].image_path
    for p in (bad_test, bad_train):
        p.write_bytes(b"this is not a JPEG" * 8)
    n_bad_test = sum(s.image_path == bad_test for s in test)
    n_bad_train = sum(s.image_path == bad_train for s in train)
    cfg = get_system("two_stage").configure("default", {**TINY, "seg_epochs": 2, "epochs": 1})
    with pytest.warns(DataWarning) as rec:
        r = train_run("two_stage", cfg, ds, [split], n_boot=10)
    texts = [str(w.message) for w in rec if issubclass(w.category, DataWarning)]
    assert any(str(bad_test) in t for t in texts) and any(str(bad_train) in t for t in texts)
    assert len(r["skipped"]) == n_bad_test + n_bad_train  # each lost nodule once, not once per stage
    assert any(test[0].key in m for m in r["skipped"])
    assert r["n_samples"] == len(test) - n_bad_test == r["pairing"]["nodules"]
    assert r["variants"]["annotated_roi"]["n_samples"] == r["n_samples"]
    assert r["variants"]["shape_rf_predicted"]["n_samples"] == r["n_samples"]


# ---------------------------------------------------------------------------------------------
# the segmenter


def test_unet_keeps_any_frame_size():
    torch.manual_seed(0)
    net = SEG.UNet(1, base=4, depth=3)
    for h, w in ((48, 64), (37, 53), (16, 16)):
        x = torch.randn(2, 1, h, w, requires_grad=True)
        y = net(x)
        assert y.shape == (2, 1, h, w)
        y.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    assert SEG.UNet(1, base=4, depth=4)(torch.zeros(1, 1, 96, 144)).shape == (1, 1, 96, 144)
    assert len(net.down) == 4 and net.down[-1][0].out_channels == 32  # widths 4, 8, 16, 32
    with pytest.raises(HfcnError):
        SEG.UNet(1, base=4, depth=0)


def test_segmenter_is_deterministic_under_a_seed(ds, split):
    train, _ = split.select(ds)
    frames = group_frames(train, need_outline=True)
    fit = FrameTensors(frames[:8], (48, 64), [], masks=True)
    val = FrameTensors(frames[8:12], (48, 64), [], masks=True)
    cfg = get_system("two_stage").configure("default", {**TINY, "seg_epochs": 2})
    a = SEG.fit_segmenter(fit, val, cfg)
    b = SEG.fit_segmenter(fit, val, cfg)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history) and a.best_epoch == b.best_epoch
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    model, history, best_epoch, best_dice = SEG.train_segmenter(fit, val, dataclasses.replace(cfg, seed=1))
    assert strip(history) != strip(a.history) and best_dice == max(h["val_dice"] for h in history)
    assert 1 <= best_epoch <= 2 and not model.training


def test_dice_iou_on_hand_made_masks():
    t = torch.zeros(3, 1, 6, 6)
    p = torch.zeros(3, 1, 6, 6)
    t[0, 0, 0:2, 0:4] = 1  # 8 px
    p[0, 0, 0:2, 2:6] = 0.9  # 8 px, 4 shared
    p[0, 0, 5, 5] = 0.4  # below the threshold: not predicted
    t[1, 0, 2:4, 2:4] = 1  # a nodule, nothing predicted
    dice, iou = SEG.dice_iou(p, t)  # frame 2: both empty
    assert dice.tolist() == [0.5, 0.0, 1.0]
    assert iou.tolist() == pytest.approx([4 / 12, 0.0, 1.0])
    d, i = SEG.dice_iou(p[0, 0], t[0, 0], thr=0.3)  # [H, W] works; 0.4 now counts
    assert d.tolist() == pytest.approx([8 / 17]) and i.tolist() == pytest.approx([4 / 13])
    s = SEG.segmentation_summary(p, t)
    assert s["frames"] == 3 and s["empty_predictions"] == 2
    assert s["dice"] == pytest.approx(0.5) and s["dice_median"] == 0.5
    assert s["iou"] == pytest.approx((4 / 12 + 1) / 3)
    assert "dice_ci" not in s
    # case-bootstrap intervals of the means: frames of one case are drawn together
    one = SEG.segmentation_summary(p, t, case_ids=["a", "a", "a"])
    assert one["dice_ci"] == pytest.approx([0.5, 0.5]) and one["iou_ci"] == pytest.approx([s["iou"]] * 2)
    three = SEG.segmentation_summary(p, t, case_ids=["a", "b", "c"], n_boot=500)
    low, high = three["dice_ci"]
    assert 0.0 <= low < 0.5 < high <= 1.0 and three["dice"] == s["dice"]
    assert three == SEG.segmentation_summary(p, t, case_ids=["a", "b", "c"], n_boot=500)  # seeded
    with pytest.raises(HfcnError, match="differ in shape"):
        SEG.dice_iou(p, t[:2])


def test_mask_components_boxes_and_areas():
    m = np.zeros((10, 12), dtype=bool)
    m[1:4, 2:5] = True  # 3x3 block ...
    m[4, 5] = True  # ... with a diagonal neighbour: one component (8-connected)
    m[5:9, 8] = True  # an L: a column ...
    m[8, 6:10] = True  # ... and a row
    comps = SEG.mask_components(m)
    assert [c[0] for c in comps] == [(2, 1, 6, 5), (6, 5, 10, 9)]
    assert [c[1] for c in comps] == [10, 7]
    assert [int(c[2].sum()) for c in comps] == [10, 7]
    assert np.array_equal(comps[0][2] | comps[1][2], m) and not (comps[0][2] & comps[1][2]).any()
    assert SEG.mask_components(np.zeros((4, 4), dtype=bool)) == []


def _frame(tmp_path, polygon, size=(96, 64)) -> Sample:
    path = tmp_path / "frame.png"
    Image.new("L", size, 40).save(path)
    return Sample("c1", 0, path, tuple(polygon), polygon_bbox(polygon), 1, "tirads", size)


@pytest.mark.parametrize("net_size", [(64, 96), (24, 40)])
def test_mask_outline_round_trip(tmp_path, net_size):
    # A rectangle rasterised as FrameTensors does, then outlined: its box comes back exactly
    # at scale 1 and within one network pixel (rounded up to frame pixels) when downscaled.
    rect = [(20, 10), (60, 10), (60, 40), (20, 40)]
    ft = FrameTensors([group_frames([_frame(tmp_path, rect)])[0]], net_size, [], masks=True)
    ((box, area, comp),) = SEG.mask_components(ft.mask(0)[0].numpy() > 0.5)
    pts = SEG.mask_outline(comp, ft.scale(0))
    tol = int(np.ceil(1 / min(ft.scale(0))))
    got, want = polygon_bbox(pts), polygon_bbox(rect)
    if net_size == (64, 96):
        assert got == want and set(rect) <= set(pts)
    else:
        assert tol > 1 and all(abs(a - b) <= tol for a, b in zip(got, want)), (got, want)
    with pytest.raises(HfcnError, match="non-empty"):
        SEG.mask_outline(np.zeros((4, 4), dtype=bool), (1.0, 1.0))


def test_mask_outline_takes_the_outer_boundary_and_survives_one_pixel():
    m = np.zeros((20, 20), dtype=bool)
    m[3:15, 3:15] = True
    m[7:10, 7:10] = False  # a hole: its boundary is the shorter line
    pts = SEG.mask_outline(m, (1.0, 1.0))
    assert polygon_bbox(pts) == (3, 3, 15, 15)
    one = np.zeros((8, 8), dtype=bool)
    one[2, 5] = True
    # one network pixel at scale 1/4 covers frame pixels 20..23 x 8..11
    assert polygon_bbox(SEG.mask_outline(one, (0.25, 0.25))) == (20, 8, 24, 12)


def test_pairing_rule():
    prob = torch.full((1, 20, 40), 0.1)
    prob[0, 2:8, 2:10] = 0.9  # left blob, 48 px
    prob[0, 10:18, 25:38] = 0.8  # right blob, 104 px (the largest)
    boxes = torch.tensor(
        [
            [0.0, 0.0, 9.0, 9.0],  # overlaps the left blob
            [24.0, 9.0, 39.0, 19.0],  # overlaps the right blob
            [12.0, 0.0, 20.0, 6.0],
        ]
    )  # overlaps neither: missed -> largest
    counts = SEG.Pairing()
    regions = SEG.pair_regions(prob, boxes, (1.0, 1.0), counts)
    assert [r.box_net for r in regions] == [(2, 2, 10, 8), (25, 10, 38, 18), (25, 10, 38, 18)]
    assert [r.missed for r in regions] == [False, False, True]
    assert polygon_bbox(regions[0].outline) == (2, 2, 10, 8)
    assert counts.as_dict()["nodules"] == 3 and counts.missed == 1 and counts.empty_mask_fallbacks == 0
    # Nothing reaches 0.5: the threshold drops to half the maximum, and the fallback is counted.
    faint = torch.full((1, 20, 40), 0.02)
    faint[0, 4:9, 30:36] = 0.3
    (r,) = SEG.pair_regions(faint, boxes[:1], (1.0, 1.0), counts)
    assert r.fallback and r.missed and r.box_net == (30, 4, 36, 9)
    assert counts.empty_mask_fallbacks == 1 and counts.nodules == 4 and counts.frames == 2
