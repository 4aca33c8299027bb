"""Folder format for users' own images: the class is the folder name.

Layout::

    root/
      benign/     img1.png, img2.jpg, ...        each file is its own case
                  patient7/a.png, patient7/b.png  a sub-folder is one case (all its images
                                                  stay on one side of a split)
                  masks/img1.png                  optional nodule masks, or img1_mask.png
      malignant/  ...

Without a mask the whole image is the ROI (for images already cropped to the nodule). With a
mask, the ROI is the bounding box of its non-zero pixels (+ margin). Labels come from the
folder, so the label rule is recorded as ``folder``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import HfcnError
from .collection import LABEL_NAMES, CaseInfo, LoadedDataset, assign_units, link_groups
from .report import LoadReport, RuleCounts
from .rois import MIN_ROI_SIDE, Sample, UnreadableImage, expand_box, open_image, read_image

__all__ = ["CLASS_DIRS", "IMAGE_EXTS", "is_folder_dataset", "load_folder", "mask_bbox"]

CLASS_DIRS = {"benign": 0, "malignant": 1}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_MASK_DIR = "masks"
_MASK_SUFFIX = "_mask"


def _class_dirs(root: Path) -> dict[str, Path]:
    found = {}
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.is_dir() and p.name.lower() in CLASS_DIRS:
                found[p.name.lower()] = p
    return found


def is_folder_dataset(root: str | Path) -> bool:
    """True when ``root`` has a ``benign/`` or ``malignant/`` sub-folder."""
    return bool(_class_dirs(Path(root)))


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


def load_folder(
    root: str | Path,
    margin: float = 0.0,
    empty_outline: str = "skip",
    verify_images: bool = True,
    warn: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> LoadedDataset:
    """Read ``root/benign`` and ``root/malignant`` into ROI samples (see the module docstring).

    ``empty_outline`` applies to masks with no foreground (``skip`` or ``full-frame``);
    duplicates, unreadable images and masks are reported as in the DDTI reader. Byte-identical
    images keep the first copy and link their cases (one split unit); identical bytes under
    both labels drop every copy (``label-conflict``); sub-folders of ``root`` that are not class
    folders are listed as ``ignored-folder``; a mask box with a side under ``MIN_ROI_SIDE``
    skips its image (``tiny-roi``).
    """
    root = Path(root).expanduser()
    dirs = _class_dirs(root)
    if not dirs:
        raise HfcnError(f"{root} has no benign/ or malignant/ folder",
                        hint="folder format: root/benign/* and root/malignant/* (optional masks/)")
    if empty_outline not in ("skip", "full-frame"):
        raise HfcnError(f"empty_outline={empty_outline!r} is not one of ('skip', 'full-frame')")
    if margin < 0:
        raise HfcnError(f"margin must be >= 0, got {margin}")
    options = {"margin": margin, "empty_outline": empty_outline}
    report = LoadReport(str(root), "folder", "folder", options=options)
    for p in sorted(root.iterdir()):
        if p.is_dir() and p.name.lower() not in CLASS_DIRS and not p.name.startswith("."):
            report.add("ignored-folder", p.name + "/", f"{p.name}/ is not a class folder (benign/, malignant/)",
                       "not read")

    # (case id, label, [image paths]) in a stable order.
    cases: list[tuple[str, int, list[Path]]] = []
    for cls in sorted(dirs):
        label = CLASS_DIRS[cls]
        for p in _listing(dirs[cls], root, report):
            if p.is_dir() and p.name != _MASK_DIR:
                imgs = [q for q in _listing(p, root, report) if _is_image(q)]
                if imgs:
                    cases.append((f"{cls}/{p.name}", label, imgs))
            elif _is_image(p):
                cases.append((f"{cls}/{p.stem}", label, [p]))

    # Pass 1: read every image once (bytes hash, size).
    entries: list[dict] = []
    infos: dict[str, CaseInfo] = {}
    counts = RuleCounts("folder")
    for n, (case_id, label, imgs) in enumerate(cases, start=1):
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
            entries.append({"case": case_id, "label": label, "frame": frame, "path": path, "rel": rel,
                            "sha1": sha1, "size": size})
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
            names = ", ".join(e["rel"] for e in copies)
            for e in copies:
                dropped.add(id(e))
                report.add("label-conflict", e["rel"], f"the same image bytes are filed as benign and malignant: "
                           f"{names}", "every copy dropped", case=e["case"], frame=e["frame"])
            continue
        shared.append(list(dict.fromkeys(e["case"] for e in copies)))
        for e in copies[1:]:
            dropped.add(id(e))
            report.add("duplicate-image", e["rel"], f"same bytes as {copies[0]['rel']}",
                       f"dropped; kept {copies[0]['rel']}", case=e["case"], frame=e["frame"])

    samples: list[Sample] = []
    files: dict[str, str] = {}
    for e in entries:
        if id(e) in dropped:
            continue
        case_id, label, frame, path, rel, size = e["case"], e["label"], e["frame"], e["path"], e["rel"], e["size"]
        box, kind = (0, 0, size[0], size[1]), "full-frame"
        mask_path = _find_mask(path)
        if mask_path is not None:
            mrel = mask_path.relative_to(root).as_posix()
            try:
                with open_image(mask_path) as m:
                    mask = np.asarray(m.convert("L"))
            except (UnreadableImage, OSError, SyntaxError, ValueError) as exc:
                report.add("unreadable-mask", mrel, f"cannot decode: {exc}", "image used full-frame",
                           case=case_id, frame=frame)
                mask = None
            if mask is not None:
                if mask.shape != (size[1], size[0]):
                    report.add("unreadable-mask", mrel, f"mask is {mask.shape[1]}x{mask.shape[0]}, image is "
                               f"{size[0]}x{size[1]}", "image used full-frame", case=case_id, frame=frame)
                else:
                    tight = mask_bbox(mask)
                    if tight is None:
                        if empty_outline == "skip":
                            report.add("empty-mask", mrel, "no foreground pixels", "image skipped",
                                       case=case_id, frame=frame)
                            continue
                        report.add("empty-mask", mrel, "no foreground pixels", "image used full-frame",
                                   case=case_id, frame=frame)
                    else:
                        box, kind = expand_box(tight, margin, size), "mask"
                        bw, bh = box[2] - box[0], box[3] - box[1]
                        if min(bw, bh) < MIN_ROI_SIDE:
                            report.add("tiny-roi", mrel, f"mask box {bw}x{bh} px, under the {MIN_ROI_SIDE}-px minimum "
                                       "side", "image skipped", case=case_id, frame=frame)
                            continue
                        files[mrel] = hashlib.sha1(mask_path.read_bytes()).hexdigest()
        report.frames_usable += 1
        counts.rois[LABEL_NAMES[label]] += 1
        samples.append(Sample(case_id, frame, path, None, box, label, "folder", size, 0, kind))
        files[rel] = e["sha1"]
    samples, links = assign_units(samples, link_groups(shared))
    for group in links:
        report.add("linked-cases", ", ".join(group), f"cases {', '.join(group)} share image bytes",
                   "kept on one side of every split", case=group[0])

    report.case_files = report.cases = len(cases)
    report.by_rule["folder"] = counts
    report.samples = len(samples)
    for s in samples:
        report.samples_by_label[LABEL_NAMES[s.label]] += 1
    report.sample_cases = len({s.case_id for s in samples})
    if warn:
        report.warn_summary(stacklevel=3)
    return LoadedDataset(root, "folder", "folder", options, samples, infos, files, report)
