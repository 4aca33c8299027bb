"""What a loader returns: the ROI samples, the cases they came from, the files they used and
the load report. Shared by the DDTI and folder loaders so that splits, manifests and the
torch Dataset see one shape."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .report import LoadReport
from .rois import Sample

__all__ = ["CaseInfo", "LoadedDataset", "data_fingerprint", "LABEL_NAMES", "BENIGN", "MALIGNANT"]

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
    """

    root: Path
    format: str
    label_rule: str
    options: dict
    samples: list[Sample]
    cases: dict[str, CaseInfo]
    files: dict[str, str]
    report: LoadReport

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

    def subset(self, case_ids) -> list[Sample]:
        """Samples of the given cases, in dataset order."""
        wanted = set(case_ids)
        return [s for s in self.samples if s.case_id in wanted]

    def describe(self) -> dict:
        """Provenance a result should carry: where the labels came from and which data."""
        return {
            "root": str(self.root),
            "format": self.format,
            "label_rule": self.label_rule,
            "options": dict(self.options),
            "fingerprint": self.fingerprint,
            "samples": len(self.samples),
            "cases": len(self.case_labels()),
            "class_counts": self.class_counts(),
        }
