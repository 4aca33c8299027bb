"""The folder format grown up: class-folder mapping (``--classes``), a dataset's own train/test
split (``--split given``), masks as nodule outlines; the real LES3BDD set when
HFCN_LES3BDD_DIR points at it. Tiny folder datasets are written in tmp_path."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from clitools import run
from PIL import Image, ImageDraw
from scipy import ndimage

from hfcn_bench.data import (
    DataWarning,
    given_split,
    kfold,
    load_dataset,
    parse_classes,
    read_manifest,
    split_train_test,
    verify_manifest,
    write_manifest,
)
from hfcn_bench.data.contour import largest_region, mask_outline_polygon, trace_outer
from hfcn_bench.errors import HfcnError

FR = "benin=benign,malin=malignant"


def _img(path, seed, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)).save(path)


def _ellipse_mask(path, box, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("L", size, 0)
    if box:
        ImageDraw.Draw(im).ellipse(box, fill=255)
    im.save(path)


def _split_set(root, n_train=(8, 8), n_test=(3, 3), masks=False):
    """root/train/{benin,malin}/*.png and root/test/{benin,malin}/*.png; with ``masks`` each
    image gets NAME_mask.png (benign: wide ellipses, malignant: tall ones)."""
    seed = 0
    for side, (nb, nm) in (("train", n_train), ("test", n_test)):
        for cls, n in (("benin", nb), ("malin", nm)):
            for i in range(n):
                seed += 1
                _img(root / side / cls / f"{i}.png", seed)
                if masks:
                    w, h = (30 + i % 5, 14 + i % 3) if cls == "benin" else (14 + i % 3, 30 + i % 5)
                    _ellipse_mask(root / side / cls / f"{i}_mask.png", (8 + i % 4, 6, 8 + i % 4 + w, 6 + h))
    return root


# ---------------------------------------------------------------------------------------------
# The class mapping.


def test_parse_classes_and_its_errors():
    assert parse_classes(FR) == {"benin": "benign", "malin": "malignant"}
    assert parse_classes({"Tirads2": "Benign", "tirads3": "benign"}) == {"tirads2": "benign", "tirads3": "benign"}
    assert parse_classes(None) is None
    for bad, needle in (
        ("benin=benign,malin=cancer", "unknown class 'cancer'"),
        ("benin=benign,BENIN=malignant", "folder 'BENIN' is mapped twice"),
        ("benin", "'benin' is not FOLDER=CLASS"),
        ("", "maps no folder"),
        ("train=benign", "is a split folder"),
        ("a/b=benign", "is not a folder name"),
    ):
        with pytest.raises(HfcnError, match=needle.replace("(", r"\(")):
            parse_classes(bad)


def test_classes_map_any_folder_names(tmp_path):
    for i in range(3):
        _img(tmp_path / "benin" / f"b{i}.png", i)
        _img(tmp_path / "malin" / f"m{i}.png", 10 + i)
    _img(tmp_path / "autre" / "x.png", 99)
    with pytest.raises(HfcnError, match=r"has no class folder.*sub-folders found: autre/, benin/, malin/") as exc:
        load_dataset(tmp_path, warn=False)
    assert "--classes autre=benign,benin=malignant" in exc.value.hint  # a hint built from what is there
    ds = load_dataset(tmp_path, classes=FR, warn=False)
    assert ds.class_counts() == {"benign": 3, "malignant": 3} and ds.options["classes"] == parse_classes(FR)
    assert {s.case_id for s in ds.samples if s.label == 1} == {"malin/m0", "malin/m1", "malin/m2"}
    assert [(w.kind, w.file) for w in ds.report.warts] == [("ignored-folder", "autre/")]
    assert all(s.side is None for s in ds.samples) and "given_split" not in ds.describe()
    with pytest.raises(HfcnError, match=r"no bening/ folder"):
        load_dataset(tmp_path, classes="bening=benign,malin=malignant", warn=False)
    with pytest.raises(HfcnError, match=r"has no class folder \(x/, y/\)"):
        load_dataset(tmp_path, classes="x=benign,y=malignant", warn=False)


# ---------------------------------------------------------------------------------------------
# A dataset that ships its own split.


def test_given_split_layout(tmp_path):
    root = _split_set(tmp_path / "d", n_train=(4, 5), n_test=(2, 3))
    # a test image byte-identical to a train image: train/ is read first, the test copy is dropped
    (root / "test" / "malin" / "dup.png").write_bytes((root / "train" / "malin" / "0.png").read_bytes())
    _img(root / "test" / "notes" / "n.png", 500)
    ds = load_dataset(root, classes=FR, warn=False)
    assert ds.report.sides == {
        "train": {"cases": 9, "benign": 4, "malignant": 5},
        "test": {"cases": 5, "benign": 2, "malignant": 3},
    }
    assert ds.describe()["given_split"] == ds.report.sides
    assert {s.side for s in ds.samples if s.case_id.startswith("train/")} == {"train"}
    assert "test/malin/2" in {s.case_id for s in ds.samples}
    kinds = sorted((w.kind, w.file) for w in ds.report.warts)
    assert kinds == [("duplicate-image", "test/malin/dup.png"), ("ignored-folder", "test/notes/")]

    split = given_split(ds, seed=3)
    assert split.method == "given" and len(split.train) == 9 and len(split.test) == 5
    train, test = split.select(ds)
    assert {s.side for s in train} == {"train"} and {s.side for s in test} == {"test"}
    # the other splits pool both sides
    folds = kfold(ds, k=3, seed=0)
    assert sorted(c for f in folds for c in f.test) == sorted(split.train + split.test)
    assert {s.side for s in split_train_test(ds, 0.3).select(ds)[1]} == {"train", "test"}

    # a given split is a manifest like the others
    write_manifest(tmp_path / "split.json", ds, split)
    m = read_manifest(tmp_path / "split.json")
    assert m.method == "given" and m.splits[0].train == split.train and m.data["options"]["classes"]
    assert m.training_labels()[0].count(1) == 5
    verify_manifest(m, ds)
    # the same bytes under another mapping: same fingerprint, other labels -> refused
    flipped = load_dataset(root, classes="benin=malignant,malin=benign", warn=False)
    assert flipped.fingerprint == ds.fingerprint
    with pytest.raises(HfcnError, match="other labels than the manifest records"):
        verify_manifest(m, flipped)

    # no sides: --split given is an error
    flat = _split_set(tmp_path / "flat")
    with pytest.raises(HfcnError, match="ships no train/test split of its own"):
        given_split(load_dataset(flat / "train", classes=FR, warn=False))
    # train/ + test/ without mapping: recognised as a folder set, and told how to map
    with pytest.raises(HfcnError, match=r"train and .*test has no class folder .*benin/, malin/"):
        load_dataset(root, warn=False)


# ---------------------------------------------------------------------------------------------
# Masks are outlines.


def test_contour_tracer_fills_back_the_largest_region():
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = rng.integers(6, 40, 2)
        z = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 3))
        m = z > np.quantile(z, rng.uniform(0.3, 0.9))
        region = largest_region(m)
        poly = mask_outline_polygon(m)
        im = Image.new("L", (int(w), int(h)), 0)
        draw = ImageDraw.Draw(im)
        if len(poly) >= 3:
            draw.polygon(poly, fill=1, outline=1)
        else:
            for p in poly:
                draw.point(p, 1)
        assert np.array_equal(np.asarray(im) > 0, ndimage.binary_fill_holes(region))
    ring = np.zeros((20, 30), bool)
    ring[2:15, 3:20] = True
    ring[5:10, 6:12] = False  # a hole: ignored
    ring[17:19, 25:28] = True  # a smaller region: left out
    assert mask_outline_polygon(ring) == ((3, 2), (19, 2), (19, 14), (3, 14))
    assert mask_outline_polygon(np.zeros((4, 4))) is None
    assert trace_outer(np.pad([[1]], 2)) == [(2, 2)]


def test_masks_give_outlines_and_bad_masks_fall_back_with_a_warning(tmp_path):
    from hfcn_bench.systems.shape_rf import FEATURE_NAMES, outline_features

    root = tmp_path / "d"
    _img(root / "benign" / "a.png", 1)
    _ellipse_mask(root / "benign" / "masks" / "a.png", (10, 8, 40, 30))
    _img(root / "benign" / "b.png", 2)
    _ellipse_mask(root / "benign" / "b_mask.png", None)  # no foreground
    _img(root / "malignant" / "c.png", 3)
    _ellipse_mask(root / "malignant" / "c_mask.png", (0, 0, 10, 10), size=(32, 32))  # another size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(root)
    mine = [
        str(w.message) for w in caught if issubclass(w.category, DataWarning) and "mask(s) unusable" in str(w.message)
    ]
    assert len(mine) == 1 and "benign/b_mask.png (no foreground pixels)" in mine[0]
    assert "malignant/c_mask.png (mask is 32x32, image is 64x48)" in mine[0]
    a, b, c = ds.samples
    assert a.roi_kind == "mask" and len(a.polygon) >= 8 and a.bbox == (10, 8, 41, 31)
    xs, ys = zip(*a.polygon)
    assert (min(xs), min(ys), max(xs) + 1, max(ys) + 1) == a.bbox
    assert (b.roi_kind, b.polygon, b.bbox) == ("full-frame", None, (0, 0, 64, 48))
    assert (c.roi_kind, c.polygon, c.bbox) == ("full-frame", None, (0, 0, 64, 48))
    assert sorted((w.kind, w.file) for w in ds.report.warts) == [
        ("empty-mask", "benign/b_mask.png"),
        ("unreadable-mask", "malignant/c_mask.png"),
    ]
    f = outline_features(a)  # shape_rf describes a folder sample's outline
    assert f.shape == (len(FEATURE_NAMES),) and f[0] > 100  # area in pixels
    with pytest.raises(HfcnError, match="no nodule outline") as exc:
        outline_features(b)
    assert "mask" in exc.value.hint


# ---------------------------------------------------------------------------------------------
# The command line: train --classes --split given, eval, data check, the model card.


@pytest.fixture(scope="module")
def given_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder-given")
    root = _split_set(base / "les", n_train=(10, 10), n_test=(4, 4), masks=True)
    out = base / "run"
    rc, text = run(
        [
            "train",
            "--data",
            str(root),
            "--classes",
            FR,
            "--split",
            "given",
            "--system",
            "shape_rf",
            "--preset",
            "smoke",
            "--n-boot",
            "20",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, text
    return root, out, text


def test_train_on_the_given_split_records_it(given_run):
    root, out, text = given_run
    assert "split: the dataset's own train/test split (train/: 20 cases" in text
    assert "class folders: benin/ = benign, malin/ = malignant" in text
    header = json.loads((out / "config.json").read_text())
    assert (
        header["split"]["method"] == "given" and header["split"]["description"] == "the dataset's own train/test split"
    )
    assert header["data"]["options"]["classes"] == {"benin": "benign", "malin": "malignant"}
    manifest = read_manifest(out / "split.json")
    assert manifest.method == "given" and manifest.data["options"]["classes"] == header["data"]["options"]["classes"]
    assert all(c.startswith("train/") for c in manifest.splits[0].train)
    assert all(c.startswith("test/") for c in manifest.splits[0].test)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "given" and metrics["n_cases"] == 8
    assert metrics["protocol"].startswith("the dataset's own train/test split")
    assert metrics["data"]["given_split"]["test"] == {"cases": 8, "benign": 4, "malignant": 4}

    # eval reloads the data with the recorded mapping and reproduces the report
    rc, text = run(["eval", "--run", str(out), "--json"])
    assert rc == 0, text
    rep = json.loads(text)
    assert rep["external"] is False and rep["auc"] == metrics["auc"] and rep["split"]["method"] == "given"

    from hfcn_bench.app.card import card_markdown, model_card

    card = model_card(out)
    assert card["training_data"]["classes"] == {"benin": "benign", "malin": "malignant"}
    md = card_markdown(card)
    assert "class folders: `benin/` = benign, `malin/` = malignant" in md and "dataset's own train/test split" in md


def test_cli_errors_and_data_check(given_run, tmp_path):
    root, _, _ = given_run
    rc, text = run(
        [
            "train",
            "--data",
            str(root / "train"),
            "--classes",
            FR,
            "--split",
            "given",
            "--system",
            "shape_rf",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 1 and "ships no train/test split of its own" in text and not (tmp_path / "r").exists()
    rc, text = run(
        [
            "train",
            "--data",
            str(root),
            "--classes",
            FR,
            "--split",
            "given",
            "--folds",
            "3",
            "--system",
            "shape_rf",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 1 and "--folds does not apply" in text
    rc, text = run(
        [
            "train",
            "--data",
            str(root),
            "--classes",
            "benin=benign,malin=tumour",
            "--system",
            "shape_rf",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 1 and "unknown class 'tumour'" in text and "Traceback" not in text
    rc, text = run(["data", "check", str(root), "--classes", FR, "--json"])
    assert rc == 0, text
    rep = json.loads(text)
    assert rep["sides"]["train"] == {"cases": 20, "benign": 10, "malignant": 10}
    assert rep["options"]["classes"] == {"benin": "benign", "malin": "malignant"}
    rc, text = run(["data", "check", str(root)])
    assert rc == 1 and "--classes benin=benign,malin=malignant" in text


# ---------------------------------------------------------------------------------------------
# The real LES3BDD set (CI sets HFCN_LES3BDD_DIR=../shared/data/les3bdd/raw).

LES3BDD_DIR = os.environ.get("HFCN_LES3BDD_DIR")


@pytest.mark.les3bdd
@pytest.mark.skipif(not LES3BDD_DIR, reason="HFCN_LES3BDD_DIR is not set (real LES3BDD files not available)")
def test_real_les3bdd_counts():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = load_dataset(LES3BDD_DIR, classes=FR, verify_images=False)
    r = ds.report
    # every file read: 795 images, train 643 (216 benign, 427 malignant), test 152 (53, 99)
    assert r.frames == 795 and r.by_rule["folder"].frames == {"benign": 269, "malignant": 526, "excluded": 0}
    per_side = {
        side: {
            cls: sum(1 for w in r.warts_of("duplicate-image") if w.file.startswith(f"{side}/{cls}/"))
            for cls in ("benin", "malin")
        }
        for side in ("train", "test")
    }
    # 42 byte-identical copies are dropped (the first copy kept; train/ is read before test/):
    # 33 within train/, 3 within test/, 6 test/ images identical to train/ ones
    assert per_side == {"train": {"benin": 5, "malin": 28}, "test": {"benin": 2, "malin": 7}}
    across = [w for w in r.warts_of("duplicate-image") if w.file.startswith("test/") and "train/" in w.message]
    assert len(across) == 6
    assert r.wart_counts() == {"duplicate-image": 42}
    assert r.sides == {
        "train": {"cases": 643 - 33, "benign": 216 - 5, "malignant": 427 - 28},
        "test": {"cases": 152 - 9, "benign": 53 - 2, "malignant": 99 - 7},
    }
    assert len(ds) == 795 - 42 and all(s.roi_kind == "full-frame" and s.polygon is None for s in ds.samples)
    split = given_split(ds)
    assert (len(split.train), len(split.test)) == (610, 143)


def test_holdout_copies_masks_in_both_spellings(tmp_path):
    from hfcn_bench.data.holdout import write_holdout

    root = _split_set(tmp_path / "d", n_train=(4, 4), n_test=(2, 2), masks=True)
    (root / "train" / "benin" / "masks").mkdir()
    (root / "train" / "benin" / "0_mask.png").rename(root / "train" / "benin" / "masks" / "0.png")
    ds = load_dataset(root, classes=FR, warn=False)
    res = write_holdout(ds, tmp_path / "h", fraction=0.25, seed=0)
    parts = [load_dataset(tmp_path / "h" / part, classes=FR, warn=False) for part in ("development", "holdout")]
    assert sorted(len(p) for p in parts) == sorted((len(res["development"]), len(res["holdout"])))
    polygons = {s.case_id: s.polygon for s in ds.samples}
    assert all(s.roi_kind == "mask" and s.polygon == polygons[s.case_id] for p in parts for s in p.samples)
