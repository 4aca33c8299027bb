"""Folder format for users' own images: the class is the folder name.

Layout::

    root/
      benign/     img1.png, img2.jpg, ...        each file is its own case
                  patient7/a.png, patient7/b.png  a sub-folder is one case (all its images
                                                  stay on one side of a split)
                  masks/img1.png                  optional nodule masks, or img1_mask.png
      malignant/  ...

or, for a dataset that ships its own split, the same class folders under ``train/`` and
``test/``::

    root/train/benign/..., root/train/malignant/..., root/test/benign/..., root/test/malignant/...

Each sample of such a dataset records its side (``Sample.side``: ``train`` or ``test``), so
``splits.given_split`` can train on exactly ``train/`` and score on exactly ``test/``; other
splits pool both sides.

Class folders need not be called ``benign``/``malignant``: ``classes`` maps any folder names to
the two classes (``"benin=benign,malin=malignant"``, or a dict), and the mapping is recorded in
the dataset's options (so a run folder reloads the data the same way).

Without a mask the whole image is the ROI (for images already cropped to the nodule). With a
mask, the sample gets the nodule *outline*: the external contour of the mask's largest region
of non-zero pixels (``contour.mask_outline_polygon``), as a polygon in image pixels in
``Sample.polygon`` like DDTI's annotated outlines; the ROI is that outline's box (+ margin). A
mask with no foreground, one that cannot be decoded or one whose size differs from its image's
is a wart naming the file, and its image is used whole, without an outline. Labels come from
the folder, so the label rule is recorded as ``folder``.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..errors import HfcnError
from .collection import LABEL_NAMES, CaseInfo, LoadedDataset
from .contour import mask_outline_polygon
from .links import link_cases
from .report import DataWarning, LoadReport, RuleCounts
from .rois import MIN_ROI_SIDE, Sample, UnreadableImage, expand_box, open_image, polygon_bbox, read_image

__all__ = [
    "CLASS_DIRS",
    "IMAGE_EXTS",
    "SIDES",
    "is_folder_dataset",
    "load_folder",
    "mask_bbox",
    "parse_classes",
    "format_classes",
    "has_class_folders",
    "unmapped_folder_error",
]

CLASS_DIRS = {"benign": 0, "malignant": 1}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# The sub-folders of a dataset that ships its own split, in the order they are read (train
# first: an image of test/ byte-identical to one of train/ is the copy dropped).
SIDES = ("train", "test")
_MASK_DIR = "masks"
_MASK_SUFFIX = "_mask"
_EXAMPLE = "--classes benin=benign,malin=malignant"


def parse_classes(spec: str | Mapping[str, str] | None) -> dict[str, str] | None:
    """A class-folder mapping as ``{folder name (lower case): "benign" | "malignant"}``.

    ``spec``: ``"benin=benign,malin=malignant"`` (the ``--classes`` text), a dict of the same,
    or ``None`` (no mapping: the folders are called ``benign``/``malignant``). Several folders
    may map to one class. A malformed item, a target other than benign/malignant, a folder
    named twice, or a name that is a path or a split folder is an :class:`HfcnError` saying
    which."""
    if spec is None:
        return None
    shown = spec if isinstance(spec, str) else format_classes(spec) if isinstance(spec, Mapping) else repr(spec)
    if isinstance(spec, str):
        pairs = []
        for item in spec.split(","):
            if not item.strip():
                continue
            src, sep, dst = item.partition("=")
            if not sep or not src.strip() or not dst.strip():
                raise HfcnError(f"--classes {shown!r}: {item.strip()!r} is not FOLDER=CLASS", hint=f"e.g. {_EXAMPLE}")
            pairs.append((src.strip(), dst.strip()))
    elif isinstance(spec, Mapping):
        pairs = [(str(k).strip(), str(v).strip()) for k, v in spec.items()]
    else:
        raise HfcnError(f"classes must be FOLDER=CLASS text or a dict, got {type(spec).__name__}")
    if not pairs:
        raise HfcnError(f"--classes {shown!r} maps no folder", hint=f"e.g. {_EXAMPLE}")
    out: dict[str, str] = {}
    for src, dst in pairs:
        target = dst.lower()
        if target not in CLASS_DIRS:
            raise HfcnError(
                f"--classes {shown!r}: {src}={dst} names an unknown class {dst!r}",
                hint="a folder maps to benign or malignant, e.g. " + _EXAMPLE,
            )
        if "/" in src or "\\" in src or src in (".", ".."):
            raise HfcnError(f"--classes {shown!r}: {src!r} is not a folder name (give the class folder's own name)")
        key = src.lower()
        if key in SIDES:
            raise HfcnError(
                f"--classes {shown!r}: {src}/ is a split folder, not a class folder",
                hint="map the class folders inside train/ and test/",
            )
        if key in out:
            raise HfcnError(
                f"--classes {shown!r}: folder {src!r} is mapped twice (to {out[key]} and to {target})",
                hint="name each class folder once",
            )
        out[key] = target
    return out


def format_classes(classes: Mapping[str, str]) -> str:
    """``{"benin": "benign", ...}`` as ``benin=benign,...`` (the ``--classes`` text)."""
    return ",".join(f"{k}={v}" for k, v in classes.items())


def _names(classes: Mapping[str, str] | None) -> dict[str, int]:
    """folder name (lower case) -> label."""
    if classes is None:
        return dict(CLASS_DIRS)
    return {k: CLASS_DIRS[v] for k, v in classes.items()}


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _class_dirs(folder: Path, classes: Mapping[str, str] | None = None) -> dict[str, Path]:
    names = _names(classes)
    return {p.name.lower(): p for p in _subdirs(folder) if p.name.lower() in names}


def _sides(root: Path) -> dict[str, Path] | None:
    """``{"train": ..., "test": ...}`` when ``root`` has both sub-folders, else None."""
    found = {p.name.lower(): p for p in _subdirs(root) if p.name.lower() in SIDES}
    return {s: found[s] for s in SIDES} if len(found) == len(SIDES) else None


def has_class_folders(root: str | Path, classes: str | Mapping[str, str] | None = None) -> bool:
    """True when ``root`` holds at least one class folder under ``classes`` (the default
    names without), at its top or inside its ``train/`` and ``test/``."""
    root = Path(root).expanduser()
    classes = parse_classes(classes)
    if _class_dirs(root, classes):
        return True
    sides = _sides(root)
    return bool(sides) and any(_class_dirs(p, classes) for p in sides.values())


def is_folder_dataset(root: str | Path) -> bool:
    """True when ``root`` has a ``benign/`` or ``malignant/`` sub-folder, or ``train/`` and
    ``test/`` sub-folders (a dataset with its own split, whatever its class folders are called:
    the loader says what it found and how to map it)."""
    root = Path(root)
    return bool(_class_dirs(root)) or _sides(root) is not None


def _is_image(p: Path) -> bool:
    # Path.is_file() is False (not an error) for a symlink loop: such an entry is reported by
    # _listing as unreadable instead of vanishing.
    return p.suffix.lower() in IMAGE_EXTS and not p.stem.endswith(_MASK_SUFFIX) and p.is_file()


def _find_mask(img: Path) -> Path | None:
    for cand_dir, stem in ((img.parent / _MASK_DIR, img.stem), (img.parent, img.stem + _MASK_SUFFIX)):
        for ext in IMAGE_EXTS:
            cand = cand_dir / f"{stem}{ext}"
            if cand.is_file():
                return cand
    return None


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Box (x0, y0, x1, y1), exclusive, of the non-zero pixels; ``None`` if there are none."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _listing(folder: Path, root: Path, report: LoadReport) -> list[Path]:
    """Entries of ``folder`` sorted by name; image-named entries that cannot be read as files
    (a symlink loop, a dangling link) are reported, never silently passed over."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS and not p.is_file() and not p.is_dir():
            try:
                p.stat()
                why = "not a regular file"
            except OSError as exc:
                why = f"cannot read: {exc.strerror or exc}"
            report.add("unreadable-image", p.relative_to(root).as_posix(), why, "image skipped")
            continue
        out.append(p)
    return out


def _not_read(p: Path, root: Path, report: LoadReport, where: str) -> None:
    """Report an entry of a class or case folder that is not read: a hidden one, a folder inside a
    case folder, a file that is not an image of ``IMAGE_EXTS`` (a DICOM, a text file)."""
    rel = p.relative_to(root).as_posix()
    if p.is_dir():
        why = "a hidden folder" if where == "hidden" else "a folder inside a case folder (cases are one level deep)"
        report.add("ignored-folder", rel + "/", f"{rel}/ is {why}", "not read")
    elif p.exists():
        why = (
            "a hidden file"
            if where == "hidden"
            else f"not an image the folder format reads ({', '.join(IMAGE_EXTS)})"
            + ("; convert DICOM files to PNG first" if p.suffix.lower() in (".dcm", ".dicom") else "")
        )
        report.add("skipped-file", rel, f"{rel} is {why}", "not read")
    elif p.suffix.lower() not in IMAGE_EXTS:  # (image names that cannot be read: _listing reports them)
        report.add("skipped-file", rel, f"{rel} cannot be read (a link that leads nowhere?)", "not read")


def _no_class_folder(root: Path, classes: dict[str, str] | None, sides: dict[str, Path] | None) -> HfcnError:
    """The error for a root without any class folder: what is there, and how to map it."""
    where = [root] if sides is None else list(sides.values())
    seen = sorted({p.name for w in where for p in _subdirs(w) if p.name != _MASK_DIR})
    place = str(root) if sides is None else f"{root}/train and {root}/test"
    expected = "benign/ or malignant/" if classes is None else ", ".join(f"{k}/" for k in classes)
    found = f"; sub-folders found: {', '.join(s + '/' for s in seen)}" if seen else " (no sub-folder at all)"
    hint = (
        "folder format: root/benign/* and root/malignant/* (optional masks/), or the same under root/train "
        "and root/test"
    )
    if seen and classes is None:
        hint = (
            f"map the class folders to benign/malignant, e.g. --classes {seen[0]}=benign"
            + (f",{seen[1]}=malignant" if len(seen) > 1 else "")
            + "; "
            + hint
        )
    return HfcnError(f"{place} has no class folder ({expected}){found}", hint=hint)


def unmapped_folder_error(root: str | Path) -> HfcnError | None:
    """For a folder that is neither DDTI nor a folder set with the default class names: the
    folder format's error (what class folders it has, how to map them) when ``root`` has
    sub-folders holding images, else ``None``."""
    root = Path(root).expanduser()
    for p in _subdirs(root):
        try:
            if any(q.suffix.lower() in IMAGE_EXTS for q in p.iterdir()):
                return _no_class_folder(root, None, None)
        except OSError:
            continue
    return None


def load_folder(
    root: str | Path,
    margin: float = 0.0,
    empty_outline: str = "skip",
    verify_images: bool = True,
    warn: bool = True,
    progress: Callable[[int, int], None] | None = None,
    classes: str | Mapping[str, str] | None = None,
    link_near_duplicates: bool = True,
) -> LoadedDataset:
    """Read the class folders of ``root`` (or of ``root/train`` and ``root/test``) into ROI
    samples (see the module docstring).

    ``classes`` maps folder names to benign/malignant (:func:`parse_classes`); without it the
    folders are ``benign/`` and ``malignant/``. A mapped folder found nowhere, or no class
    folder at all, is an :class:`HfcnError` naming what is there. ``empty_outline`` is
    accepted for the loaders' common signature but does not apply: a mask with no foreground
    falls back to the whole image. Duplicates, unreadable images and masks are reported as in
    the DDTI reader. Byte-identical images keep the first copy (``train/`` is read before
    ``test/``) and link their cases (one split unit), as do near-duplicate images of different
    cases (``link_near_duplicates``, see ``load_ddti``); identical bytes under both labels drop
    every copy (``label-conflict``); sub-folders that are not class (or split) folders are
    listed as ``ignored-folder``, and so are hidden folders (``.ipynb_checkpoints/``) and
    folders inside a case folder; files that are not images (a DICOM, a text file) and hidden
    files are listed as ``skipped-file``; an outline box (or an image used whole) with a side
    under ``MIN_ROI_SIDE`` skips its image (``tiny-roi``).
    """
    root = Path(root).expanduser()
    classes = parse_classes(classes)
    names = _names(classes)
    if empty_outline not in ("skip", "full-frame"):
        raise HfcnError(f"empty_outline={empty_outline!r} is not one of ('skip', 'full-frame')")
    if not 0 <= margin < float("inf"):  # NaN fails this too
        raise HfcnError(f"margin must be a finite number >= 0, got {margin}")
    flat = _class_dirs(root, classes)
    sides = None if flat else _sides(root)
    # where the class folders are: [(side or None, folder holding class folders)]
    places = [(None, root)] if sides is None else list(sides.items())
    dirs = {side: _class_dirs(folder, classes) for side, folder in places}
    if classes is not None:
        missing = [k for k in classes if not any(k in d for d in dirs.values())]
        if missing and any(dirs.values()):
            where = str(root) if sides is None else f"{root}/train or {root}/test"
            raise HfcnError(
                f"--classes {format_classes(classes)}: no {', '.join(m + '/' for m in missing)} folder in {where}",
                hint="map only folders that exist (names are matched ignoring case)",
            )
    if not any(dirs.values()):
        raise _no_class_folder(root, classes, sides)
    shown = ", ".join(f"{k}/" for k in names)
    options: dict = {"margin": margin}
    if classes is not None:
        options["classes"] = dict(classes)
    report = LoadReport(str(root), "folder", "folder", options=options)
    for p in _subdirs(root):
        if p.name.lower() not in names and (sides is None or p.name.lower() not in SIDES):
            report.add(
                "ignored-folder",
                p.name + "/",
                f"{p.name}/ is not a class folder ({shown})"
                + ("" if sides is None else " nor a split folder (train/, test/)"),
                "not read",
            )
    if sides is not None:
        for folder in sides.values():
            for p in _subdirs(folder):
                if p.name.lower() not in names:
                    rel = p.relative_to(root).as_posix() + "/"
                    report.add("ignored-folder", rel, f"{rel} is not a class folder ({shown})", "not read")

    # (case id, label, side, [image paths]) in a stable order: train/ before test/, then by
    # class folder, then by name.
    cases: list[tuple[str, int, str | None, list[Path]]] = []
    for side, _ in places:
        prefix = "" if side is None else f"{side}/"
        for cls in sorted(dirs[side]):
            label = names[cls]
            for p in _listing(dirs[side][cls], root, report):
                if p.name.startswith("."):  # .ipynb_checkpoints/, .DS_Store: never a case
                    _not_read(p, root, report, "hidden")
                elif p.is_dir() and p.name != _MASK_DIR:
                    imgs = []
                    for q in _listing(p, root, report):
                        if _is_image(q):
                            imgs.append(q)
                        elif q.name != _MASK_DIR and not q.stem.endswith(_MASK_SUFFIX):
                            _not_read(q, root, report, "hidden" if q.name.startswith(".") else "in a case folder")
                    if imgs:
                        cases.append((f"{prefix}{cls}/{p.name}", label, side, imgs))
                elif _is_image(p):
                    cases.append((f"{prefix}{cls}/{p.stem}", label, side, [p]))
                elif p.name != _MASK_DIR and not p.stem.endswith(_MASK_SUFFIX):
                    _not_read(p, root, report, "in a class folder")

    # Pass 1: read every image once (bytes hash, size).
    entries: list[dict] = []
    infos: dict[str, CaseInfo] = {}
    counts = RuleCounts("folder")
    for n, (case_id, label, side, imgs) in enumerate(cases, start=1):
        name = LABEL_NAMES[label]
        counts.cases[name] += 1
        infos[case_id] = CaseInfo(case_id, label, None, {}, {}, case_id, len(imgs))
        for frame, path in enumerate(imgs, start=1):
            report.frames += 1
            rel = path.relative_to(root).as_posix()
            try:
                sha1, size = read_image(path, verify_images)
            except UnreadableImage as exc:
                report.add("unreadable-image", rel, str(exc), "image skipped", case=case_id, frame=frame)
                continue
            counts.frames[name] += 1
            entries.append(
                {
                    "case": case_id,
                    "label": label,
                    "side": side,
                    "frame": frame,
                    "path": path,
                    "rel": rel,
                    "sha1": sha1,
                    "size": size,
                }
            )
        if progress:
            progress(n, len(cases))

    # Pass 2: duplicates (keep the first copy, link the cases) and conflicts (drop them all).
    by_sha: dict[str, list[dict]] = {}
    for e in entries:
        by_sha.setdefault(e["sha1"], []).append(e)
    dropped: set[int] = set()
    shared: list[list[str]] = []
    for copies in by_sha.values():
        if len(copies) == 1:
            continue
        if len({e["label"] for e in copies}) > 1:
            names_ = ", ".join(e["rel"] for e in copies)
            for e in copies:
                dropped.add(id(e))
                report.add(
                    "label-conflict",
                    e["rel"],
                    f"the same image bytes are filed as benign and malignant: {names_}",
                    "every copy dropped",
                    case=e["case"],
                    frame=e["frame"],
                )
            continue
        shared.append(list(dict.fromkeys(e["case"] for e in copies)))
        for e in copies[1:]:
            dropped.add(id(e))
            report.add(
                "duplicate-image",
                e["rel"],
                f"same bytes as {copies[0]['rel']}",
                f"dropped; kept {copies[0]['rel']}",
                case=e["case"],
                frame=e["frame"],
            )

    samples: list[Sample] = []
    files: dict[str, str] = {}
    bad_masks: list[str] = []
    whole = "image used whole, without an outline"
    for e in entries:
        if id(e) in dropped:
            continue
        case_id, label, frame, path, rel, size = e["case"], e["label"], e["frame"], e["path"], e["rel"], e["size"]
        box, kind, polygon = (0, 0, size[0], size[1]), "full-frame", None
        mask_path = _find_mask(path)
        if mask_path is not None:
            mrel = mask_path.relative_to(root).as_posix()
            try:
                with open_image(mask_path) as m:
                    mask = np.asarray(m.convert("L"))
            except (UnreadableImage, OSError, SyntaxError, ValueError) as exc:
                why = str(exc) if isinstance(exc, UnreadableImage) else f"cannot decode: {exc}"
                report.add("unreadable-mask", mrel, why, whole, case=case_id, frame=frame)
                bad_masks.append(f"{mrel} ({why})")
                mask = None
            if mask is not None:
                outline = None
                if mask.shape != (size[1], size[0]):
                    why = f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {size[0]}x{size[1]}"
                    report.add("unreadable-mask", mrel, why, whole, case=case_id, frame=frame)
                    bad_masks.append(f"{mrel} ({why})")
                else:
                    outline = mask_outline_polygon(mask)
                    if outline is None:
                        report.add("empty-mask", mrel, "no foreground pixels", whole, case=case_id, frame=frame)
                        bad_masks.append(f"{mrel} (no foreground pixels)")
                if outline is not None:
                    box = expand_box(polygon_bbox(outline), margin, size)
                    kind, polygon = "mask", outline if len(outline) >= 3 else None
                    bw, bh = box[2] - box[0], box[3] - box[1]
                    if min(bw, bh) < MIN_ROI_SIDE:
                        report.add(
                            "tiny-roi",
                            mrel,
                            f"mask outline box {bw}x{bh} px, under the {MIN_ROI_SIDE}-px minimum side",
                            "image skipped",
                            case=case_id,
                            frame=frame,
                        )
                        continue
                    files[mrel] = hashlib.sha1(mask_path.read_bytes()).hexdigest()
        if kind == "full-frame" and min(size) < MIN_ROI_SIDE:
            report.add(
                "tiny-roi",
                rel,
                f"image {size[0]}x{size[1]} px, used whole as the ROI: under the {MIN_ROI_SIDE}-px minimum side",
                "image skipped",
                case=case_id,
                frame=frame,
            )
            continue
        report.frames_usable += 1
        counts.rois[LABEL_NAMES[label]] += 1
        samples.append(Sample(case_id, frame, path, polygon, box, label, "folder", size, 0, kind, side=e["side"]))
        files[rel] = e["sha1"]
    report.case_files = report.cases = len(cases)
    report.by_rule["folder"] = counts
    report.samples = len(samples)
    for s in samples:
        report.samples_by_label[LABEL_NAMES[s.label]] += 1
    report.sample_cases = len({s.case_id for s in samples})
    ds = LoadedDataset(root, "folder", "folder", options, samples, infos, files, report)
    link_cases(ds, shared, near_duplicates=link_near_duplicates)
    report.sides = ds.sides()
    if warn:
        if bad_masks:
            shown_masks = "; ".join(bad_masks[:5]) + (f"; and {len(bad_masks) - 5} more" if len(bad_masks) > 5 else "")
            warnings.warn(
                f"{root}: {len(bad_masks)} mask(s) unusable, their images are used whole without an outline: "
                f"{shown_masks}",
                DataWarning,
                stacklevel=2,
            )
        report.warn_summary(stacklevel=3)
    return ds
