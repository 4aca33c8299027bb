"""Synthetic DDTI-format phantoms: deterministic, fast, read by the DDTI reader, with the
malignancy cues, label noise and warts they promise."""

from __future__ import annotations

import hashlib
import json
import time
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from hfcn_bench.data import DataWarning, load_dataset, write_synthetic_ddti
from hfcn_bench.data.rois import open_rgb
from hfcn_bench.data.synthetic import FRAME_SIZE, MIN_CASES_WITH_WARTS
from hfcn_bench.errors import HfcnError


def tree_digest(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    start = time.perf_counter()
    write_synthetic_ddti(out, n_cases=40, seed=3)
    elapsed = time.perf_counter() - start
    truth = json.loads((out / "synthetic.json").read_text())
    return out, truth, elapsed


def test_forty_cases_are_fast(phantoms):
    # The brief asks for < 5 s; the bound leaves room for a loaded 2-core CI machine.
    assert phantoms[2] < 10.0


def test_layout_and_frames_match_ddti(phantoms):
    out, truth, _ = phantoms
    assert sorted(p.name for p in out.iterdir()) == ["raw_jpg", "synthetic.json", "xml"]
    assert len(list((out / "xml").glob("*.xml"))) == 40
    n_frames = sum(len(c["frames"]) for c in truth["cases"].values())
    jpgs = sorted((out / "raw_jpg").glob("*.jpg"))
    assert len(jpgs) == n_frames
    with Image.open(jpgs[0]) as im:
        assert im.size == FRAME_SIZE and im.mode == "RGB" and im.format == "JPEG"
    arr = np.asarray(open_rgb(jpgs[0]), dtype=np.int16)
    assert np.abs(arr[..., 0] - arr[..., 1]).max() <= 8  # grey content, like DDTI (JPEG chroma noise aside)


def test_same_seed_same_bytes_other_seed_other_bytes(phantoms, tmp_path):
    out, _, _ = phantoms
    again = write_synthetic_ddti(tmp_path / "again", n_cases=40, seed=3)
    assert tree_digest(again) == tree_digest(out)
    a = write_synthetic_ddti(tmp_path / "a", n_cases=3, seed=3)
    b = write_synthetic_ddti(tmp_path / "b", n_cases=3, seed=4)
    assert tree_digest(a)["raw_jpg/1_1.jpg"] != tree_digest(b)["raw_jpg/1_1.jpg"]


def test_read_by_the_ddti_reader_without_warts(phantoms):
    out, truth, _ = phantoms
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # a clean phantom set must raise no warning
        ds = load_dataset(out)
    assert ds.format == "ddti" and ds.report.warts == []
    assert ds.report.cases == 40
    assert ds.report.frames == sum(len(c["frames"]) for c in truth["cases"].values())
    expected_outlines = sum(f["outlines"] for c in truth["cases"].values() for f in c["frames"])
    assert ds.report.outlines == expected_outlines
    assert ds.report.dual_view_frames == sum(f["dual_view"] for c in truth["cases"].values() for f in c["frames"])
    assert ds.report.dual_view_frames > 0
    # Labels: TI-RADS from the class, no noise asked for -> reader label == true class.
    for s in ds.samples:
        assert s.label == (truth["cases"][s.case_id]["true_class"] == "malignant")
    unlabelled = [c for c, v in truth["cases"].items() if v["tirads"] == ""]
    assert ds.report.by_rule["tirads"].cases["excluded"] == len(unlabelled)
    assert {s.case_id for s in ds.samples}.isdisjoint(unlabelled)
    assert ds.report.by_rule["mccnn"].cases["excluded"] > len(unlabelled)  # 4a/4b dropped too
    # DDTI's vocabulary, spelling variants included, is all known to the reader.
    raw_margins = {c.raw["margins"] for c in ds.cases.values()}
    assert raw_margins & {"ill- defined", "ill defined", "well defined smooth", "well defined"}
    assert all(c.fields["tirads"] in (None, "2", "3", "4a", "4b", "4c", "5") for c in ds.cases.values())


def _roi_stats(sample):
    """(nodule/surround echo ratio, box height/width, bright-pixel fraction) of one outline."""
    img = np.asarray(open_rgb(sample.image_path).convert("L"), dtype=np.float32)
    mask_img = Image.new("L", sample.frame_size, 0)
    ImageDraw.Draw(mask_img).polygon(list(sample.polygon), fill=1)
    inside = np.asarray(mask_img, dtype=bool)
    x0, y0, x1, y1 = sample.bbox
    ring = np.zeros_like(inside)
    ring[max(y0 - 15, 0):y1 + 15, max(x0 - 15, 0):x1 + 15] = True
    ring[y0 - 3:y1 + 3, x0 - 3:x1 + 3] = False
    echo = img[inside].mean() / img[ring].mean()
    bright = (img[inside] > 225).mean()
    return echo, (y1 - y0) / (x1 - x0), bright


def test_malignant_phantoms_carry_the_radiologists_cues(phantoms):
    out, _, _ = phantoms
    ds = load_dataset(out, warn=False)
    stats = {0: [], 1: []}
    for s in ds.samples:
        stats[s.label].append(_roi_stats(s))
    b, m = (np.array(stats[k]) for k in (0, 1))
    assert len(b) >= 8 and len(m) >= 8
    # Hypoechoic, taller than wide, microcalcifications -- on average, not for every nodule.
    assert np.median(m[:, 0]) < 0.75 < np.median(b[:, 0])
    assert np.median(m[:, 1]) > 1.0 > np.median(b[:, 1])
    assert m[:, 2].mean() > 3 * b[:, 2].mean()


def test_label_noise_flips_recorded_class_only(tmp_path):
    out = write_synthetic_ddti(tmp_path / "noisy", n_cases=40, seed=1, label_noise=0.3, unlabelled_fraction=0.0)
    truth = json.loads((out / "synthetic.json").read_text())
    ds = load_dataset(out, warn=False)
    flipped = {c for c, v in truth["cases"].items() if v["flipped"]}
    assert 4 <= len(flipped) <= 22  # Binomial(40, 0.3): mean 12, sd 2.9
    for s in ds.samples:
        true_malignant = truth["cases"][s.case_id]["true_class"] == "malignant"
        assert bool(s.label) == (true_malignant != (s.case_id in flipped))


def test_warts_are_injected_and_each_one_is_reported(tmp_path):
    out = write_synthetic_ddti(tmp_path / "warty", n_cases=MIN_CASES_WITH_WARTS + 2, seed=7, warts=True)
    truth = json.loads((out / "synthetic.json").read_text())
    with pytest.warns(DataWarning):
        ds = load_dataset(out)
    injected = {(w["kind"], w["case"], w.get("frame")) for w in truth["warts"]}
    assert {k for k, _, _ in injected} == {"truncated-outline", "empty-outline", "duplicate-outline",
                                           "duplicate-image", "missing-image", "unreadable-image", "malformed-xml"}
    reported = {(w.kind, w.case, w.frame) for w in ds.report.warts}
    # A duplicate pair may be resolved either way (the labelled copy is kept): match by group.
    for k, c, f in injected - {x for x in injected if x[0] == "duplicate-image"}:
        assert (k, c, f) in reported, (k, c, f)
    dup_groups = [{(c, f), (w["of"].split("_")[0], int(w["of"].split("_")[1]))}
                  for w in truth["warts"] if w["kind"] == "duplicate-image" for c, f in [(w["case"], w["frame"])]]
    dropped = {(w.case, w.frame) for w in ds.report.warts_of("duplicate-image")}
    conflicts = {(w.case, w.frame) for w in ds.report.warts_of("label-conflict")}
    for g in dup_groups:
        labels = {ds.cases[c].label for c, _ in g if ds.cases.get(c) is not None} - {None}
        if len(labels) > 1:  # the copy went to a case of the other class: both dropped, reported
            assert g <= conflicts and not g & dropped, g
        else:
            assert len(g & dropped) == 1, g
    cross = [g for g in dup_groups if len({c for c, _ in g}) == 2]
    assert cross and all(len({ds.cases[c].label for c, _ in g} - {None}) > 1 or any(
        w.kind == "linked-cases" for w in ds.report.warts) for g in cross)
    salvage = [w for w in ds.report.warts_of("truncated-outline") if w.action.startswith("salvaged")]
    assert len(salvage) == 1 and ds.report.usable


def test_arguments_are_checked(tmp_path):
    with pytest.raises(HfcnError, match="warts=True needs"):
        write_synthetic_ddti(tmp_path / "a", n_cases=3, warts=True)
    with pytest.raises(HfcnError, match="label_noise"):
        write_synthetic_ddti(tmp_path / "b", n_cases=3, label_noise=1.5)
    write_synthetic_ddti(tmp_path / "c", n_cases=2, seed=0)
    with pytest.raises(HfcnError, match="already holds"):
        write_synthetic_ddti(tmp_path / "c", n_cases=2, seed=1)
    write_synthetic_ddti(tmp_path / "c", n_cases=3, seed=1, overwrite=True)
    assert len(list((tmp_path / "c" / "xml").glob("*.xml"))) == 3


def test_small_sets_still_have_both_classes(tmp_path):
    out = write_synthetic_ddti(tmp_path / "tiny", n_cases=2, seed=11, unlabelled_fraction=0.0)
    truth = json.loads((out / "synthetic.json").read_text())
    assert sorted(v["true_class"] for v in truth["cases"].values()) == ["benign", "malignant"]


def test_ensure_synthetic_reuses_regenerates_and_protects(tmp_path):
    from hfcn_bench.data import ensure_synthetic

    out = ensure_synthetic(tmp_path / "default", n_cases=3, seed=0)
    first = tree_digest(out)
    stamp = (out / "xml" / "1.xml").stat().st_mtime_ns
    assert ensure_synthetic(out, n_cases=3, seed=0) == out
    assert (out / "xml" / "1.xml").stat().st_mtime_ns == stamp  # reused, not rewritten
    ensure_synthetic(out, n_cases=4, seed=0)  # other arguments: regenerated in place
    assert len(list((out / "xml").glob("*.xml"))) == 4 and tree_digest(out) != first
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "1.xml").write_text("<case/>")
    with pytest.raises(HfcnError, match="holds no phantoms"):
        ensure_synthetic(tmp_path / "real", n_cases=3)
    assert (tmp_path / "real" / "1.xml").read_text() == "<case/>"
