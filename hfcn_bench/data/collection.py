"""What a loader returns: the ROI samples, the cases they came from, the files they used and
the load report. Shared by the DDTI and folder loaders so that splits, manifests and the
torch Dataset see one shape."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .report import LoadReport
from .rois import Sample

__all__ = [
    "CaseInfo",
    "LoadedDataset",
    "data_fingerprint",
    "link_groups",
    "assign_units",
    "case_sort_key",
    "LABEL_NAMES",
    "BENIGN",
    "MALIGNANT",
]

# Malignant is the positive class, as in the paper's metrics (eqs. 9-12) and loss weights.
BENIGN, MALIGNANT = 0, 1
LABEL_NAMES = ("benign", "malignant")


def data_fingerprint(files: Mapping[str, str]) -> str:
    """sha256 over the sorted (file name, sha1 of its bytes) pairs of the files a run used.

    Names, not absolute paths, go in, so the same data in another directory (or another
    machine) gives the same fingerprint; bytes, not dates, so a re-encoded or edited image
    changes it."""
    h = hashlib.sha256()
    for name, sha1 in sorted(files.items()):
        h.update(name.encode("utf-8"))
        h.update(b"\0")
        h.update(sha1.encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()


def case_sort_key(case_id: str):
    """Numeric case ids in numeric order, then the others by name (DDTI numbers its cases)."""
    return (0, int(case_id), "") if case_id.isdigit() else (1, 0, case_id)


def link_groups(shared: Iterable[Iterable[str]]) -> list[tuple[str, ...]]:
    """Cases linked by shared images: ``shared`` holds, per distinct image, the ids of the
    cases that hold a copy. Linking is transitive (A shares a frame with B, B another with C:
    one group), computed by union-find. Returns the groups of two or more cases, each sorted,
    in a stable order."""
    parent: dict[str, str] = {}

    def find(c: str) -> str:
        parent.setdefault(c, c)
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for cases in shared:
        cases = list(dict.fromkeys(cases))
        for c in cases:
            find(c)
        for other in cases[1:]:
            a, b = find(cases[0]), find(other)
            if a != b:
                parent[max(a, b, key=case_sort_key)] = min(a, b, key=case_sort_key)
    groups: dict[str, list[str]] = {}
    for c in parent:
        groups.setdefault(find(c), []).append(c)
    out = [tuple(sorted(g, key=case_sort_key)) for g in groups.values() if len(g) > 1]
    return sorted(out, key=lambda g: case_sort_key(g[0]))


def assign_units(samples: Sequence, groups: Sequence[Sequence[str]]) -> tuple[list, list[tuple[str, ...]]]:
    """Give the samples of linked cases one split unit (``Sample.unit``: the member ids
    joined by ``+``). Only cases that kept samples count: a group left with one such case
    links nothing. Returns ``(samples, groups that link two or more cases with samples)``."""
    have = {s.case_id for s in samples}
    unit_of: dict[str, str] = {}
    kept = []
    for g in groups:
        members = tuple(c for c in g if c in have)
        if len(members) > 1:
            kept.append(members)
            for c in members:
                unit_of[c] = "+".join(members)
    if not unit_of:
        return list(samples), []
    return [dataclasses.replace(s, unit=unit_of[s.case_id]) if s.case_id in unit_of else s for s in samples], kept


@dataclass(frozen=True)
class CaseInfo:
    """One case (patient) as the loader saw it, labelled or not.

    ``label`` is under the load's label rule (``None``: excluded); ``fields`` holds the
    normalised clinical fields (DDTI) and ``raw`` the strings as written."""

    case_id: str
    label: int | None
    tirads: str | None = None
    fields: dict = field(default_factory=dict, compare=False, hash=False)
    raw: dict = field(default_factory=dict, compare=False, hash=False)
    source: str = ""
    n_frames: int = 0


@dataclass
class LoadedDataset:
    """ROI samples of one dataset plus everything needed to reproduce and audit a run.

    ``samples``: one per labelled ROI (unlabelled cases are excluded and counted in
    ``report``). ``cases``: every case read, labelled or not. ``files``: name -> sha1 of each
    file the samples depend on (images and case XMLs), the input of ``fingerprint``.
    ``near_duplicates``: the near-duplicate search that linked cases (``links.link_cases``),
    ``None`` when it was not run.
    """

    root: Path
    format: str
    label_rule: str
    options: dict
    samples: list[Sample]
    cases: dict[str, CaseInfo]
    files: dict[str, str]
    report: LoadReport
    near_duplicates: dict | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def fingerprint(self) -> str:
        return data_fingerprint(self.files)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def case_labels(self) -> dict[str, int]:
        """Label per case that has samples (a case's ROIs share its label)."""
        out: dict[str, int] = {}
        for s in self.samples:
            out[s.case_id] = max(out.get(s.case_id, s.label), s.label)
        return out

    def class_counts(self) -> dict[str, int]:
        c = Counter(self.labels)
        return {name: c.get(i, 0) for i, name in enumerate(LABEL_NAMES)}

    def links(self) -> list[tuple[str, ...]]:
        """Groups of cases linked by a shared image (they travel together in every split)."""
        groups: dict[str, list[str]] = {}
        for s in self.samples:
            if s.unit is not None and s.case_id not in groups.setdefault(s.unit, []):
                groups[s.unit].append(s.case_id)
        return [tuple(sorted(g, key=case_sort_key)) for g in groups.values()]

    def image_hashes(self) -> dict[str, list[str]]:
        """sha1 of every image the samples read, per case: ``{case_id: [sha1, ...]}`` (from
        ``files``, so nothing is read again). Used to find training images in another set."""
        out: dict[str, list[str]] = {}
        for s in self.samples:
            sha = self.files.get(self.file_key(s.image_path))
            if sha is not None and sha not in out.setdefault(s.case_id, []):
                out[s.case_id].append(sha)
        return out

    def file_key(self, path: Path) -> str:
        """The key of ``path`` in ``files``: its path relative to the root (posix)."""
        try:
            return Path(path).relative_to(self.root).as_posix() if self.format == "folder" else Path(path).name
        except ValueError:
            return Path(path).name

    def subset(self, case_ids) -> list[Sample]:
        """Samples of the given cases, in dataset order."""
        wanted = set(case_ids)
        return [s for s in self.samples if s.case_id in wanted]

    def sides(self) -> dict[str, dict[str, int]]:
        """A dataset that ships its own split (``Sample.side``): per side, its cases and ROIs per
        class, ``{"train": {"cases": n, "benign": b, "malignant": m}, "test": {...}}``; ``{}``
        when it has none."""
        out: dict[str, dict[str, int]] = {}
        for side in dict.fromkeys(s.side for s in self.samples if s.side is not None):
            mine = [s for s in self.samples if s.side == side]
            out[side] = {
                "cases": len({s.case_id for s in mine}),
                **{n: sum(1 for s in mine if s.label == i) for i, n in enumerate(LABEL_NAMES)},
            }
        return out

    def describe(self) -> dict:
        """Provenance a result should carry: where the labels came from and which data."""
        out = {
            "root": str(self.root),
            "format": self.format,
            "label_rule": self.label_rule,
            "options": dict(self.options),
            "fingerprint": self.fingerprint,
            "samples": len(self.samples),
            "cases": len(self.case_labels()),
            "class_counts": self.class_counts(),
            "linked_case_groups": len(self.links()),
            # cases linked because their images are near-duplicates (None: not searched)
            "near_duplicate_links": None if self.near_duplicates is None else len(self.near_duplicates["links"]),
        }
        sides = self.sides()
        if sides:
            out["given_split"] = sides
        return out
