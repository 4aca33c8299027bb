"""Data: DDTI reader, folder datasets, synthetic DDTI-format phantoms, case-level splits.

Typical use::

    from hfcn_bench.data import load_dataset, split_train_test, write_manifest, RoiDataset

    ds = load_dataset("path/to/ddti/raw", label_rule="tirads")   # or a folder-format dir, or
    # ds = load_dataset(ensure_synthetic())                        # the default phantoms
    split = split_train_test(ds, test_fraction=0.25, seed=0)      # by case, stratified
    write_manifest("runs/split.json", ds, split)
    train_samples, test_samples = split.select(ds)
    train = RoiDataset(train_samples, size=224, augment=True)     # (image[3,224,224], label, idx)

Labels are TI-RADS proxies (no pathology in DDTI): see ``ddti.LABEL_RULES``; every sample
carries its ``label_rule``. ``RoiDataset`` is imported lazily so that the readers (and
``hfcn-bench data check``) do not import torch.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HfcnError
from .collection import BENIGN, LABEL_NAMES, MALIGNANT, CaseInfo, LoadedDataset, data_fingerprint
from .ddti import LABEL_RULES, label_for, load_ddti, normalize_field, parse_case_xml, parse_svg
from .folder import format_classes, is_folder_dataset, load_folder, parse_classes, unmapped_folder_error
from .report import WART_KINDS, DataWarning, LoadReport, RuleCounts, Wart
from .rois import Sample, crop_roi, expand_box, load_roi, polygon_bbox
from .splits import (
    GIVEN_SPLIT,
    Manifest,
    Split,
    given_split,
    kfold,
    read_manifest,
    split_train_test,
    verify_manifest,
    write_manifest,
)
from .synthetic import DEFAULT_SYNTHETIC_DIR, ensure_synthetic, write_synthetic_ddti

__all__ = [
    "BENIGN",
    "GIVEN_SPLIT",
    "MALIGNANT",
    "LABEL_NAMES",
    "LABEL_RULES",
    "WART_KINDS",
    "CaseInfo",
    "DataWarning",
    "LoadReport",
    "LoadedDataset",
    "Manifest",
    "RoiDataset",
    "RuleCounts",
    "Sample",
    "Split",
    "Wart",
    "crop_roi",
    "data_fingerprint",
    "DEFAULT_SYNTHETIC_DIR",
    "detect_format",
    "ensure_synthetic",
    "expand_box",
    "format_classes",
    "given_split",
    "kfold",
    "label_for",
    "load_dataset",
    "load_ddti",
    "load_folder",
    "load_roi",
    "normalize_field",
    "parse_case_xml",
    "parse_classes",
    "parse_svg",
    "polygon_bbox",
    "read_manifest",
    "split_train_test",
    "verify_manifest",
    "write_manifest",
    "write_synthetic_ddti",
]


def detect_format(path: str | Path, classes=None) -> str:
    """``folder`` when ``path`` has benign/ or malignant/ sub-folders (or the folders ``classes``
    maps), or train/ and test/ sub-folders; else ``ddti``. A class mapping is only for the
    folder format: with ``classes`` the answer is ``folder``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise HfcnError(
            f"{p} does not exist",
            hint="give a DDTI folder (raw/ with xml/ + raw_jpg/, or flat *.xml + *.jpg), a folder with "
            "benign/ and malignant/, or create phantoms with `hfcn-bench data synth --out DIR`",
        )
    if not p.is_dir():
        raise HfcnError(f"{p} is not a directory")
    return "folder" if classes is not None or is_folder_dataset(p) else "ddti"


# load_ddti's options that mean nothing for class folders (the labels come from the folders,
# and the rule is recorded as ``folder``)
_DDTI_ONLY = ("label_rule", "truncated", "keep_unlabelled", "only")


def load_dataset(path: str | Path, *, classes=None, **options) -> LoadedDataset:
    """Load DDTI-format data (real or synthetic) or a benign/malignant folder dataset.

    The format is detected (``detect_format``). ``options`` are :func:`load_ddti`'s keyword
    arguments (``label_rule``, ``margin``, ``empty_outline``, ``truncated``, ``verify_images``,
    ``warn``, ``progress``, ``keep_unlabelled``, ``link_near_duplicates``: on by default, as
    every split is built from a load, it links cases whose images are near-duplicates, see
    ``links.link_cases``); the folder format takes those of :func:`load_folder` and ignores the
    DDTI-only ones. ``classes`` maps a folder set's folder
    names to benign/malignant (``"benin=benign,malin=malignant"`` or a dict; see
    ``folder.parse_classes``).
    """
    fmt = detect_format(path, classes)
    if fmt == "folder":
        return load_folder(path, classes=classes, **{k: v for k, v in options.items() if k not in _DDTI_ONLY})
    try:
        return load_ddti(path, **options)
    except HfcnError as exc:
        # class folders under other names (benin/, malin/): say so, not "no DDTI case XMLs"
        folder_error = unmapped_folder_error(path) if str(exc).startswith("no DDTI case XMLs") else None
        if folder_error is not None:
            raise folder_error from None
        raise


def __getattr__(name: str):
    # torch is heavy to import; only the Dataset needs it.
    if name == "RoiDataset":
        from .dataset import RoiDataset

        return RoiDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
