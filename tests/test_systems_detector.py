"""MC-CNN's stage-1 detector (systems.detector), the box helpers (systems.frames) and the
cascade system: exact box arithmetic, SSD matching and loss, AP on hand-made rankings, and
the cascade end to end on phantoms (detection quality, pairing, the annotated-ROI variant)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hfcn_bench.data import split_train_test
from hfcn_bench.data.report import DataWarning
from hfcn_bench.errors import HfcnError

pytest.importorskip("sklearn")

from hfcn_bench.data import kfold  # noqa: E402
from hfcn_bench.runs import train_run  # noqa: E402
from hfcn_bench.systems import detector as D  # noqa: E402
from hfcn_bench.systems import get_system  # noqa: E402
from hfcn_bench.systems.frames import FrameTensors, box_iou, group_frames, nms, to_frame_box  # noqa: E402


def evaluate_system(name, ds, split, config=None, n_boot=50, seed=0):
    """Train and score ``name`` on one split through the one code path (runs.train_run)."""
    return train_run(name, get_system(name).configure("default", config or {}, seed=seed), ds, [split], n_boot=n_boot)


TINY = {"trunk": "paper", "image_size": 32, "epochs": 3, "threads": 1, "frame_size": (64, 96), "det_epochs": 10}


@pytest.fixture(scope="module")
def ds(easy_phantom_ds):
    return easy_phantom_ds


@pytest.fixture(scope="module")
def split(ds):
    return split_train_test(ds, test_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def cascade(ds, split):
    return evaluate_system("mccnn_cascade", ds, split, config=TINY, n_boot=50, seed=0)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_box_iou_exact():
    a = t([[0, 0, 10, 10], [0, 0, 0, 5]])
    b = t([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    iou = box_iou(a, b)
    assert iou[0].tolist() == pytest.approx([50 / 150, 1.0, 0.0])
    assert iou[1].tolist() == [0.0, 0.0, 0.0]  # an empty box overlaps nothing (no 0/0)


def test_nms_keeps_the_best_of_each_cluster_in_score_order():
    boxes = t([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 1, 10, 11]])
    scores = t([0.8, 0.9, 0.5, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5, max_keep=1).tolist() == [1]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 3, 2]


def test_to_frame_box_maps_back_and_clips():
    # network px = 0.5 * frame px: (10, 20, 30, 41) -> (20, 40, 60, 82); clipped to 100x80
    assert to_frame_box([10, 20, 30, 41], (100, 80), (0.5, 0.5)) == (20, 40, 60, 80)
    assert to_frame_box([-5, -5, -1, -1], (100, 80), (1.0, 1.0)) == (0, 0, 1, 1)


def test_encode_decode_round_trip():
    anchors = t([[10, 10, 30, 20], [0, 0, 8, 8]])
    gt = t([[12, 9, 33, 25], [1, 2, 5, 9]])
    assert torch.allclose(D.decode(D.encode(gt, anchors), anchors), gt, atol=1e-4)


def test_match_makes_every_nodule_keep_its_best_anchor():
    anchors = t([[0, 0, 10, 10], [0, 0, 20, 20], [100, 100, 110, 110], [2, 0, 12, 10]])
    gt = t([[0, 0, 10, 10], [95, 95, 105, 105], [60, 60, 75, 75]])
    labels, idx = D.match(anchors, gt)
    # anchor 0 equals gt 0 (IoU 1); anchor 3 overlaps it at 80/120 = 0.67 -> positive; anchor 1
    # at 0.25 -> negative. gt 1 overlaps anchor 2 at 25/175 = 0.14 only, yet keeps it as a
    # positive. gt 2 overlaps no anchor: it cannot be regressed and must not steal anchor 0.
    assert labels.tolist() == [1, 0, 1, 1]
    assert idx[0] == 0 and idx[3] == 0 and idx[2] == 1
    labels, _ = D.match(anchors, gt[2:])
    assert labels.tolist() == [0, 0, 0, 0]


def test_detection_loss_falls_to_near_zero_when_fitting_one_frame():
    torch.manual_seed(0)
    model = D.NoduleDetector(np.array([[8.0, 8.0], [12.0, 10.0], [16.0, 16.0], [24.0, 20.0]]), width=8)
    x = torch.randn(2, 1, 32, 48)
    targets = [t([[10, 8, 22, 18]]), t([[20, 4, 44, 26]])]
    anchors = model.anchors(32, 48)
    assert anchors.shape == (4 * 6 * 2 + 2 * 3 * 2, 4)  # 2 shapes per cell; stride 8: 4x6 cells, 16: 2x3
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = D.detection_loss(*model(x), anchors, targets)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def test_anchor_shapes_follow_the_box_prior():
    rng = np.random.default_rng(0)
    small = np.c_[np.zeros(50), np.zeros(50), 10 + rng.normal(0, 0.3, 50), 6 + rng.normal(0, 0.3, 50)]
    big = np.c_[np.zeros(50), np.zeros(50), 40 + rng.normal(0, 0.3, 50), 44 + rng.normal(0, 0.3, 50)]
    shapes = D.anchor_shapes(np.r_[small, big], 2, seed=0)
    assert shapes[0] == pytest.approx([10, 6], rel=0.05) and shapes[1] == pytest.approx([40, 44], rel=0.05)
    assert (D.anchor_shapes(np.r_[small, big], 4, seed=1) == D.anchor_shapes(np.r_[small, big], 4, seed=1)).all()
    with pytest.raises(HfcnError, match="no nodule box"):
        D.anchor_shapes(np.zeros((0, 4)), 2)


def test_average_precision_on_hand_made_rankings():
    gts = [t([[0, 0, 10, 10]]), t([[0, 0, 10, 10]])]
    hit, miss = t([[0, 0, 10, 10]]), t([[50, 50, 60, 60]])
    perfect = [(hit, t([0.9])), (hit, t([0.8]))]
    assert D.average_precision(perfect, gts) == 1.0
    # a false positive ranked first: precision 0, 1/2, 2/3 at recalls 0, 1/2, 1 -> AP = 2/3
    ranked = [(torch.cat([miss, hit]), t([0.95, 0.9])), (hit, t([0.8]))]
    assert D.average_precision(ranked, gts) == pytest.approx(2 / 3)
    # a duplicate of a found nodule is a false positive, not a second hit
    dup = [(torch.cat([hit, hit]), t([0.9, 0.85])), (miss, t([0.8]))]
    assert D.average_precision(dup, gts) == pytest.approx(0.5)
    q = D.detection_quality(ranked, gts)
    assert q["recall50"] == 1.0 and q["top1_hit"] == 0.5 and q["nodules"] == 2


def test_cascade_detects_and_scores_both_ways(cascade, split, ds):
    det = cascade["detection"]
    n_test = len(split.select(ds)[1])
    # the phantoms' nodules are easy to find; a detector that learnt nothing scores near 0
    assert det["ap50"] > 0.5 and det["recall50"] > 0.6 and det["nodules"] == n_test
    assert det["paired_hit50"] + det["paired_missed"] <= n_test
    assert cascade["n_samples"] == n_test
    ann = cascade["variants"]["annotated_roi"]
    assert ann["n_samples"] == n_test and ann["auc"] > 0.6 and "annotated" in ann["description"]
    assert cascade["threshold"] == ann["threshold"]  # one classifier, one validation threshold
    hist = cascade["training"]["detector"]["history"]
    assert cascade["training"]["detector"]["best_val_ap50"] == max(h["val_ap50"] for h in hist)
    assert len(cascade["training"]["detector"]["anchors_wh"]) == 6


def test_cascade_refuses_full_frame_rois(ds, split):
    boxed = dataclasses.replace(
        ds, samples=[dataclasses.replace(s, polygon=None, roi_kind="full-frame") for s in ds.samples]
    )
    with pytest.raises(HfcnError, match="has no nodule box") as e:
        evaluate_system("mccnn_cascade", boxed, split, config=TINY, n_boot=10)
    assert "DDTI-format" in e.value.hint


def test_cascade_bad_config_is_named(ds, split):
    with pytest.raises(HfcnError, match="frame_size"):
        evaluate_system("mccnn_cascade", ds, split, config={**TINY, "frame_size": (16, 96)})
    with pytest.raises(HfcnError, match="nms_iou"):
        evaluate_system("mccnn_cascade", ds, split, config={**TINY, "nms_iou": 1.5})


def test_frame_tensors_skip_an_unreadable_frame_with_its_file_name(ds, tmp_path):
    frames = group_frames(ds.samples[:6])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    frames[0] = dataclasses.replace(frames[0], image_path=bad)
    skipped: list[str] = []
    with pytest.warns(DataWarning, match="broken.jpg"):
        data = FrameTensors(frames, (32, 48), skipped, masks=True)
    assert len(data) == len(frames) - 1 and len(skipped) == len(frames[0].samples)
    assert data.images(range(len(data))).shape == (len(data), 1, 32, 48)
    m = data.mask(0)
    assert m.shape == (1, 32, 48) and 0 < m.sum() < 32 * 48
    # a flipped frame flips its boxes with it
    b, bf = data.boxes(0), data.boxes(0, flip=True)
    assert torch.allclose(bf[:, 0], 48 - b[:, 2]) and torch.equal(bf[:, 1::2], b[:, 1::2])


def test_cross_validation_pools_every_case_once_with_variants(ds):
    cfg = {**TINY, "epochs": 1, "det_epochs": 2}
    r = train_run(
        "mccnn_cascade", get_system("mccnn_cascade").configure("default", cfg), ds, kfold(ds, k=2, seed=0), n_boot=20
    )
    assert r["kind"] == "kfold" and r["k"] == 2 and r["n_samples"] == len(ds)
    assert "2-fold case-level CV" in r["protocol"] and "validation" in r["protocol"]
    v = r["variants"]["annotated_roi"]
    assert v["n_samples"] == len(ds) and v["k"] == 2
    assert r["detection"]["frames"] == len(group_frames(ds.samples))
    assert len(r["detection"]["per_fold"]) == 2 and 0 <= r["detection"]["ap50"] <= 1
    assert [f["fold"] for f in r["folds"]] == [0, 1]
    assert all("train_samples" not in f and "_predictions" not in f for f in r["folds"])
    # every stage's time is summed over the folds, not only the classifier's
    t = r["timings"]
    assert t["det_train_s"] > 0 and t["predict_s"] > 0 and t["train_s"] > 0
    assert t["total_s"] >= t["det_train_s"] + t["train_s"] + t["predict_s"] - 1e-6 and t["threads"] == 1
    import json

    json.dumps(r)  # the pooled report is plain data


def test_augment_keeps_every_nodule_at_least_half_visible_and_moves_boxes_with_pixels():
    img = torch.zeros(1, 64, 96)
    img[:, 20:40, 30:60] = 1.0  # a bright nodule exactly at its box
    box = t([[30, 20, 60, 40]])
    zoomed = 0
    for seed in range(40):
        out, b = D.augment(img, box, np.random.default_rng(seed))
        assert out.shape == img.shape and b.shape == (1, 4)
        x0, y0, x1, y1 = b[0].tolist()
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 64
        if (x1 - x0) > 30.5:  # a zoom-in happened: the nodule grew with the frame
            zoomed += 1
            # the box still covers the bright pixels: its inside is brighter than its outside
            inside = out[0, int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2].mean()
            mask = torch.ones_like(out[0], dtype=torch.bool)
            mask[int(y0) - 2 : int(y1) + 2, int(x0) - 2 : int(x1) + 2] = False
            assert inside > out[0][mask].mean() + 0.5
    assert 5 <= zoomed <= 35
