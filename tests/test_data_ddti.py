"""DDTI reader: vocabulary, label rules, <svg> JSON salvage, and every wart on small XML
fixtures written here; the real dataset when HFCN_DDTI_DIR points at it."""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from hfcn_bench.data import DataWarning, LoadReport, load_dataset, load_ddti, parse_case_xml
from hfcn_bench.data.ddti import LABEL_RULES, find_ddti_layout, label_for, normalize_field, parse_svg
from hfcn_bench.errors import HfcnError

W, H = 560, 360


# ---------------------------------------------------------------------------------------------
# Fixture writers. Small, explicit DDTI-format cases: every test states what it writes.


def region(points, kind="freehand") -> dict:
    return {"points": [{"x": x, "y": y} for x, y in points], "annotation": {}, "regionType": kind}


def box_outline(x0, y0, x1, y1, n=12) -> list[tuple[int, int]]:
    """A polygon whose bounding box is exactly (x0, y0, x1 + 1, y1 + 1)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    pts = [(int(round(cx + rx * np.cos(a))), int(round(cy + ry * np.sin(a)))) for a in t]
    return pts + [(x0, y0), (x1, y1)]


def svg(*regions) -> str:
    return json.dumps(list(regions), separators=(", ", ": "))


def case_xml(number, tirads="4a", marks=(), **fields) -> str:
    f = {
        "age": "40",
        "sex": "F",
        "composition": "solid",
        "echogenicity": "hypoechogenicity",
        "margins": "well defined",
        "calcifications": "non",
    }
    f.update(fields)
    body = "".join(f"<{k}>{v}</{k}>" for k, v in f.items())
    mk = "".join(f"<mark><image>{k}</image><svg>{s}</svg></mark>" for k, s in marks)
    return (
        f"<case><number>{number}</number>{body}<tirads>{tirads}</tirads><reportbacaf></reportbacaf>"
        f"<reporteco></reporteco>{mk}</case>"
    )


def jpeg(seed: int, size=(W, H)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=80)
    return buf.getvalue()


class Fixture:
    """A DDTI folder in raw/ layout (xml/ + raw_jpg/) or the flat Kaggle layout."""

    def __init__(self, root: Path, flat: bool = False):
        self.root = root
        self.xml = root if flat else root / "xml"
        self.jpg = root if flat else root / "raw_jpg"
        self.xml.mkdir(parents=True, exist_ok=True)
        self.jpg.mkdir(parents=True, exist_ok=True)

    def case(self, number, tirads="4a", marks=(), images=None, **fields):
        (self.xml / f"{number}.xml").write_text(case_xml(number, tirads, marks, **fields), encoding="utf-8")
        for k, _ in marks:
            data = (images or {}).get(k, jpeg(hash((str(number), k)) % 2**32))
            if data is not None:
                (self.jpg / f"{number}_{k}.jpg").write_bytes(data)


def load(root, **kw):
    kw.setdefault("warn", False)
    return load_ddti(root, **kw)


# ---------------------------------------------------------------------------------------------
# Vocabulary and label rules.


@pytest.mark.parametrize(
    "field,raw,expected",
    [
        ("tirads", "4a", "4a"),
        ("tirads", " 4A ", "4a"),
        ("tirads", "4 b", "4b"),
        ("tirads", "TI-RADS 5", "5"),
        ("tirads", "", None),
        ("margins", "ill- defined", "ill-defined"),
        ("margins", "ill defined", "ill-defined"),
        ("margins", "well defined smooth", "well-defined"),
        ("margins", "Well Defined", "well-defined"),
        ("calcifications", "microcalcification", "microcalcifications"),
        ("calcifications", "non", "none"),
        ("calcifications", "macrocalcification", "macrocalcifications"),
        ("echogenicity", "marked hypoechogenicity", "markedly hypoechoic"),
        ("echogenicity", "isoechogenicity", "isoechoic"),
        ("composition", "predominantly  solid", "predominantly solid"),
        ("sex", "u", None),
        ("sex", "f", "F"),
        ("age", "39", 39),
        ("age", "", None),
    ],
)
def test_normalize_known_spellings(field, raw, expected):
    assert normalize_field(field, raw) == (expected, True)


@pytest.mark.parametrize(
    "field,raw", [("tirads", "4d"), ("tirads", "6"), ("margins", "fuzzy"), ("age", "abc"), ("age", "300"), ("sex", "x")]
)
def test_normalize_unknown_is_flagged(field, raw):
    assert normalize_field(field, raw) == (None, False)


def test_label_rules():
    assert [label_for(t, "tirads") for t in ("2", "3", "4a", "4b", "4c", "5", None)] == [0, 0, 1, 1, 1, 1, None]
    assert [label_for(t, "mccnn") for t in ("2", "3", "4a", "4b", "4c", "5", None)] == [0, 0, None, None, 1, 1, None]
    with pytest.raises(HfcnError, match="unknown label rule"):
        label_for("4a", "pathology")
    assert set(LABEL_RULES) == {"tirads", "mccnn"}


# ---------------------------------------------------------------------------------------------
# <svg> JSON.


def test_parse_svg_regions_and_arrows():
    text = svg(region([(1, 2), (3, 4), (5, 6)]), region([(7, 8), (9, 10)], "arrow"))
    p = parse_svg(text)
    assert p.status == "ok"
    assert [r.points for r in p.regions] == [((1, 2), (3, 4), (5, 6)), ((7, 8), (9, 10))]
    assert [r.is_outline for r in p.regions] == [True, False]


def test_parse_svg_pretty_printed_with_line_breaks():
    # 12 DDTI files break lines inside the JSON, even between "x": and the number.
    text = (
        '[{"points": [{"x":\n 385, "y": 182}, {"x": 398, "y":\n 179}, {"x": 404, "y": 176}],\n '
        '"annotation": {}, "regionType": "freehand"}]\n        '
    )
    p = parse_svg(text)
    assert p.status == "ok" and p.regions[0].points == ((385, 182), (398, 179), (404, 176))


@pytest.mark.parametrize("text", ["", "   \n  ", "[]", None])
def test_parse_svg_empty(text):
    assert parse_svg(text).status == "empty"


def test_parse_svg_salvages_points_before_the_cut():
    full = svg(
        region([(10, 10), (20, 10), (20, 20), (10, 20)]), region([(100, 100), (120, 100), (120, 130), (100, 130)])
    )
    cut = full[: full.index('{"x": 100, "y": 130}') + 12]  # inside the last point of region 2
    p = parse_svg(cut)
    assert p.status == "truncated" and p.error
    assert [r.points for r in p.regions] == [
        ((10, 10), (20, 10), (20, 20), (10, 20)),
        ((100, 100), (120, 100), (120, 130)),
    ]
    assert [r.complete for r in p.regions] == [True, False]
    assert all(r.region_type == "freehand" for r in p.regions)


def test_parse_svg_cut_before_third_point_leaves_no_outline():
    full = svg(region([(10, 10), (20, 10), (20, 20)]))
    p = parse_svg(full[: full.index('{"x": 20, "y": 20}')])
    assert p.status == "truncated"
    assert [r.is_outline for r in p.regions] == [False]


# ---------------------------------------------------------------------------------------------
# Whole-folder reading.


def test_reads_cases_frames_and_bboxes(tmp_path):
    fx = Fixture(tmp_path)
    fx.case(1, "2", [(1, svg(region(box_outline(100, 50, 199, 129))))])
    fx.case(2, "4b", [(1, svg(region(box_outline(10, 20, 59, 99)))), (2, svg(region(box_outline(300, 30, 349, 89))))])
    ds = load(tmp_path)
    assert ds.format == "ddti" and ds.label_rule == "tirads"
    assert [(s.case_id, s.frame, s.label, s.tirads) for s in ds.samples] == [
        ("1", 1, 0, "2"),
        ("2", 1, 1, "4b"),
        ("2", 2, 1, "4b"),
    ]
    assert [s.bbox for s in ds.samples] == [(100, 50, 200, 130), (10, 20, 60, 100), (300, 30, 350, 90)]
    assert all(s.label_rule == "tirads" and s.frame_size == (W, H) for s in ds.samples)
    assert ds.samples[1].image_path == tmp_path / "raw_jpg" / "2_1.jpg"
    assert ds.report.cases == 2 and ds.report.frames == 3 and ds.report.samples == 3
    assert ds.report.warts == []
    assert ds.cases["2"].fields["echogenicity"] == "hypoechoic"
    assert ds.cases["2"].raw["echogenicity"] == "hypoechogenicity"


def test_flat_layout_and_parent_folder_are_accepted(tmp_path):
    flat = Fixture(tmp_path / "flat", flat=True)
    flat.case(7, "3", [(1, svg(region(box_outline(10, 10, 50, 50))))])
    assert find_ddti_layout(tmp_path / "flat") == (tmp_path / "flat",) * 3
    assert [s.case_id for s in load(tmp_path / "flat").samples] == ["7"]
    raw = Fixture(tmp_path / "ddti" / "raw")
    raw.case(8, "3", [(1, svg(region(box_outline(10, 10, 50, 50))))])
    base, xml_dir, img_dir = find_ddti_layout(tmp_path / "ddti")
    assert (base, xml_dir, img_dir) == (raw.root, raw.xml, raw.jpg)
    assert [s.case_id for s in load_dataset(tmp_path / "ddti", warn=False).samples] == ["8"]


def test_not_a_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(HfcnError, match="no DDTI case XMLs"):
        load(tmp_path)
    with pytest.raises(HfcnError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_dual_view_gives_one_sample_per_outline_and_arrows_are_not_outlines(tmp_path):
    fx = Fixture(tmp_path)
    left, right = box_outline(40, 60, 200, 180), box_outline(320, 50, 470, 190)
    fx.case(1, "4c", [(1, svg(region(left), region(right), region([(250, 10), (260, 40)], "arrow")))])
    ds = load(tmp_path)
    assert [(s.region, s.bbox) for s in ds.samples] == [(0, (40, 60, 201, 181)), (1, (320, 50, 471, 191))]
    assert ds.report.dual_view_frames == 1 and ds.report.arrows == 1 and ds.report.outlines == 2


def test_label_rules_exclude_and_count(tmp_path):
    fx = Fixture(tmp_path)
    for n, t in enumerate(["2", "3", "4a", "4b", "4c", "5", ""], start=1):
        fx.case(n, t, [(1, svg(region(box_outline(10, 10, 60, 60))))])
    t = load(tmp_path, label_rule="tirads")
    m = load(tmp_path, label_rule="mccnn")
    assert sorted(s.case_id for s in t.samples) == ["1", "2", "3", "4", "5", "6"]
    assert sorted(s.case_id for s in m.samples) == ["1", "2", "5", "6"]
    assert all(s.label_rule == "mccnn" for s in m.samples)
    assert t.report.by_rule["tirads"].cases == {"benign": 2, "malignant": 4, "excluded": 1}
    assert t.report.by_rule["mccnn"].cases == {"benign": 2, "malignant": 2, "excluded": 3}
    assert m.report.by_rule == t.report.by_rule  # counts for every rule, whichever is active
    assert m.cases["3"].label is None and t.cases["3"].label == 1 and t.cases["7"].label is None


def test_margin_grows_box_and_clips_to_frame(tmp_path):
    fx = Fixture(tmp_path)
    fx.case(1, "5", [(1, svg(region(box_outline(100, 100, 199, 149)), region(box_outline(0, 300, 39, 359))))])
    ds = load(tmp_path, margin=0.1)
    assert ds.samples[0].bbox == (90, 95, 210, 155)  # 100x50 box grown by 10 x 5 per side
    assert ds.samples[1].bbox == (0, 294, 44, 360)  # 40x60 box: clipped at the left and bottom
    assert ds.options["margin"] == 0.1


def test_every_xml_wart_is_reported_once_and_never_crashes(tmp_path):
    fx = Fixture(tmp_path)
    good = svg(region(box_outline(50, 50, 150, 120)))
    long_pair = svg(region(box_outline(40, 40, 200, 200, n=70)), region(box_outline(300, 40, 500, 200, n=70)))
    assert len(long_pair) > 2500
    fx.case(1, "4a", [(1, good)])
    fx.case(2, "4b", [(1, long_pair[:2500])])  # DDTI's cut: salvage
    short = svg(region([(10, 10), (20, 10), (20, 20)]))
    fx.case(3, "4c", [(1, short[: short.index('{"x": 20, "y": 10}')])])  # cut after 1 point: skip
    fx.case(4, "2", [(1, good), (2, "")])  # empty outline
    fx.case(5, "3", [(1, good), (2, good)], images={2: None})  # missing image
    fx.case(6, "5", [(1, good), (2, good)], images={2: b"\xff\xd8\xff not really a jpeg"})  # unreadable
    dup = jpeg(999)
    fx.case(7, "", [(1, good)], images={1: dup})  # unlabelled twin listed first...
    fx.case(8, "4a", [(1, good)], images={1: dup})  # ...but the labelled copy is the one kept
    (fx.xml / "9.xml").write_text(case_xml(9, "4a", [(1, good)]).replace("</tirads>", ""), encoding="utf-8")
    (fx.jpg / "9_1.jpg").write_bytes(jpeg(9))
    fx.case(10, "4a", [(1, svg(region(box_outline(50, 50, 150, 120)), region(box_outline(50, 50, 150, 120))))])
    fx.case(11, "4z", [(1, good)], margins="wobbly")
    fx.case(12, "3", [(1, svg(region([(5, 5), (9, 9)], "freehand"), region(box_outline(60, 60, 90, 90))))])
    (fx.jpg / "99_1.jpg").write_bytes(jpeg(99))  # no case refers to it

    with pytest.warns(DataWarning, match="data warts handled"):
        ds = load_ddti(tmp_path)
    r = ds.report
    keys = [w.key for w in r.warts]
    assert len(keys) == len(set(keys)), "a wart was reported twice"
    got = {(w.kind, w.file, w.frame) for w in r.warts}
    expected = {
        ("truncated-outline", "xml/2.xml", 1),
        ("truncated-outline", "xml/3.xml", 1),
        ("empty-outline", "xml/4.xml", 2),
        ("missing-image", "raw_jpg/5_2.jpg", 2),
        ("unreadable-image", "raw_jpg/6_2.jpg", 2),
        ("duplicate-image", "raw_jpg/7_1.jpg", 1),
        ("malformed-xml", "xml/9.xml", None),
        ("duplicate-outline", "xml/10.xml", 1),
        ("unknown-value", "xml/11.xml", None),
        ("short-outline", "xml/12.xml", 1),
        ("orphan-image", "raw_jpg/99_1.jpg", 1),
    }
    assert expected <= got
    assert len(r.warts_of("unknown-value")) == 2  # tirads "4z" and margins "wobbly"
    assert len(r.warts) == len(expected) + 1

    by = {(w.kind, w.file): w for w in r.warts}
    assert by[("truncated-outline", "xml/2.xml")].action.startswith("salvaged 2 outline(s)")
    assert "skipped" in by[("truncated-outline", "xml/3.xml")].action
    assert "kept raw_jpg/8_1.jpg" in by[("duplicate-image", "raw_jpg/7_1.jpg")].action
    assert by[("duplicate-outline", "xml/10.xml")].message.endswith("appears 2 times")
    assert "9.xml" in by[("malformed-xml", "xml/9.xml")].file and r.cases_skipped == 1 and r.cases == 11

    ids = [s.key for s in ds.samples]
    assert ids == ["1/1/0", "2/1/0", "2/1/1", "4/1/0", "5/1/0", "6/1/0", "8/1/0", "10/1/0", "12/1/0"]
    salvaged = [s for s in ds.samples if s.case_id == "2"]
    assert all(s.salvaged for s in salvaged) and not ds.samples[0].salvaged
    # The outline cut short keeps its left edge but loses points, so its box may only shrink.
    assert salvaged[1].bbox[0] >= 300 and salvaged[1].bbox[2] <= 501
    assert "9" not in ds.cases and ds.cases["11"].label is None


def test_wart_policies(tmp_path):
    fx = Fixture(tmp_path)
    long_pair = svg(region(box_outline(40, 40, 200, 200, n=70)), region(box_outline(300, 40, 500, 200, n=70)))
    fx.case(1, "4a", [(1, long_pair[:2500]), (2, "")])
    skip = load(tmp_path, truncated="skip", empty_outline="skip")
    assert skip.samples == [] and not skip.report.usable
    assert {w.kind for w in skip.report.warts} == {"truncated-outline", "empty-outline"}
    full = load(tmp_path, truncated="salvage", empty_outline="full-frame")
    assert [(s.frame, s.roi_kind) for s in full.samples] == [(1, "outline"), (1, "outline"), (2, "full-frame")]
    assert full.samples[2].bbox == (0, 0, W, H) and full.samples[2].polygon is None
    with pytest.raises(HfcnError, match="empty_outline"):
        load(tmp_path, empty_outline="guess")
    with pytest.raises(HfcnError, match="truncated"):
        load(tmp_path, truncated="maybe")


def test_case_number_mismatch_uses_file_name(tmp_path):
    fx = Fixture(tmp_path)
    fx.case(3, "3", [(1, svg(region(box_outline(10, 10, 40, 40))))])
    (fx.xml / "3.xml").write_text(case_xml(33, "3", [(1, svg(region(box_outline(10, 10, 40, 40))))]))
    ds = load(tmp_path)
    assert [s.case_id for s in ds.samples] == ["3"]
    assert [w.kind for w in ds.report.warts] == ["case-number-mismatch"]


def test_parse_case_xml_alone_reports_into_a_given_report(tmp_path):
    p = tmp_path / "5.xml"
    p.write_text("<case><number>5</number><tirads>4a</tirads><mark><image>x</image><svg></svg></mark></case>")
    rep = LoadReport(str(tmp_path), "ddti", "tirads")
    case = parse_case_xml(p, rep)
    assert case.case_id == "5" and case.tirads == "4a" and case.frames == []
    assert [w.kind for w in rep.warts] == ["bad-mark"]
    p.write_text("<notacase/>")
    assert parse_case_xml(p, rep) is None and rep.warts[-1].kind == "malformed-xml"


def test_duplicate_images_within_a_case(tmp_path):
    fx = Fixture(tmp_path)
    img = jpeg(5)
    fx.case(
        1,
        "4a",
        [(1, svg(region(box_outline(10, 10, 40, 40)))), (2, svg(region(box_outline(20, 20, 60, 60))))],
        images={1: img, 2: img},
    )
    ds = load(tmp_path)
    assert [s.frame for s in ds.samples] == [1]
    assert [(w.kind, w.file) for w in ds.report.warts] == [("duplicate-image", "raw_jpg/1_2.jpg")]
    # Frames per rule describe the data before de-duplication; samples are after it.
    assert ds.report.by_rule["tirads"].frames["malignant"] == 2 and ds.report.samples == 1


def test_fingerprint_tracks_bytes_not_location(tmp_path):
    fx = Fixture(tmp_path / "a")
    fx.case(1, "4a", [(1, svg(region(box_outline(10, 10, 40, 40))))])
    fx.case(2, "2", [(1, svg(region(box_outline(10, 10, 40, 40))))])
    a = load(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = load(tmp_path / "b")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert set(a.files) == {"1.xml", "1_1.jpg", "2.xml", "2_1.jpg"}
    (tmp_path / "b" / "raw_jpg" / "2_1.jpg").write_bytes(jpeg(12345))
    assert load(tmp_path / "b").fingerprint != a.fingerprint


# ---------------------------------------------------------------------------------------------
# The real DDTI files (CI sets HFCN_DDTI_DIR=../shared/data/ddti/raw).

DDTI_DIR = os.environ.get("HFCN_DDTI_DIR")
needs_ddti = pytest.mark.skipif(not DDTI_DIR, reason="HFCN_DDTI_DIR is not set (real DDTI files not available)")


@pytest.fixture(scope="module")
def ddti():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        # Decoding every frame once is enough to find unreadable files; the second rule's
        # load skips it (and still hashes every byte for de-duplication).
        return {
            "tirads": load_dataset(DDTI_DIR, label_rule="tirads"),
            "mccnn": load_dataset(DDTI_DIR, label_rule="mccnn", verify_images=False),
        }


@pytest.mark.ddti
@needs_ddti
def test_real_counts(ddti):
    r = ddti["tirads"].report
    assert (r.cases, r.cases_skipped, r.frames) == (390, 0, 480)
    assert r.by_rule["tirads"].cases == {"benign": 52, "malignant": 246, "excluded": 92}
    assert r.by_rule["tirads"].frames == {"benign": 61, "malignant": 288, "excluded": 131}
    assert r.by_rule["mccnn"].cases == {"benign": 52, "malignant": 86, "excluded": 252}
    assert r.by_rule["mccnn"].frames == {"benign": 61, "malignant": 113, "excluded": 306}
    assert r.arrows == 8
    assert r.sample_cases == 298 and ddti["mccnn"].report.sample_cases == 138
    assert {s.label_rule for s in ddti["mccnn"].samples} == {"mccnn"}


@pytest.mark.ddti
@needs_ddti
def test_real_warts(ddti):
    r = ddti["tirads"].report
    truncated = r.warts_of("truncated-outline")
    assert sorted(w.case for w in truncated) == sorted(["54", "127", "165", "166", "176", "197", "203", "205"])
    assert all(w.action.startswith("salvaged") for w in truncated)
    assert {(w.case, w.frame) for w in r.warts_of("empty-outline")} == {
        ("62", 3),
        ("120", 1),
        ("142", 2),
        ("213", 2),
        ("230", 2),
        ("389", 1),
    }
    dropped = {Path(w.file).stem for w in r.warts_of("duplicate-image")}
    assert dropped == {"150_1", "323_1", "326_1", "349_1", "396_1", "1_2", "213_2", "230_2", "92_4"}
    kept = {s.image_path.stem for s in ddti["tirads"].samples}
    assert {"233_2", "353_2"} <= kept  # the labelled copies of the cross-case groups survive
    repeats = {w.case: w.message for w in r.warts_of("duplicate-outline")}
    assert set(repeats) == {"294", "348", "350", "359", "374", "381"} and "4 times" in repeats["348"]
    assert r.outlines == 665 - 9  # 648 parsed + 17 salvaged, less 9 verbatim repeats
    assert r.warts_of("malformed-xml") == [] and r.warts_of("missing-image") == []
    assert r.warts_of("unreadable-image") == []


@pytest.mark.ddti
@needs_ddti
def test_real_samples_are_sane(ddti):
    ds = ddti["tirads"]
    assert ds.report.dual_view_frames >= 168
    salvaged = [s for s in ds.samples if s.salvaged]
    assert {s.case_id for s in salvaged} == {"54", "127", "166", "176", "197", "203", "205"}  # 165 unlabelled
    for s in ds.samples:
        x0, y0, x1, y1 = s.bbox
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H and s.frame_size == (W, H)
        assert s.label == label_for(s.tirads, "tirads")
    image_sha1 = [sha for name, sha in ds.files.items() if name.endswith(".jpg")]
    assert len(image_sha1) == len(set(image_sha1)) == len({s.image_path for s in ds.samples})


# ---------------------------------------------------------------------------------------------
# Property: wherever the text is cut, salvage returns a prefix of each region's true points.

_coords = st.lists(st.tuples(st.integers(-5, 600), st.integers(-5, 400)), min_size=1, max_size=15)


@settings(max_examples=150, deadline=None)
@given(st.lists(_coords, min_size=1, max_size=3), st.data())
def test_salvage_returns_prefixes_wherever_the_cut(regions, data):
    text = svg(*(region(r) for r in regions))
    cut = data.draw(st.integers(0, len(text)))
    p = parse_svg(text[:cut])
    assert p.status in ("ok", "empty", "truncated")
    if cut == len(text):
        assert p.status == "ok" and [list(r.points) for r in p.regions] == [list(map(tuple, r)) for r in regions]
        return
    assert len(p.regions) <= len(regions)
    for got, true in zip(p.regions, regions):
        assert list(got.points) == [tuple(x) for x in true[: len(got.points)]]
    # Every region but the last one salvaged is complete.
    for got, true in zip(p.regions[:-1], regions):
        assert len(got.points) == len(true)


@pytest.mark.ddti
@needs_ddti
def test_real_flat_layout_reads_the_same(ddti, tmp_path):
    # The Kaggle mirror ships *.xml and *.jpg in one folder; links stand in for a copy.
    base, xml_dir, img_dir = find_ddti_layout(DDTI_DIR)
    for p in list(xml_dir.glob("*.xml")) + list(img_dir.glob("*.jpg")):
        (tmp_path / p.name).symlink_to(p)
    flat = load(tmp_path, verify_images=False)
    assert flat.fingerprint == ddti["tirads"].fingerprint
    assert [s.key for s in flat.samples] == [s.key for s in ddti["tirads"].samples]
