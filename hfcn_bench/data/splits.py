"""Case-level splits and the manifest that makes a run reproducible.

Every split here assigns *cases* (patients), never frames or ROIs, so all images of one
patient stay on one side: splitting by image leaks a patient's nodule across train and test
and inflates every metric. Splits are stratified by case label and deterministic from the
seed: a case's place in the shuffled order is sha256(seed, case id), which depends neither
on the Python/numpy version nor on which other cases are present (adding a case does not
reshuffle the rest).

Cases linked by a shared image (``Sample.unit``: one patient filed under two case numbers,
found by the loader from byte-identical or near-duplicate frames, ``links.link_cases``) form
one *unit* and are always sent to the same side together; a unit of one case orders exactly
as that case alone would, so data without links splits as it always did.

The paper (Song et al. 2020) uses a 3:1 train/test split; ``kfold`` gives stratified k-fold
cross-validation; ``given_split`` keeps the split a dataset ships (folder format with
``train/`` and ``test/``, ``Sample.side``). ``write_manifest`` stores the case ids of each side with the label rule,
seed and data fingerprint, so another machine can check it has the same data and rerun.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import read_json, write_json_atomic
from ..errors import HfcnError
from .collection import LABEL_NAMES, LoadedDataset, case_sort_key
from .rois import Sample

__all__ = [
    "Split",
    "Manifest",
    "case_labels",
    "split_units",
    "split_train_test",
    "inner_split",
    "kfold",
    "given_split",
    "GIVEN_SPLIT",
    "SPLIT_DESCRIPTIONS",
    "write_manifest",
    "read_manifest",
    "verify_manifest",
    "write_json_atomic",
    "MANIFEST_FORMAT",
]

MANIFEST_FORMAT = "hfcn-bench/split-manifest"
MANIFEST_VERSION = 1

GIVEN_SPLIT = "the dataset's own train/test split"
# What each split method is, in words (reports and the console say it).
SPLIT_DESCRIPTIONS = {
    "train_test": "case-level split",
    "kfold": "case-level k-fold cross-validation",
    "given": GIVEN_SPLIT,
}


@dataclass(frozen=True)
class Split:
    """One train/test partition of case ids (``fold`` is set for k-fold splits)."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    method: str = "train_test"
    seed: int = 0
    params: dict = field(default_factory=dict, compare=False, hash=False)
    fold: int | None = None

    def indices(self, samples: Sequence[Sample] | LoadedDataset) -> tuple[list[int], list[int]]:
        """Positions of the train and test samples in ``samples``."""
        samples = _samples(samples)
        tr, te = set(self.train), set(self.test)
        return (
            [i for i, s in enumerate(samples) if s.case_id in tr],
            [i for i, s in enumerate(samples) if s.case_id in te],
        )

    def select(self, samples: Sequence[Sample] | LoadedDataset) -> tuple[list[Sample], list[Sample]]:
        """The train and test samples, in dataset order."""
        samples = _samples(samples)
        tr, te = self.indices(samples)
        return [samples[i] for i in tr], [samples[i] for i in te]


def _samples(samples) -> list[Sample]:
    return list(samples.samples if isinstance(samples, LoadedDataset) else samples)


def case_labels(samples: Iterable[Sample] | LoadedDataset) -> dict[str, int]:
    """Label per case. A case whose ROIs disagree (possible only in the folder format with a
    mislabelled duplicate case name) counts as malignant, the class a miss costs most."""
    out: dict[str, int] = {}
    for s in _samples(samples):
        out[s.case_id] = max(out.get(s.case_id, s.label), s.label)
    return out


def split_units(samples: Iterable[Sample] | LoadedDataset) -> dict[str, tuple[int, tuple[str, ...]]]:
    """What a split keeps whole: ``{unit id: (label, case ids)}``. A unit is a case, or the
    cases linked to it (``Sample.unit``); its label is its cases' highest (malignant wins, as
    in :func:`case_labels`)."""
    labels = case_labels(samples)
    members: dict[str, list[str]] = {}
    for s in _samples(samples):
        ids = members.setdefault(s.split_unit, [])
        if s.case_id not in ids:
            ids.append(s.case_id)
    return {u: (max(labels[c] for c in ids), tuple(ids)) for u, ids in members.items()}


def _order_key(seed: int, case_id: str) -> str:
    return hashlib.sha256(f"{int(seed)}\0{case_id}".encode()).hexdigest()


def _by_class(units: dict[str, tuple[int, tuple[str, ...]]], seed: int) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = defaultdict(list)
    for uid, (lab, _) in units.items():
        groups[lab].append(uid)
    return {lab: sorted(ids, key=lambda u: _order_key(seed, u)) for lab, ids in sorted(groups.items())}


def split_train_test(samples: Sequence[Sample] | LoadedDataset, test_fraction: float = 0.25, seed: int = 0) -> Split:
    """Stratified train/test split of the cases (default 3:1, as in the paper).

    Each class sends ``round(n * test_fraction)`` of its units (cases, or linked cases) to
    test, but at least one and never all of them when it has two or more, so both sides see
    both classes."""
    if not 0.0 < test_fraction < 1.0:
        raise HfcnError(f"test_fraction must be in (0, 1), got {test_fraction}")
    units = split_units(samples)
    if len(units) < 2:
        raise HfcnError(f"a train/test split needs at least 2 cases (or groups of linked cases), got {len(units)}")
    train, test = [], []
    for _, ids in _by_class(units, seed).items():
        n_test = int(round(len(ids) * test_fraction))
        if len(ids) >= 2:
            n_test = min(max(n_test, 1), len(ids) - 1)
        test.extend(c for u in ids[:n_test] for c in units[u][1])
        train.extend(c for u in ids[n_test:] for c in units[u][1])
    return Split(
        tuple(sorted(train, key=_id_key)),
        tuple(sorted(test, key=_id_key)),
        "train_test",
        int(seed),
        {"test_fraction": float(test_fraction)},
    )


def inner_split(
    samples: Sequence[Sample], fraction: float, seed: int, min_cases: int = 4
) -> tuple[list[Sample], list[Sample]]:
    """The validation cases carved out of a split's training side (by case, stratified, linked
    cases kept together): ``(fit samples, validation samples)``. With ``fraction <= 0`` or
    fewer than ``min_cases`` cases there is no validation part."""
    samples = list(samples)
    if fraction <= 0 or len(case_labels(samples)) < min_cases:
        return samples, []
    return split_train_test(samples, test_fraction=fraction, seed=seed).select(samples)


def kfold(samples: Sequence[Sample] | LoadedDataset, k: int = 5, seed: int = 0) -> list[Split]:
    """Stratified k-fold over cases: every case is in exactly one test fold.

    Units (cases, or linked cases) of each class, in seeded order, are dealt round-robin to
    the folds, continuing where the previous class stopped, so fold sizes differ by at most
    one unit."""
    labels = case_labels(samples)
    units = split_units(samples)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise HfcnError(f"k must be an integer >= 2, got {k!r}")
    if k > len(units):
        raise HfcnError(f"k={k} folds need at least {k} cases (or groups of linked cases), got {len(units)}")
    folds: list[list[str]] = [[] for _ in range(k)]
    pos = 0
    for lab, ids in _by_class(units, seed).items():
        if len(ids) < k:
            warnings.warn(
                f"only {len(ids)} {LABEL_NAMES[lab]} case(s) for {k} folds: some test folds have none", stacklevel=2
            )
        for uid in ids:
            folds[pos % k].extend(units[uid][1])
            pos += 1
    all_ids = sorted(labels, key=_id_key)
    out = []
    for i, test in enumerate(folds):
        test_set = set(test)
        out.append(
            Split(
                tuple(c for c in all_ids if c not in test_set),
                tuple(sorted(test, key=_id_key)),
                "kfold",
                int(seed),
                {"k": int(k)},
                fold=i,
            )
        )
    return out


def given_split(samples: Sequence[Sample] | LoadedDataset, seed: int = 0) -> Split:
    """The split the dataset ships: its ``train/`` cases against its ``test/`` cases
    (``Sample.side``), exactly as given (method ``given``; ``seed`` is only recorded).

    A dataset without sides is an :class:`HfcnError`. Cases linked by a shared image stay
    where the dataset put them; a link across the sides (a near-duplicate of a train/ image in
    test/, or a sub-folder case sharing an image: an image of test/ byte-identical to one of
    train/ is dropped) is warned about, since those cases may be one patient or one picture."""
    samples = _samples(samples)
    side_of: dict[str, str | None] = {}
    for s in samples:
        side_of.setdefault(s.case_id, s.side)
    if not samples or not any(side_of.values()):
        raise HfcnError(
            "the dataset ships no train/test split of its own (no train/ and test/ folders)",
            hint="drop --split given for a case-level split of all images (or --folds K), or lay the "
            "data out as ROOT/train/<class>/ and ROOT/test/<class>/",
        )
    odd = sorted(c for c, v in side_of.items() if v not in ("train", "test"))
    if odd:
        raise HfcnError(f"{len(odd)} case(s) belong to neither train/ nor test/: {odd[:5]}")
    train = tuple(sorted((c for c, v in side_of.items() if v == "train"), key=_id_key))
    test = tuple(sorted((c for c, v in side_of.items() if v == "test"), key=_id_key))
    if not train or not test:
        raise HfcnError(
            f"the dataset's own split has {len(train)} train and {len(test)} test case(s) with samples; it needs both"
        )
    across = [ids for _, ids in split_units(samples).values() if len({side_of[c] for c in ids}) > 1]
    if across:
        warnings.warn(
            f"{len(across)} group(s) of cases linked by a shared or near-duplicate image lie on both sides of "
            f"the dataset's own split (e.g. {', '.join(across[0])}); kept as given",
            stacklevel=2,
        )
    return Split(train, test, "given", int(seed), {"source": GIVEN_SPLIT})


_id_key = case_sort_key


# ---------------------------------------------------------------------------------------------
# Manifest.


@dataclass(frozen=True)
class Manifest:
    method: str
    seed: int
    params: dict
    label_rule: str
    fingerprint: str
    data: dict
    files: dict
    splits: list[Split]
    links: list = field(default_factory=list)
    images: dict = field(default_factory=dict)
    case_labels: dict = field(default_factory=dict)
    # the near-duplicate search that linked cases (LoadedDataset.near_duplicates without its
    # timing); None: the split was made without it (or before it existed)
    near_duplicates: dict | None = None

    def training_labels(self) -> tuple[list[int], dict[str, int]]:
        """``(ROI labels, {case: label})`` of the cases on the training side of any split,
        from the counts and labels the manifest recorded (all cases of a k-fold run)."""
        train = sorted({c for s in self.splits for c in s.train})
        if self.method == "kfold":
            rois = {n: sum(f["test_rois"][n] for f in self._folds) for n in LABEL_NAMES} if self._folds else None
        else:
            rois = dict(self._folds[0]["train_rois"]) if self._folds else None
        y = [] if rois is None else [0] * rois["benign"] + [1] * rois["malignant"]
        return y, {c: int(self.case_labels[c]) for c in train if c in self.case_labels}

    _folds: list = field(default_factory=list, repr=False)

    def training_images(self) -> dict[str, str]:
        """sha1 -> case id of every image on the training side of any split (all images of a
        k-fold run; the training cases' of a train/test run)."""
        train = {c for s in self.splits for c in s.train}
        return {sha: cid for cid, shas in self.images.items() if cid in train for sha in shas}


def write_manifest(path: str | Path, dataset: LoadedDataset, splits: Split | Sequence[Split]) -> Path:
    """Write the split(s) of ``dataset`` as a JSON manifest (atomically).

    Holds the case ids of each side, the label rule, the seed and split parameters, the
    loader options and the data fingerprint with the per-file sha1s it was computed from, so
    ``verify_manifest`` can name the files that changed."""
    split_list = [splits] if isinstance(splits, Split) else list(splits)
    if not split_list:
        raise HfcnError("write_manifest: no split given")
    methods = {(s.method, s.seed) for s in split_list}
    if len(methods) != 1:
        raise HfcnError(f"write_manifest: splits come from different methods/seeds: {sorted(methods)}")
    labels = case_labels(dataset)
    unknown = sorted({c for s in split_list for c in s.train + s.test} - set(labels))
    if unknown:
        raise HfcnError(f"write_manifest: {len(unknown)} case(s) of the split are not in the dataset: {unknown[:5]}")
    first = split_list[0]
    folds = []
    for s in split_list:
        tr, te = s.select(dataset)
        folds.append(
            {
                "fold": s.fold,
                "train": list(s.train),
                "test": list(s.test),
                "train_rois": {n: sum(1 for x in tr if x.label == i) for i, n in enumerate(LABEL_NAMES)},
                "test_rois": {n: sum(1 for x in te if x.label == i) for i, n in enumerate(LABEL_NAMES)},
            }
        )
    from .. import __version__

    obj = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created_by": f"hfcn-bench {__version__}",
        "method": first.method,
        "seed": first.seed,
        "params": dict(first.params),
        "label_rule": dataset.label_rule,
        "data": {
            "root": str(dataset.root),
            "format": dataset.format,
            "options": dict(dataset.options),
            "fingerprint": dataset.fingerprint,
            "n_files": len(dataset.files),
            "cases": len(labels),
            "rois": len(dataset.samples),
        },
        "files": dict(sorted(dataset.files.items())),
        # One patient under several case ids travels as one unit (see split_units).
        "links": [list(g) for g in dataset.links()],
        # ...and so do cases holding near-duplicate images: the pairs that linked them (null:
        # the data was loaded without the near-duplicate search)
        "near_duplicates": None
        if dataset.near_duplicates is None
        else {k: dataset.near_duplicates[k] for k in ("threshold", "images", "links")},
        # label of every case (under the rule): an external evaluation states the training
        # prevalence and scores the majority baseline without the training data at hand
        "case_labels": {c: labels[c] for c in sorted(labels, key=_id_key)},
        # sha1 of the images of every case: what an external evaluation checks its images
        # against, so a run folder can tell its training images without the data at hand.
        "images": dataset.image_hashes(),
        "splits": folds,
    }
    return write_json_atomic(path, obj)


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest written by ``write_manifest``; a wrong or damaged file is a clear error."""
    path = Path(path)
    obj = read_json(path, f"no split manifest at {path}")
    if not isinstance(obj, dict) or obj.get("format") != MANIFEST_FORMAT:
        raise HfcnError(f"{path} is not an hfcn-bench split manifest")
    if obj.get("version") != MANIFEST_VERSION:
        raise HfcnError(f"{path}: manifest version {obj.get('version')} is not supported (expected {MANIFEST_VERSION})")
    try:
        splits = [
            Split(
                tuple(f["train"]), tuple(f["test"]), obj["method"], int(obj["seed"]), dict(obj["params"]), f.get("fold")
            )
            for f in obj["splits"]
        ]
        return Manifest(
            obj["method"],
            int(obj["seed"]),
            dict(obj["params"]),
            obj["label_rule"],
            obj["data"]["fingerprint"],
            dict(obj["data"]),
            dict(obj.get("files", {})),
            splits,
            list(obj.get("links", [])),
            dict(obj.get("images", {})),
            dict(obj.get("case_labels", {})),
            obj.get("near_duplicates"),
            list(obj["splits"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise HfcnError(f"{path}: damaged manifest ({exc!r})") from None


def verify_manifest(manifest: Manifest, dataset: LoadedDataset) -> None:
    """Raise ``HfcnError`` unless ``dataset`` is the data the manifest was written for: same
    label rule, same fingerprint (the hint names files that differ), all cases present."""
    if manifest.label_rule != dataset.label_rule:
        raise HfcnError(
            f"the manifest uses label rule {manifest.label_rule!r}, the data was loaded with {dataset.label_rule!r}",
            hint=f"load with label_rule={manifest.label_rule!r}",
        )
    if manifest.fingerprint != dataset.fingerprint:
        old, new = manifest.files, dataset.files
        changed = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
        raise HfcnError(
            f"data fingerprint differs from the manifest ({len(changed)} file(s) added, removed or changed)",
            hint="changed: "
            + ", ".join(changed[:8])
            + (" ..." if len(changed) > 8 else "")
            + f"; loader options in the manifest: {manifest.data.get('options')}",
        )
    labels = case_labels(dataset)
    missing = sorted({c for s in manifest.splits for c in s.train + s.test} - set(labels))
    if missing:
        raise HfcnError(f"{len(missing)} case(s) of the manifest have no samples: {missing[:5]}")
    # Same bytes, other labels: a folder dataset loaded with another class mapping.
    flipped = sorted(
        (c for c, lab in manifest.case_labels.items() if c in labels and int(lab) != labels[c]), key=_id_key
    )
    if flipped:
        c = flipped[0]
        raise HfcnError(
            f"{len(flipped)} case(s) have other labels than the manifest records (e.g. {c}: "
            f"{LABEL_NAMES[int(manifest.case_labels[c])]} in the manifest, {LABEL_NAMES[labels[c]]} now)",
            hint="load the data as the run did; its loader options (class mapping included): "
            f"{manifest.data.get('options')}",
        )
