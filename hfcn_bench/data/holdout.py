"""Holding a part of a dataset back for external validation: two copies of a dataset folder,
case-disjoint, in the dataset's own format.

When no second dataset exists, the honest stand-in for external validation is a part of the
data that no training and no model selection ever sees: the cases of one label-stratified
fraction, split by case (linked cases together, ``split_train_test``). The held-out copy is
then a dataset of its own, to be given to ``hfcn-bench eval --data`` only once the systems
are trained on the development copy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import HfcnError
from .collection import LoadedDataset
from .folder import _find_mask
from .splits import split_train_test

__all__ = ["write_holdout"]

PARTS = ("development", "holdout")


def _overlaps(a: Path, b: Path) -> bool:
    """Whether one of two folders is, or lies inside, the other."""
    return a == b or a in b.parents or b in a.parents


def _check_out(root: Path, out: Path, overwrite: bool) -> None:
    """Refuse, before anything is touched, an ``--out`` whose parts would hold (or be held by)
    the dataset being read: ``--force`` would delete the input before copying it."""
    if out.exists() and not out.is_dir():
        raise HfcnError(f"--out {out} is a file, not a folder")
    src = root.resolve()
    for name in PARTS:
        d = (out / name).resolve()
        if _overlaps(src, d):
            raise HfcnError(
                f"--out {out}: {out / name} and the dataset {root} overlap"
                + (" (--force would delete the input before copying it)" if overwrite and d.exists() else ""),
                hint="choose an --out outside the dataset folder (and not around it)",
            )
        if d.exists() and not overwrite:
            raise HfcnError(f"{out / name} exists", hint="choose another --out, or --force to replace it")


def _copy(src: Path, dst: Path, root: Path, skipped: list[str]) -> None:
    """Copy one file; one that cannot be read (a symlink loop, a dangling link: warts the
    loader reports too) is left out and named in ``skipped``, never the end of the copy."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    except OSError as exc:
        try:
            shown = src.relative_to(root).as_posix()
        except ValueError:
            shown = str(src)
        skipped.append(f"{shown} ({exc.strerror or exc}): not copied")


def write_holdout(
    dataset: LoadedDataset, out_dir: str | Path, fraction: float = 0.2, seed: int = 0, overwrite: bool = False
) -> dict:
    """Copy ``dataset`` into ``out_dir/development`` and ``out_dir/holdout`` (a stratified
    ``fraction`` of the labelled cases; unlabelled cases stay in development, where the label
    rule leaves them out anyway). Returns the case ids of each side and ``skipped``: the files
    that could not be copied, each with why.

    Nothing is written when the parts would overlap the dataset, when either part would hold no
    case, or (without ``overwrite``) when a part exists. Both parts are copied into a staging
    folder inside ``out_dir`` and moved into place only once complete, so a failure leaves no
    partial copy behind."""
    out = Path(out_dir)
    root = Path(dataset.root)
    _check_out(root, out, overwrite)
    split = split_train_test(dataset, test_fraction=fraction, seed=seed)
    n = len(split.train) + len(split.test)
    for side, cases in (("holdout", split.test), ("development", split.train)):
        if not cases:
            raise HfcnError(
                f"{root}: a {fraction:g} hold-out of its {n} labelled case(s) leaves the {side} part empty",
                hint="hold-out validation needs more cases (at least two of each class), or another --fraction",
            )
    held = set(split.test)
    skipped: list[str] = []
    made_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".holdout-", suffix=".tmp", dir=out))
    try:
        dev, hold = stage / "development", stage / "holdout"
        if dataset.format == "ddti":
            from .ddti import find_ddti_layout

            _, xml_dir, img_dir = find_ddti_layout(root)
            for d in (dev, hold):
                (d / "xml").mkdir(parents=True)
                (d / "raw_jpg").mkdir()
            for xml in sorted(xml_dir.glob("*")):
                if xml.suffix.lower() != ".xml":
                    continue
                target = hold if xml.stem in held else dev
                _copy(xml, target / "xml" / xml.name, root, skipped)
                for img in sorted(img_dir.glob(f"{xml.stem}_*")):
                    if img.stem.rsplit("_", 1)[0] == xml.stem:
                        _copy(img, target / "raw_jpg" / img.name, root, skipped)
        else:
            for s in dataset.samples:
                target = hold if s.case_id in held else dev
                rel = Path(s.image_path).relative_to(root)
                _copy(Path(s.image_path), target / rel, root, skipped)
                mask = _find_mask(Path(s.image_path))  # masks/NAME.* or NAME_mask.*, as the loader finds it
                if mask is not None:
                    _copy(mask, target / mask.relative_to(root), root, skipped)
        for name in PARTS:
            (stage / name).mkdir(exist_ok=True)
            final = out / name
            if final.is_dir() and not final.is_symlink():  # only with overwrite (checked above)
                shutil.rmtree(final)
            elif final.exists() or final.is_symlink():
                final.unlink()
            os.replace(stage / name, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if made_out:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return {
        "development": sorted(split.train),
        "holdout": sorted(split.test),
        "fraction": fraction,
        "seed": seed,
        "skipped": skipped,
    }
