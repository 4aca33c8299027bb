"""Faults in the input are warts that name their file, never tracebacks or silent wrong ROIs:
impossible outlines, tiny boxes, symlink loops, unreadable files, decompression bombs,
duplicate case ids, conflicting labels, ignored folders; and cases linked by a shared image
stay together in every split."""

from __future__ import annotations

import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from hfcn_bench.cli import main
from hfcn_bench.data import kfold, load_dataset, read_manifest, split_train_test, write_manifest, write_synthetic_ddti
from hfcn_bench.data.rois import MAX_IMAGE_PIXELS, MIN_ROI_SIDE, UnreadableImage, outline_inside_fraction, read_image


def _load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(path, **kw)


@pytest.fixture
def phantoms(tmp_path):
    return write_synthetic_ddti(tmp_path / "ddti", n_cases=16, seed=3)


def _set_outline(xml: Path, points: list[tuple[int, int]]) -> None:
    text = xml.read_text()
    start = text.index("<svg>") + 5
    end = text.index("</svg>")
    region = [{"points": [{"x": x, "y": y} for x, y in points], "annotation": {}, "regionType": "freehand"}]
    xml.write_text(text[:start] + json.dumps(region) + text[end:])


def _first_mark_only(xml: Path) -> None:
    text = xml.read_text()
    first_end = text.index("</mark>") + len("</mark>")
    rest = text.rfind("</mark>")
    xml.write_text(text[:first_end] + text[rest + len("</mark>") :])


def test_outline_inside_fraction():
    assert outline_inside_fraction([(10, 10), (50, 10), (50, 40), (10, 40)], (560, 360)) == 1.0
    half = outline_inside_fraction([(500, 10), (620, 10), (620, 40), (500, 40)], (560, 360))
    assert half == pytest.approx(0.5)
    assert outline_inside_fraction([(900, 900), (950, 900), (950, 950)], (560, 360)) == 0.0


def test_outline_far_outside_its_frame_is_a_wart_and_no_roi(phantoms):
    xml = phantoms / "xml" / "2.xml"
    _first_mark_only(xml)
    before = {s.key for s in _load(phantoms, warn=False, keep_unlabelled=True).samples}
    _set_outline(xml, [(900, 700), (980, 700), (980, 760), (900, 760)])
    ds = _load(phantoms, warn=False, keep_unlabelled=True)
    assert not any(s.case_id == "2" and s.frame == 1 for s in ds.samples)
    (w,) = [w for w in ds.report.warts if w.kind == "outline-outside-frame"]
    assert (w.file, w.case, w.frame, w.action) == ("xml/2.xml", "2", 1, "ROI skipped")
    assert "100% of its area lies outside the 560x360 frame" in w.message and "900..981" in w.message
    assert before - {s.key for s in ds.samples} == {"2/1/0"}
    # data check names it, with its numbers
    out = Console(file=__import__("io").StringIO(), width=200)
    assert main(["data", "check", str(phantoms)], console=out) == 0
    text = out.file.getvalue()
    assert "outline-outside-frame" in text and "xml/2.xml" in text and "warts: none" not in text


def test_outline_partly_outside_is_clipped_and_reported(phantoms):
    xml = phantoms / "xml" / "3.xml"
    _first_mark_only(xml)
    _set_outline(xml, [(500, 100), (600, 100), (600, 160), (500, 160)])  # 40 % outside
    ds = _load(phantoms, warn=False)
    (s,) = [s for s in ds.samples if s.case_id == "3" and s.frame == 1] or [None]
    if s is not None:  # the case may be unlabelled in this draw; the wart is reported either way
        assert s.bbox == (500, 100, 560, 161)
    (w,) = [w for w in ds.report.warts if w.kind == "outline-outside-frame"]
    assert w.action == "clipped to the frame" and "40%" in w.message


def test_tiny_roi_is_skipped_with_a_wart(phantoms):
    xml = phantoms / "xml" / "4.xml"
    _first_mark_only(xml)
    _set_outline(xml, [(200, 100), (204, 100), (204, 140), (200, 140)])  # 5 px wide
    ds = _load(phantoms, warn=False)
    assert not any(s.case_id == "4" and s.frame == 1 for s in ds.samples)
    (w,) = ds.report.warts_of("tiny-roi")
    assert w.case == "4" and w.frame == 1 and f"{MIN_ROI_SIDE}-px minimum" in w.message and "5x41" in w.message


def test_symlink_loop_among_frames_is_a_wart(phantoms):
    loop = phantoms / "raw_jpg" / "5_9.jpg"
    os.symlink(loop.name, loop)  # points at itself: ELOOP on every read
    xml = phantoms / "xml" / "5.xml"
    xml.write_text(xml.read_text().replace("</case>", "<mark><image>9</image><svg></svg></mark></case>"))
    ds = _load(phantoms, warn=False)
    (w,) = [w for w in ds.report.warts if w.file == "raw_jpg/5_9.jpg"]
    assert w.kind == "unreadable-image" and "symbolic links" in w.message and w.action == "frame skipped"
    assert ds.samples  # the rest loads
    out = Console(file=__import__("io").StringIO(), width=200)
    assert main(["data", "check", str(phantoms)], console=out) == 0


def test_unreadable_file_is_a_wart(phantoms, monkeypatch):
    victim = phantoms / "raw_jpg" / "6_1.jpg"
    real = Path.read_bytes

    def deny(self):
        if self == victim:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    ds = _load(phantoms, warn=False)
    (w,) = [w for w in ds.report.warts if w.file == "raw_jpg/6_1.jpg"]
    assert w.kind == "unreadable-image" and w.message == "cannot read: Permission denied"


def _png_declaring(path: Path, width: int, height: int) -> None:
    """A small valid PNG whose header declares width x height (the decompression-bomb shape)."""
    Image.new("L", (8, 8), 128).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_declaring(bomb, 11000, 11000)
    with pytest.raises(UnreadableImage, match=r"11000x11000 = 121.0 megapixels exceeds the 40-megapixel cap"):
        read_image(bomb)
    assert 11000 * 11000 > MAX_IMAGE_PIXELS
    (tmp_path / "benign").mkdir()
    (tmp_path / "malignant").mkdir()
    bomb.rename(tmp_path / "benign" / "bomb.png")
    Image.new("L", (64, 48), 90).save(tmp_path / "benign" / "ok.png")
    Image.new("L", (64, 48), 30).save(tmp_path / "malignant" / "m.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's own warning never fires
        ds = load_dataset(tmp_path, warn=False)
    assert [w.kind for w in ds.report.warts] == ["unreadable-image"] and len(ds) == 2


def test_duplicate_case_ids_are_warts_and_counts_add_up(phantoms):
    xml_dir = phantoms / "xml"
    (xml_dir / "7.XML").write_bytes((xml_dir / "7.xml").read_bytes())
    text = (xml_dir / "9.xml").read_text()
    (xml_dir / "99.xml").write_text(text)  # <number>9</number> in 99.xml: the same case
    ds = _load(phantoms, warn=False)
    dups = ds.report.warts_of("duplicate-case")
    assert {w.file for w in dups} == {"xml/7.xml", "xml/99.xml"}
    assert any("same case id as xml/7.XML" in w.message for w in dups)
    assert any("same <number>9</number> as xml/9.xml" in w.message for w in dups)
    r = ds.report
    assert r.case_files == 18 and r.cases == 16 and r.case_files == r.cases + r.cases_skipped


def test_folder_conflicts_and_ignored_folders(tmp_path):
    for d in ("benign", "malignant", "normal"):
        (tmp_path / d).mkdir()
    rng = np.random.default_rng(0)
    for name, folder in (("a", "benign"), ("b", "benign"), ("c", "malignant"), ("d", "malignant")):
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(tmp_path / folder / f"{name}.png")
    (tmp_path / "malignant" / "malignant (145).png").write_bytes((tmp_path / "benign" / "b.png").read_bytes())
    Image.new("L", (40, 50), 0).save(tmp_path / "normal" / "n.png")
    ds = load_dataset(tmp_path, warn=False)
    kinds = sorted((w.kind, w.file) for w in ds.report.warts)
    assert kinds == [
        ("ignored-folder", "normal/"),
        ("label-conflict", "benign/b.png"),
        ("label-conflict", "malignant/malignant (145).png"),
    ]
    assert sorted(s.case_id for s in ds.samples) == ["benign/a", "malignant/c", "malignant/d"]
    assert ds.report.frames == 5 and ds.report.samples == 3


def _linked_phantoms(tmp_path, seed=0):
    """Phantoms where case A's frame 1 is byte-identical to case B's frame 1, and B has a
    second frame. Returns (root, A, B)."""
    root = write_synthetic_ddti(tmp_path / "linked", n_cases=40, seed=seed, unlabelled_fraction=0.0)
    truth = json.loads((root / "synthetic.json").read_text())["cases"]
    multi = [c for c, t in truth.items() if len(t["frames"]) >= 2]
    b = multi[0]
    a = next(
        c
        for c, t in truth.items()
        if c != b and t["tirads"] in (("2", "3") if truth[b]["tirads"] in ("2", "3") else ("4a", "4b", "4c", "5"))
    )
    (root / "raw_jpg" / f"{b}_1.jpg").write_bytes((root / "raw_jpg" / f"{a}_1.jpg").read_bytes())
    return root, a, b


def test_linked_cases_are_one_split_unit(tmp_path):
    root, a, b = _linked_phantoms(tmp_path)
    ds = _load(root, warn=False)
    assert ds.links() == [tuple(sorted((a, b), key=int))]
    assert any(w.kind == "linked-cases" for w in ds.report.warts)
    for seed in range(12):
        folds = kfold(ds, k=5, seed=seed)
        (holder,) = [f.fold for f in folds if a in f.test]
        assert b in folds[holder].test, seed
        split = split_train_test(ds, test_fraction=0.25, seed=seed)
        assert (a in split.test) == (b in split.test), seed
    write_manifest(tmp_path / "split.json", ds, kfold(ds, k=5, seed=0))
    m = read_manifest(tmp_path / "split.json")
    assert m.links == [sorted((a, b), key=int)]
    assert set(m.images) == {s.case_id for s in ds.samples}
    out = Console(file=__import__("io").StringIO(), width=200)
    main(["data", "check", str(root)], console=out)
    assert "linked-cases" in out.file.getvalue()


def test_unlinked_data_splits_as_before(tmp_path):
    # No shared image: every unit is one case, ordered by the same seeded hash as before.
    import hashlib

    root = write_synthetic_ddti(tmp_path / "plain", n_cases=30, seed=2)
    ds = _load(root, warn=False)
    assert ds.links() == []
    labels = ds.case_labels()
    split = split_train_test(ds, test_fraction=0.25, seed=5)
    for lab in (0, 1):
        ids = sorted(
            (c for c, v in labels.items() if v == lab), key=lambda c: hashlib.sha256(f"5\0{c}".encode()).hexdigest()
        )
        n = min(max(round(len(ids) * 0.25), 1), len(ids) - 1)
        assert set(ids[:n]) <= set(split.test) and not set(ids[n:]) & set(split.test)
