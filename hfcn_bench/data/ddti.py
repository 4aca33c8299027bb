"""DDTI reader: case XMLs + frames -> labelled nodule ROIs, with every wart reported once.

DDTI (Pedraza et al., "An open access thyroid ultrasound image database", Proc. SPIE 9287,
92870W, 2015) ships one ``{case}.xml`` per patient and one ``{case}_{k}.jpg`` per frame. The
XML holds the clinical fields and TI-RADS score of the *case* and one ``<mark>`` per frame
whose ``<svg>`` text is JSON (not SVG): a list of regions ``{"points": [{"x", "y"}...],
"regionType": "freehand" | "arrow"}`` in frame pixels.

Labels. DDTI has no pathology: the label is a proxy computed from the radiologist's TI-RADS
category by a *label rule* (``LABEL_RULES``), recorded in every sample and result:
``tirads`` (2-3 benign, 4a-5 malignant; the common convention) or ``mccnn`` (2-3 vs 4c-5,
4a/4b dropped; the MC-CNN paper's stricter reading). Cases without a usable TI-RADS value are
excluded and counted in the report.

Descriptors. The case's composition, echogenicity, margins and calcifications become
``Sample.descriptors`` (coarse TI-RADS categories, :mod:`.descriptors`; empty or unknown ones
masked): training targets of auxiliary heads, never a model input.

Label leak. Frames carry burned-in scanner text on the right and at the bottom, and some
show the TI-RADS score itself (e.g. 353_2: "TIRADS 2 4B"). A whole-frame classifier can read
the answer; the nodule-box ROIs used here mostly exclude those areas, but a generous
``margin`` or ``empty_outline="full-frame"`` brings them back.

Warts handled (see ``report.WART_KINDS``): malformed XML (case skipped), truncated ``<svg>``
JSON (points before the cut salvaged, or the mark skipped), empty outlines (skipped or
full-frame), byte-identical images (de-duplicated), missing/unreadable images, unknown
vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from ..errors import HfcnError
from .collection import LABEL_NAMES, CaseInfo, LoadedDataset, case_sort_key
from .descriptors import descriptor_targets
from .links import link_cases
from .report import LoadReport, RuleCounts
from .rois import (
    MIN_ROI_SIDE,
    Box,
    Sample,
    UnreadableImage,
    expand_box,
    is_dual_view,
    is_outline,
    outline_inside_fraction,
    polygon_bbox,
    read_image,
)

__all__ = [
    "LABEL_RULES",
    "TIRADS_VALUES",
    "EMPTY_OUTLINE_POLICIES",
    "TRUNCATED_POLICIES",
    "label_for",
    "check_label_rule",
    "normalize_field",
    "Region",
    "SvgParse",
    "parse_svg",
    "Frame",
    "Case",
    "parse_case_xml",
    "find_ddti_layout",
    "layout_of_xml",
    "load_ddti",
]

TIRADS_VALUES = ("2", "3", "4a", "4b", "4c", "5")

# TI-RADS category -> 0 benign / 1 malignant. A category missing from a rule is excluded.
LABEL_RULES: dict[str, dict[str, int]] = {
    "tirads": {"2": 0, "3": 0, "4a": 1, "4b": 1, "4c": 1, "5": 1},
    # MC-CNN (Song W. et al., IEEE JBHI 2019) tested on DDTI with 4c/5 as malignant against
    # benign/normal; the indeterminate 4a/4b are left out rather than forced into a class.
    "mccnn": {"2": 0, "3": 0, "4c": 1, "5": 1},
}

EMPTY_OUTLINE_POLICIES = ("skip", "full-frame")
TRUNCATED_POLICIES = ("salvage", "skip")


def check_label_rule(rule: str) -> str:
    if rule not in LABEL_RULES:
        raise HfcnError(f"unknown label rule {rule!r}", hint=f"choose one of: {', '.join(LABEL_RULES)}")
    return rule


def label_for(tirads: str | None, rule: str = "tirads") -> int | None:
    """Label of a (normalised) TI-RADS value under ``rule``; ``None`` = excluded."""
    return LABEL_RULES[check_label_rule(rule)].get(tirads) if tirads else None


# ---------------------------------------------------------------------------------------------
# Vocabulary. DDTI spells the same finding several ways ("microcalcification(s)", "ill- defined",
# "non"); keys below are matched after lower-casing and collapsing spaces/hyphens.


def _key(text: str) -> str:
    return re.sub(r"[\s\-_]+", " ", text.strip().lower()).strip()


_VOCAB: dict[str, dict[str, str | None]] = {
    "composition": {
        "solid": "solid",
        "predominantly solid": "predominantly solid",
        "predominantly cystic": "predominantly cystic",
        "cystic": "cystic",
        "spongiform": "spongiform",
        "dense": "dense",
    },
    "echogenicity": {
        "isoechogenicity": "isoechoic",
        "isoechoic": "isoechoic",
        "isoechogenic": "isoechoic",
        "hypoechogenicity": "hypoechoic",
        "hypoechoic": "hypoechoic",
        "hypoechogenic": "hypoechoic",
        "hyperechogenicity": "hyperechoic",
        "hyperechoic": "hyperechoic",
        "hyperechogenic": "hyperechoic",
        "marked hypoechogenicity": "markedly hypoechoic",
        "markedly hypoechoic": "markedly hypoechoic",
        "marked hypoechoic": "markedly hypoechoic",
    },
    # "well defined smooth" is merged with "well defined": TI-RADS (Kwak et al. 2011) scores
    # a smooth, well-defined margin as one non-suspicious category. The raw string is kept.
    "margins": {
        "well defined": "well-defined",
        "well defined smooth": "well-defined",
        "smooth": "well-defined",
        "ill defined": "ill-defined",
        "microlobulated": "microlobulated",
        "macrolobulated": "macrolobulated",
        "spiculated": "spiculated",
    },
    "calcifications": {
        "microcalcifications": "microcalcifications",
        "microcalcification": "microcalcifications",
        "macrocalcifications": "macrocalcifications",
        "macrocalcification": "macrocalcifications",
        "non": "none",
        "none": "none",
        "no": "none",
    },
    # "u" (unknown) is a value DDTI uses on purpose, not a typo: it maps to None quietly.
    "sex": {"f": "F", "m": "M", "u": None, "unknown": None},
}


def normalize_field(name: str, raw: str | None) -> tuple[str | int | None, bool]:
    """Canonical value of one DDTI field and whether ``raw`` was understood.

    Empty text is a valid "not recorded" (``None``, True). Unknown text gives (``None``,
    False) so the caller can report it. ``tirads`` accepts "4A", "4 a", "TI-RADS 4a".
    """
    text = (raw or "").strip()
    if not text:
        return None, True
    if name == "tirads":
        t = re.sub(r"^(ti\s*-?\s*rads|tr)\s*", "", text.lower()).replace(" ", "")
        return (t, True) if t in TIRADS_VALUES else (None, False)
    if name == "age":
        try:
            age = int(float(text))
        except ValueError:
            return None, False
        return (age, True) if 0 <= age <= 120 else (None, False)
    vocab = _VOCAB.get(name)
    if vocab is None:
        return text, True
    k = _key(text)
    return (vocab[k], True) if k in vocab else (None, False)


# ---------------------------------------------------------------------------------------------
# The <svg> JSON.

_POINT = re.compile(r'\{\s*"x"\s*:\s*(-?\d+(?:\.\d+)?)\s*,\s*"y"\s*:\s*(-?\d+(?:\.\d+)?)\s*\}')
_REGION_TYPE = re.compile(r'"regionType"\s*:\s*"([^"]*)"')


@dataclass(frozen=True)
class Region:
    points: tuple[tuple[int, int], ...]
    region_type: str = "freehand"
    complete: bool = True

    @property
    def is_outline(self) -> bool:
        return is_outline(self.region_type, self.points)


@dataclass(frozen=True)
class SvgParse:
    """``status``: ``ok``, ``empty`` (no text or an empty list) or ``truncated`` (not valid
    JSON; ``regions`` then holds what was salvaged); ``error`` is the JSON error text."""

    status: str
    regions: tuple[Region, ...] = ()
    chars: int = 0
    error: str = ""


def _as_point(p) -> tuple[int, int]:
    return (int(round(float(p["x"]))), int(round(float(p["y"]))))


def parse_svg(text: str | None) -> SvgParse:
    """Parse one mark's region list, salvaging what precedes a cut.

    Eight DDTI marks are cut at exactly 2,500 characters (a column width in the original
    database), mid-way through their last region. Salvage splits the text on ``"points"``
    (one chunk per region) and keeps, per chunk, every *complete* ``{"x": .., "y": ..}`` pair;
    the region cut short is marked ``complete=False``. A salvaged chunk without its
    ``regionType`` (it came after the cut) counts as freehand: arrows have 2 points and are
    filtered out by the >= 3-point rule anyway.
    """
    raw = text or ""
    stripped = raw.strip()
    if not stripped:
        return SvgParse("empty", (), len(raw))
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as exc:
        regions = []
        chunks = stripped.split('"points"')[1:]
        for i, chunk in enumerate(chunks):
            pts = tuple((int(round(float(x))), int(round(float(y)))) for x, y in _POINT.findall(chunk))
            rtype = _REGION_TYPE.search(chunk)
            # Only the last chunk can be the one the cut went through.
            complete = rtype is not None or i < len(chunks) - 1
            regions.append(Region(pts, rtype.group(1) if rtype else "freehand", complete))
        return SvgParse("truncated", tuple(regions), len(raw), f"{exc.msg} at char {exc.pos}")
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        return SvgParse("truncated", (), len(raw), f"expected a JSON list of regions, got {type(data).__name__}")
    if not data:
        return SvgParse("empty", (), len(raw))
    regions = []
    for item in data:
        try:
            pts = tuple(_as_point(p) for p in item.get("points", []))
        except (TypeError, KeyError, ValueError, AttributeError):
            return SvgParse("truncated", tuple(regions), len(raw), "a region's points are not {x, y} numbers")
        regions.append(Region(pts, str(item.get("regionType") or "freehand")))
    return SvgParse("ok", tuple(regions), len(raw))


# ---------------------------------------------------------------------------------------------
# Case XML.

_FIELDS = ("age", "sex", "composition", "echogenicity", "margins", "calcifications", "tirads")


@dataclass
class Frame:
    index: int
    svg: SvgParse


@dataclass
class Case:
    """One parsed case XML: normalised fields, raw strings, one ``Frame`` per ``<mark>``."""

    case_id: str
    xml_path: Path
    sha1: str
    number: str
    fields: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    report_eco: str = ""
    frames: list[Frame] = field(default_factory=list)

    @property
    def tirads(self) -> str | None:
        return self.fields.get("tirads")

    def label(self, rule: str = "tirads") -> int | None:
        return label_for(self.tirads, rule)


_PARSER_OPTS = dict(recover=False, resolve_entities=False, no_network=True, huge_tree=False)


def parse_case_xml(path: str | Path, report: LoadReport | None = None, rel: str | None = None) -> Case | None:
    """Parse ``{case}.xml``; on malformed XML return ``None`` and record a wart naming the file.

    The case id is the file name's stem (DDTI's ``<number>`` equals it; a mismatch is
    reported). Unknown vocabulary becomes ``None`` with an ``unknown-value`` wart.
    """
    path = Path(path)
    rel = rel or path.name
    report = report if report is not None else LoadReport(str(path.parent), "ddti", "tirads")
    case_id = path.stem
    try:
        data = path.read_bytes()
    except OSError as exc:
        report.add("malformed-xml", rel, f"cannot read: {exc.strerror or exc}", "case skipped", case=case_id)
        return None
    try:
        root = etree.fromstring(data, parser=etree.XMLParser(**_PARSER_OPTS))
    except etree.XMLSyntaxError as exc:
        report.add("malformed-xml", rel, f"XML syntax error: {exc.msg}", "case skipped", case=case_id)
        return None
    if root.tag != "case":
        report.add("malformed-xml", rel, f"root element is <{root.tag}>, expected <case>", "case skipped", case=case_id)
        return None

    number = (root.findtext("number") or "").strip()
    if number and number != case_id:
        report.add(
            "case-number-mismatch",
            rel,
            f"<number>{number}</number> in {path.name}",
            f"case id {case_id!r} (the file name) used",
            case=case_id,
        )
    case = Case(case_id, path, hashlib.sha1(data).hexdigest(), number or case_id)
    for name in _FIELDS:
        text = root.findtext(name)
        case.raw[name] = text or ""
        value, ok = normalize_field(name, text)
        if not ok:
            action = "case left unlabelled" if name == "tirads" else "field treated as empty"
            report.add("unknown-value", rel, f"<{name}> {text.strip()!r} is not a known value", action, case=case_id)
        case.fields[name] = value
    case.report_eco = (root.findtext("reporteco") or "").strip()

    seen: set[int] = set()
    for m, mark in enumerate(root.findall("mark"), start=1):
        image = (mark.findtext("image") or "").strip()
        try:
            index = int(image)
        except ValueError:
            report.add("bad-mark", rel, f"<mark> #{m} has <image>{image!r}</image>", "mark skipped", case=case_id)
            continue
        if index in seen:
            report.add(
                "bad-mark",
                rel,
                f"<mark> #{m} repeats <image>{index}</image>",
                "mark skipped",
                case=case_id,
                frame=index,
            )
            continue
        seen.add(index)
        case.frames.append(Frame(index, parse_svg(mark.findtext("svg"))))
    return case


# ---------------------------------------------------------------------------------------------
# Layout and loading.

_IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_IMAGE_NAME = re.compile(r"^(.+)_(\d+)$")


def find_ddti_layout(root: str | Path) -> tuple[Path, Path, Path]:
    """(base, xml_dir, image_dir) for either DDTI layout.

    Accepts ``raw/`` (``xml/`` + ``raw_jpg/``, as in the repository copies and the synthetic
    output), its parent (``…/ddti`` containing ``raw/``), or the flat layout of the original
    download and the Kaggle mirror (``{case}.xml`` next to ``{case}_{k}.jpg``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise HfcnError(
            f"{root} is not a directory",
            hint="point at DDTI's raw/ folder (xml/ + raw_jpg/) or a flat folder of *.xml + *.jpg",
        )
    for base in (root, root / "raw"):
        if (base / "xml").is_dir():
            return base, base / "xml", _image_dir(base)
        if base.is_dir() and any(p.suffix.lower() == ".xml" for p in base.iterdir()):
            return base, base, base
    raise HfcnError(
        f"no DDTI case XMLs in {root}",
        hint="expected raw/ with xml/ and raw_jpg/, or a flat folder of {case}.xml + {case}_{k}.jpg",
    )


def _image_dir(base: Path) -> Path:
    return next((base / d for d in ("raw_jpg", "jpg", "images") if (base / d).is_dir()), base)


def layout_of_xml(xml_path: str | Path) -> tuple[Path, Path]:
    """(base, image_dir) of one case XML: ``raw/xml/N.xml`` has its frames in ``raw/raw_jpg``
    (or ``jpg/``, ``images/``); a flat folder has them beside the XML."""
    xml_path = Path(xml_path)
    folder = xml_path.parent
    if folder.name == "xml" and _image_dir(folder.parent) != folder.parent:
        return folder.parent, _image_dir(folder.parent)
    return folder, folder


_sort_key = case_sort_key


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.name


@dataclass
class _FrameEntry:
    case: Case
    index: int
    path: Path
    rel: str
    sha1: str
    size: tuple[int, int]
    rois: list  # (polygon | None, box, region index, roi_kind, salvaged)


def _check_policy(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise HfcnError(f"{name}={value!r} is not one of {allowed}")


def _scan_images(img_dir: Path, base: Path, report: LoadReport) -> dict[tuple[str, int], Path]:
    """Frame images by (case id, index). An entry the file system cannot even stat (a symlink
    loop, a vanished file) is a wart naming it, not a traceback."""
    images: dict[tuple[str, int], Path] = {}
    for entry in sorted(os.scandir(img_dir), key=lambda e: e.name):
        stem, ext = os.path.splitext(entry.name)
        m = _IMAGE_NAME.match(stem)
        if not (m and ext.lower() in _IMAGE_EXTS):
            continue
        key = (m.group(1), int(m.group(2)))
        try:
            is_file = entry.is_file()
        except OSError as exc:
            report.add(
                "unreadable-image",
                _rel(Path(entry.path), base),
                f"cannot read: {exc.strerror or exc}",
                "frame skipped",
                case=key[0],
                frame=key[1],
            )
            continue
        if is_file:
            images.setdefault(key, Path(entry.path))
    return images


def load_ddti(
    root: str | Path,
    label_rule: str = "tirads",
    margin: float = 0.0,
    empty_outline: str = "skip",
    truncated: str = "salvage",
    verify_images: bool = True,
    warn: bool = True,
    progress: Callable[[int, int], None] | None = None,
    only: Sequence[str | Path] | None = None,
    keep_unlabelled: bool = False,
    link_near_duplicates: bool = True,
) -> LoadedDataset:
    """Read a DDTI-format folder into labelled ROI samples plus a load report.

    Args:
        root: DDTI ``raw/`` (``xml/`` + ``raw_jpg/``), its parent, or a flat folder.
        label_rule: key of ``LABEL_RULES``; stored in every sample.
        margin: grow each outline's box by this fraction of its size per side (0 = the
            paper's tight nodule box).
        empty_outline: ``skip`` frames without an outline, or use them as ``full-frame`` ROIs
            (beware of burned-in text; see the module docstring).
        truncated: ``salvage`` the points before a cut in the ``<svg>`` JSON, or ``skip`` the mark.
        verify_images: decode every image once (finds unreadable files; ~1 s for DDTI).
        warn: emit one ``DataWarning`` summarising the warts.
        progress: called as ``progress(done, total)`` after each case.
        only: read just these case XMLs (paths inside ``root``'s XML folder, or file names):
            what ``predict`` uses, so one XML gives the ROIs training gave it. Orphan images
            are not reported then.
        keep_unlabelled: also return the ROIs of cases the label rule excludes, with
            ``label=None`` (for prediction; never for training or scoring).
        link_near_duplicates: also link cases whose frames are near-duplicates (re-encoded,
            resized, cropped, a pane, brightness; :func:`.links.link_cases`, cached by content).
            Off only where no split is built from the load (prediction, scoring a stored split).

    Geometry: an outline whose area lies mostly outside its frame, or an ROI box with a side
    under :data:`~hfcn_bench.data.rois.MIN_ROI_SIDE`, is a wart and its ROI is skipped (an
    outline partly outside is clipped and reported). Case files with one case id (``13.xml``
    beside ``13.XML``, or the same ``<number>``) keep the first, by file name. Byte-identical
    frames keep one copy; copies under both labels are all dropped; cases sharing a frame, or
    holding near-duplicate frames, are *linked* and travel together in every split
    (``Sample.unit``).
    """
    check_label_rule(label_rule)
    _check_policy("empty_outline", empty_outline, EMPTY_OUTLINE_POLICIES)
    _check_policy("truncated", truncated, TRUNCATED_POLICIES)
    if not 0 <= margin < float("inf"):  # NaN fails this too
        raise HfcnError(f"margin must be a finite number >= 0, got {margin}")
    base, xml_dir, img_dir = find_ddti_layout(root)
    options = {"margin": margin, "empty_outline": empty_outline, "truncated": truncated}
    report = LoadReport(str(base), "ddti", label_rule, options=options)
    images = _scan_images(img_dir, base, report)

    xml_paths = sorted(
        (p for p in xml_dir.iterdir() if p.suffix.lower() == ".xml" and p.is_file()),
        key=lambda p: (_sort_key(p.stem), p.name),
    )
    if only is not None:
        wanted = {Path(p).name for p in only}
        xml_paths = [p for p in xml_paths if p.name in wanted]
    report.case_files = len(xml_paths)
    cases: list[Case] = []
    skipped_ids: set[str] = set()
    frames: list[_FrameEntry] = []
    by_id: dict[str, Case] = {}
    by_number: dict[str, Case] = {}
    for n, xml_path in enumerate(xml_paths, start=1):
        case = parse_case_xml(xml_path, report, _rel(xml_path, base))
        if case is None:
            report.cases_skipped += 1
            skipped_ids.add(xml_path.stem)
        else:
            first = by_id.get(case.case_id) or by_number.get(case.number)
            if first is not None:
                report.cases_skipped += 1
                what = "case id" if first.case_id == case.case_id else f"<number>{case.number}</number>"
                report.add(
                    "duplicate-case",
                    _rel(xml_path, base),
                    f"same {what} as {_rel(first.xml_path, base)}",
                    f"skipped; kept {_rel(first.xml_path, base)}",
                    case=case.case_id,
                )
            else:
                by_id[case.case_id] = by_number[case.number] = case
                cases.append(case)
                frames.extend(
                    _read_frames(case, images, base, img_dir, report, margin, empty_outline, truncated, verify_images)
                )
        if progress:
            progress(n, len(xml_paths))
    report.cases = len(cases)
    report.frames = sum(len(c.frames) for c in cases)

    if only is None:
        referenced = {(c.case_id, f.index) for c in cases for f in c.frames}
        for key, path in sorted(images.items(), key=lambda kv: (_sort_key(kv[0][0]), kv[0][1])):
            if key not in referenced and key[0] not in skipped_ids:
                report.add(
                    "orphan-image",
                    _rel(path, base),
                    "no case XML refers to this image",
                    "ignored",
                    case=key[0],
                    frame=key[1],
                )

    for rule in LABEL_RULES:
        counts = RuleCounts(rule)
        for c in cases:
            counts.cases[_label_name(c.label(rule))] += 1
        for f in frames:
            name = _label_name(f.case.label(rule))
            counts.frames[name] += 1
            counts.rois[name] += len(f.rois)
        report.by_rule[rule] = counts

    kept, shared = _deduplicate(frames, label_rule, report)
    samples: list[Sample] = []
    files: dict[str, str] = {}
    for f in kept:
        if f.rois:
            report.frames_usable += 1
        label = f.case.label(label_rule)
        if (label is None and not keep_unlabelled) or not f.rois:
            continue
        descriptors = descriptor_targets(f.case.fields)
        for polygon, box, region, kind, salvaged in f.rois:
            samples.append(
                Sample(
                    f.case.case_id,
                    f.index,
                    f.path,
                    polygon,
                    box,
                    label,
                    label_rule,
                    f.size,
                    region,
                    kind,
                    f.case.tirads,
                    salvaged,
                    descriptors=descriptors,
                )
            )
        files[f.path.name] = f.sha1
        files[f.case.xml_path.name] = f.case.sha1
    labelled = [s for s in samples if s.label is not None]
    report.samples = len(labelled)
    for s in labelled:
        report.samples_by_label[LABEL_NAMES[s.label]] += 1
    report.sample_cases = len({s.case_id for s in labelled})
    infos = {
        c.case_id: CaseInfo(
            c.case_id, c.label(label_rule), c.tirads, dict(c.fields), dict(c.raw), _rel(c.xml_path, base), len(c.frames)
        )
        for c in cases
    }
    ds = LoadedDataset(base, "ddti", label_rule, options, samples, infos, files, report)
    link_cases(ds, shared, near_duplicates=link_near_duplicates)
    if warn:
        report.warn_summary(stacklevel=3)
    return ds


def _label_name(label: int | None) -> str:
    return "excluded" if label is None else LABEL_NAMES[label]


def _outline_geometry(
    r: Region,
    size: tuple[int, int],
    margin: float,
    xml_rel: str,
    case: Case,
    frame: int,
    region: int,
    report: LoadReport,
) -> Box | None:
    """The ROI box of one outline, or ``None`` (with a wart) when the outline is mostly outside
    the frame or its box is too small to classify."""
    raw_box = polygon_bbox(r.points)
    inside = outline_inside_fraction(r.points, size)
    where = f"outline {region} ({len(r.points)} points, box x {raw_box[0]}..{raw_box[2]}, y {raw_box[1]}..{raw_box[3]})"
    if inside < 0.5:
        report.add(
            "outline-outside-frame",
            xml_rel,
            f"{where}: {100 * (1 - inside):.0f}% of its area lies outside the {size[0]}x{size[1]} frame",
            "ROI skipped",
            case=case.case_id,
            frame=frame,
        )
        return None
    if inside < 0.9:
        report.add(
            "outline-outside-frame",
            xml_rel,
            f"{where}: {100 * (1 - inside):.0f}% of its area lies outside the {size[0]}x{size[1]} frame",
            "clipped to the frame",
            case=case.case_id,
            frame=frame,
        )
    box = expand_box(raw_box, margin, size)
    w, h = box[2] - box[0], box[3] - box[1]
    if min(w, h) < MIN_ROI_SIDE:
        report.add(
            "tiny-roi",
            xml_rel,
            f"{where}: ROI box {w}x{h} px in the frame, under the {MIN_ROI_SIDE}-px minimum side",
            "ROI skipped",
            case=case.case_id,
            frame=frame,
        )
        return None
    return box


def _read_frames(
    case: Case,
    images,
    base: Path,
    img_dir: Path,
    report: LoadReport,
    margin: float,
    empty_outline: str,
    truncated: str,
    verify: bool,
) -> list[_FrameEntry]:
    out = []
    xml_rel = _rel(case.xml_path, base)
    for frame in case.frames:
        path = images.get((case.case_id, frame.index))
        if path is None:
            missing = img_dir / f"{case.case_id}_{frame.index}.jpg"
            if report.warts_of_file(_rel(missing, base)):
                continue  # already reported as unreadable by the scan (e.g. a symlink loop)
            report.add(
                "missing-image",
                _rel(missing, base),
                f"{xml_rel} refers to frame {frame.index}, no such image file",
                "frame skipped",
                case=case.case_id,
                frame=frame.index,
            )
            continue
        rel = _rel(path, base)
        try:
            sha1, size = read_image(path, verify)
        except UnreadableImage as exc:
            report.add("unreadable-image", rel, str(exc), "frame skipped", case=case.case_id, frame=frame.index)
            continue
        entry = _FrameEntry(case, frame.index, path, rel, sha1, size, [])
        svg = frame.svg
        report.arrows += sum(1 for r in svg.regions if r.region_type.lower() == "arrow")
        for r in svg.regions:
            if r.region_type.lower() != "arrow" and len(r.points) < 3 and r.complete:
                report.add(
                    "short-outline",
                    xml_rel,
                    f"a {r.region_type} region with {len(r.points)} point(s)",
                    "region ignored",
                    case=case.case_id,
                    frame=frame.index,
                )
        # DDTI repeats an outline verbatim in a few frames (up to 4 copies in 348_1); identical
        # samples would only over-weight that nodule, so one copy is kept.
        outlines, copies = [], {}
        for r in svg.regions:
            if r.is_outline:
                if r.points not in copies:
                    outlines.append(r)
                copies[r.points] = copies.get(r.points, 0) + 1
        for r in outlines:
            if copies[r.points] > 1:
                report.add(
                    "duplicate-outline",
                    xml_rel,
                    f"an outline of {len(r.points)} points appears {copies[r.points]} times",
                    "one copy kept",
                    case=case.case_id,
                    frame=frame.index,
                )
        if svg.status == "truncated":
            n_pts = sum(len(r.points) for r in outlines)
            msg = f"<svg> JSON is cut after {svg.chars} characters"
            if truncated == "skip":
                report.add(
                    "truncated-outline",
                    xml_rel,
                    msg,
                    "mark skipped (truncated='skip')",
                    case=case.case_id,
                    frame=frame.index,
                )
                outlines = []
            elif outlines:
                partial = sum(1 for r in outlines if not r.complete)
                report.add(
                    "truncated-outline",
                    xml_rel,
                    msg,
                    f"salvaged {len(outlines)} outline(s), {n_pts} points"
                    + (f"; {partial} cut short" if partial else ""),
                    case=case.case_id,
                    frame=frame.index,
                )
            else:
                report.add(
                    "truncated-outline",
                    xml_rel,
                    msg,
                    "mark skipped (no outline of >= 3 points before the cut)",
                    case=case.case_id,
                    frame=frame.index,
                )
            if not outlines:
                out.append(entry)
                continue
        boxes: list[Box] = []
        for i, r in enumerate(outlines):
            boxes.append(polygon_bbox(r.points))
            box = _outline_geometry(r, size, margin, xml_rel, case, frame.index, i, report)
            if box is not None:
                entry.rois.append((r.points, box, i, "outline", svg.status == "truncated"))
        report.outlines += len(outlines)
        if is_dual_view(boxes, size[0]):
            report.dual_view_frames += 1
        if not outlines and svg.status != "truncated":
            what = "empty <svg>" if svg.status == "empty" else "only arrow/short regions"
            if empty_outline == "full-frame":
                entry.rois.append((None, (0, 0, size[0], size[1]), 0, "full-frame", False))
                action = "whole frame used as ROI (empty_outline='full-frame')"
            else:
                action = "frame skipped (empty_outline='skip')"
            report.add(
                "empty-outline", xml_rel, f"{what}, no nodule outline", action, case=case.case_id, frame=frame.index
            )
        out.append(entry)
    return out


def _deduplicate(
    frames: list[_FrameEntry], label_rule: str, report: LoadReport
) -> tuple[list[_FrameEntry], list[list[str]]]:
    """Keep one frame per distinct image bytes; return the kept frames and, per distinct
    image held by several cases, the ids of those cases (what links them).

    The copy kept is the first *useful* one: labelled under the active rule, with an outline,
    then by case number and frame. Plain "first by case number" would keep 150_1 (unlabelled)
    and drop 233_2, the only labelled copy of DDTI's largest duplicate group. Copies whose
    cases carry *different* labels under the rule are a conflict: no label can be trusted for
    that image, so every copy is dropped."""
    order = sorted(
        frames,
        key=lambda f: (f.case.label(label_rule) is None, not f.rois, _sort_key(f.case.case_id), f.index),
    )
    groups: dict[str, list[_FrameEntry]] = {}
    for f in order:
        groups.setdefault(f.sha1, []).append(f)
    dropped: set[int] = set()
    shared: list[list[str]] = []
    for copies in groups.values():
        if len(copies) == 1:
            continue
        cases = list(dict.fromkeys(f.case.case_id for f in copies))
        if len(cases) > 1:
            shared.append(cases)
        labels = {f.case.label(label_rule) for f in copies} - {None}
        if len(labels) > 1:
            names = ", ".join(f"{f.rel} ({_label_name(f.case.label(label_rule))})" for f in copies)
            for f in copies:
                dropped.add(id(f))
                report.add(
                    "label-conflict",
                    f.rel,
                    f"the same image bytes are labelled benign and malignant: {names}",
                    "every copy dropped",
                    case=f.case.case_id,
                    frame=f.index,
                )
            continue
        keep = copies[0]
        for f in copies[1:]:
            dropped.add(id(f))
            tag = "labelled" if f.case.label(label_rule) is not None else "unlabelled"
            report.add(
                "duplicate-image",
                f.rel,
                f"same bytes as {keep.rel} ({tag} case {f.case.case_id})",
                f"dropped; kept {keep.rel}",
                case=f.case.case_id,
                frame=f.index,
            )
    return [f for f in frames if id(f) not in dropped], shared
