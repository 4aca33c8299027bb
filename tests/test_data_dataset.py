"""ROI geometry, crop + resize (squash and letterbox), the torch Dataset, and the folder format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hfcn_bench.data import RoiDataset, Sample, detect_format, load_dataset, split_train_test, write_synthetic_ddti
from hfcn_bench.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from hfcn_bench.data.rois import crop_roi, expand_box, is_dual_view, pane_of, polygon_bbox
from hfcn_bench.errors import HfcnError

# ---------------------------------------------------------------------------------------------
# Geometry.


def test_polygon_bbox_is_exclusive():
    assert polygon_bbox([(5, 7), (9, 3), (6, 10)]) == (5, 3, 10, 11)
    assert polygon_bbox([(5, 7)]) == (5, 7, 6, 8)
    with pytest.raises(ValueError):
        polygon_bbox([])


def test_expand_box_margin_and_clipping():
    assert expand_box((100, 100, 200, 150), 0.0, (560, 360)) == (100, 100, 200, 150)
    assert expand_box((100, 100, 200, 150), 0.2, (560, 360)) == (80, 90, 220, 160)
    assert expand_box((0, 0, 50, 50), 0.5, (60, 40)) == (0, 0, 60, 40)
    # Points outside the frame (a few DDTI outlines run past the edge) still give a valid box.
    assert expand_box((-20, 350, 10, 380), 0.0, (560, 360)) == (0, 350, 10, 360)
    assert expand_box((600, 10, 620, 20), 0.0, (560, 360)) == (559, 10, 560, 20)
    with pytest.raises(ValueError):
        expand_box((0, 0, 1, 1), -0.1, (10, 10))


def test_dual_view_panes():
    assert pane_of((40, 10, 200, 100), 560) == "left" and pane_of((300, 10, 520, 100), 560) == "right"
    assert pane_of((250, 10, 320, 100), 560) == "right"  # centre 285 decides, not the spill
    assert is_dual_view([(40, 10, 200, 100), (300, 10, 520, 100)], 560)
    assert not is_dual_view([(40, 10, 200, 100), (60, 120, 220, 200)], 560)
    assert not is_dual_view([(40, 10, 200, 100)], 560)


def _frame_with_bright_box(box, size=(560, 360)) -> Image.Image:
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    return Image.fromarray(arr)


def test_crop_squash_takes_exactly_the_box():
    box = (100, 60, 300, 160)  # 200 x 100
    roi = np.asarray(crop_roi(_frame_with_bright_box(box), box, size=224))
    assert roi.shape == (224, 224, 3) and roi.min() == 255
    bigger = np.asarray(crop_roi(_frame_with_bright_box(box), (90, 50, 310, 170), size=224))
    assert bigger[0].max() == 0 and bigger[112, 112].min() == 255


def test_crop_letterbox_keeps_aspect_ratio():
    box = (100, 60, 300, 160)  # 2:1 -> 224 x 112 of content, bars of 56 rows above and below
    roi = np.asarray(crop_roi(_frame_with_bright_box(box), box, size=224, letterbox=True))
    assert roi.shape == (224, 224, 3)
    assert roi[:55].max() == 0 and roi[169:].max() == 0
    assert roi[57:167].min() == 255
    tall = np.asarray(
        crop_roi(_frame_with_bright_box((10, 10, 60, 210)), (10, 10, 60, 210), size=(64, 64), letterbox=True)
    )
    cols = np.nonzero(tall[32, :, 0] > 128)[0]
    assert 14 <= len(cols) <= 18 and abs(cols.mean() - 31.5) < 1.5  # 1:4 -> 16 px wide, centred


def test_crop_rejects_boxes_outside_the_image():
    img = _frame_with_bright_box((0, 0, 10, 10), size=(50, 40))
    for bad in [(0, 0, 51, 10), (-1, 0, 10, 10), (10, 10, 10, 20), (0, 0, 10, 41)]:
        with pytest.raises(ValueError, match="not inside"):
            crop_roi(img, bad)


# ---------------------------------------------------------------------------------------------
# RoiDataset.


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = write_synthetic_ddti(tmp_path_factory.mktemp("rois") / "ds", n_cases=12, seed=5)
    return load_dataset(root, warn=False)


def test_items_are_tensors_labels_and_indices(synth):
    ds = RoiDataset(synth, size=64)
    assert len(ds) == len(synth.samples) and ds.label_rule == "tirads"
    x, y, i = ds[3]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y == synth.samples[3].label and i == 3 and ds.labels == synth.labels
    # Grey ultrasound in RGB: the three channels are (almost) equal.
    assert float((x[0] - x[1]).abs().max()) < 0.05
    assert torch.equal(ds[-1][0], ds[len(ds) - 1][0])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_roi_is_the_nodule_box(tmp_path):
    box = (200, 100, 260, 180)
    _frame_with_bright_box(box).save(tmp_path / "f.png")
    s = Sample("1", 1, tmp_path / "f.png", ((200, 100), (259, 100), (259, 179)), box, 1, "tirads", (560, 360))
    x, y, _ = RoiDataset([s], size=32)[0]
    assert float(x.min()) == 1.0 and y == 1
    lb, _, _ = RoiDataset([s], size=32, letterbox=True)[0]
    assert float(lb[:, :, 0].max()) == 0.0 and float(lb[:, 16, 16].min()) == 1.0  # 3:4 -> bars left and right


def test_normalisation(synth):
    plain = RoiDataset(synth, size=32)[0][0]
    norm = RoiDataset(synth, size=32, normalize="imagenet")[0][0]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(norm, (plain - mean) / std, atol=1e-6)


def test_augmentation_is_seeded_per_epoch_and_index(synth):
    ds = RoiDataset(synth, size=48, augment=True, seed=1)
    plain = RoiDataset(synth, size=48)
    a0 = [ds[i][0] for i in range(6)]
    assert all(torch.equal(a, ds[i][0]) for i, a in enumerate(a0))  # same epoch: same draw
    assert any(not torch.equal(a, plain[i][0]) for i, a in enumerate(a0))
    ds.set_epoch(1)
    assert any(not torch.equal(a, ds[i][0]) for i, a in enumerate(a0))
    other = RoiDataset(synth, size=48, augment=True, seed=1)
    assert all(torch.equal(a, other[i][0]) for i, a in enumerate(a0))  # a fresh dataset, same draws
    assert all(0.0 <= float(ds[i][0].min()) and float(ds[i][0].max()) <= 1.0 for i in range(6))


def test_cache_and_loader(synth):
    ds = RoiDataset(synth, size=32)
    ds[0]
    assert set(ds._cache) == {0}
    nc = RoiDataset(synth, size=32, cache=False)
    nc[0]
    assert nc._cache == {} and torch.equal(nc[0][0], ds[0][0])
    x, y, idx = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64 and idx.tolist() == [0, 1, 2, 3]


def test_mixed_label_rules_are_refused(synth):
    other = [
        Sample(s.case_id, s.frame, s.image_path, s.polygon, s.bbox, s.label, "mccnn", s.frame_size)
        for s in synth.samples[:1]
    ]
    with pytest.raises(ValueError, match="mix label rules"):
        RoiDataset(synth.samples[:2] + other)


# ---------------------------------------------------------------------------------------------
# Folder format.


def _img(path, seed, size=(120, 90)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)).save(path)


def _mask(path, box, size=(120, 90)):
    m = np.zeros((size[1], size[0]), dtype=np.uint8)
    if box:
        x0, y0, x1, y1 = box
        m[y0:y1, x0:x1] = 255
    Image.fromarray(m).save(path)


def test_folder_format(tmp_path):
    (tmp_path / "benign" / "masks").mkdir(parents=True)
    (tmp_path / "malignant" / "patient7").mkdir(parents=True)
    _img(tmp_path / "benign" / "a.png", 1)
    _mask(tmp_path / "benign" / "masks" / "a.png", (10, 20, 50, 60))
    _img(tmp_path / "benign" / "b.jpg", 2)
    _img(tmp_path / "benign" / "c.png", 3)
    _mask(tmp_path / "benign" / "c_mask.png", (30, 30, 42, 40))
    _img(tmp_path / "malignant" / "patient7" / "1.png", 4)
    _img(tmp_path / "malignant" / "patient7" / "2.png", 5)
    _img(tmp_path / "malignant" / "d.png", 4)  # same bytes as patient7/1.png; d sorts first, is kept
    (tmp_path / "malignant" / "e.png").write_bytes(b"not a png")
    _img(tmp_path / "malignant" / "f.png", 6)
    _mask(tmp_path / "malignant" / "f_mask.png", None)  # empty mask
    (tmp_path / "malignant" / "notes.txt").write_text("ignored")

    assert detect_format(tmp_path) == "folder"
    ds = load_dataset(tmp_path, margin=0.0, warn=False)
    assert ds.format == "folder" and ds.label_rule == "folder"
    got = [(s.case_id, s.frame, s.label, s.roi_kind, s.bbox) for s in ds.samples]
    assert got == [
        ("benign/a", 1, 0, "mask", (10, 20, 50, 60)),
        ("benign/b", 1, 0, "full-frame", (0, 0, 120, 90)),
        ("benign/c", 1, 0, "mask", (30, 30, 42, 40)),
        ("malignant/d", 1, 1, "full-frame", (0, 0, 120, 90)),
        ("malignant/f", 1, 1, "full-frame", (0, 0, 120, 90)),  # empty mask: the whole image, no outline
        ("malignant/patient7", 2, 1, "full-frame", (0, 0, 120, 90)),
    ]
    # a mask gives the outline (its rectangle's boundary pixels), like DDTI's annotations
    assert ds.samples[0].polygon == ((10, 20), (49, 20), (49, 59), (10, 59))
    assert [s.polygon for s in ds.samples[1:] if s.roi_kind != "mask"] == [None] * 4
    kinds = sorted((w.kind, w.file) for w in ds.report.warts)
    assert kinds == [
        ("duplicate-image", "malignant/patient7/1.png"),
        ("empty-mask", "malignant/f_mask.png"),
        ("linked-cases", "malignant/d, malignant/patient7"),
        ("skipped-file", "malignant/notes.txt"),  # named, never silently passed over
        ("unreadable-image", "malignant/e.png"),
    ]
    # d and patient7 share an image: one unit, so one side of every split
    assert ds.links() == [("malignant/d", "malignant/patient7")]
    assert ds.report.by_rule["folder"].cases == {"benign": 3, "malignant": 4, "excluded": 0}
    assert "benign/masks/a.png" in ds.files  # masks are part of the fingerprint

    split = split_train_test(ds, test_fraction=0.5, seed=0)
    train, test = split.select(ds)
    sides = {s.case_id: "train" for s in train} | {s.case_id: "test" for s in test}
    assert len(sides) == 6 and not ({s.case_id for s in train} & {s.case_id for s in test})

    x, y, _ = RoiDataset(ds, size=16)[0]
    assert x.shape == (3, 16, 16) and y == 0


def test_folder_format_errors(tmp_path):
    (tmp_path / "benign").mkdir()
    _img(tmp_path / "benign" / "a.png", 1)
    _mask(tmp_path / "benign" / "a_mask.png", (0, 0, 5, 5), size=(60, 60))  # wrong size
    ds = load_dataset(tmp_path, warn=False)
    assert [w.kind for w in ds.report.warts] == ["unreadable-mask"] and ds.samples[0].roi_kind == "full-frame"
    from hfcn_bench.data.folder import load_folder

    with pytest.raises(HfcnError, match=r"has no class folder \(benign/ or malignant/\)"):
        load_folder(tmp_path / "benign")
