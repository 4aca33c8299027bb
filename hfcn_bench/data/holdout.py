"""Holding a part of a dataset back for external validation: two copies of a dataset folder,
case-disjoint, in the dataset's own format.

When no second dataset exists, the honest stand-in for external validation is a part of the
data that no training and no model selection ever sees: the cases of one label-stratified
fraction, split by case (linked cases together, ``split_train_test``). The held-out copy is
then a dataset of its own, to be given to ``hfcn-bench eval --data`` only once the systems
are trained on the development copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import HfcnError
from .collection import LoadedDataset
from .folder import _find_mask
from .splits import split_train_test

__all__ = ["write_holdout"]


def write_holdout(
    dataset: LoadedDataset, out_dir: str | Path, fraction: float = 0.2, seed: int = 0, overwrite: bool = False
) -> dict:
    """Copy ``dataset`` into ``out_dir/development`` and ``out_dir/holdout`` (a stratified
    ``fraction`` of the labelled cases; unlabelled cases stay in development, where the label
    rule leaves them out anyway). Returns the case ids of each side."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise HfcnError(f"--out {out} is a file, not a folder")
    dev, hold = out / "development", out / "holdout"
    for d in (dev, hold):
        if d.exists():
            if not overwrite:
                raise HfcnError(f"{d} exists", hint="choose another --out, or --force to replace it")
            shutil.rmtree(d)
    split = split_train_test(dataset, test_fraction=fraction, seed=seed)
    held = set(split.test)
    root = Path(dataset.root)
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
            shutil.copy2(xml, target / "xml" / xml.name)
            for img in sorted(img_dir.glob(f"{xml.stem}_*")):
                if img.stem.rsplit("_", 1)[0] == xml.stem:
                    shutil.copy2(img, target / "raw_jpg" / img.name)
    else:
        for s in dataset.samples:
            target = hold if s.case_id in held else dev
            rel = Path(s.image_path).relative_to(root)
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s.image_path, target / rel)
            mask = _find_mask(Path(s.image_path))  # masks/NAME.* or NAME_mask.*, as the loader finds it
            if mask is not None:
                (target / mask.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(mask, target / mask.relative_to(root))
    return {"development": sorted(split.train), "holdout": sorted(split.test), "fraction": fraction, "seed": seed}
