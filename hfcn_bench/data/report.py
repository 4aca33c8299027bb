"""The load report: what a loader found, counted, and every wart it met (once each).

A *wart* is a defect in the input that the loader handled instead of crashing on: a case it
skipped, an outline it salvaged, an image it dropped. Each wart names the file, says what was
wrong and what was done about it, so a user can check the decision against the data.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field

from ..errors import DataWarning

__all__ = ["Wart", "WART_KINDS", "RuleCounts", "LoadReport", "DataWarning"]


# Every kind of wart a loader can record, with what it means. Kept in one place so the CLI,
# the docs and the tests agree on the vocabulary.
WART_KINDS: dict[str, str] = {
    "malformed-xml": "the case XML does not parse; the whole case is skipped",
    "truncated-outline": "the <svg> JSON is cut short; points before the cut are salvaged, or the mark is skipped",
    "empty-outline": "a frame has no nodule outline; skipped, or used as a full-frame ROI",
    "duplicate-outline": "the same outline twice in one frame; one copy is kept",
    "short-outline": "a region has fewer than 3 points; it cannot bound a nodule and is ignored",
    "duplicate-image": "byte-identical to an image already kept; this copy is dropped",
    "missing-image": "the image a mark refers to does not exist; the frame is skipped",
    "unreadable-image": "the image exists but cannot be decoded; the frame is skipped",
    "unknown-value": "a clinical field or TI-RADS value outside the known vocabulary; treated as empty",
    "case-number-mismatch": "<number> differs from the file name; the file name is used as case id",
    "bad-mark": "a <mark> without a usable <image> index; skipped",
    "orphan-image": "an image no case refers to; ignored",
    "empty-mask": "a folder-format mask with no foreground; the image is used whole, without an outline",
    "unreadable-mask": "a folder-format mask that cannot be decoded or whose size differs from its image's; the "
    "image is used whole, without an outline",
    "outline-outside-frame": "an outline lies partly outside its frame: clipped when most of it is inside, "
    "its ROI skipped when most of it is outside",
    "tiny-roi": "an ROI box with a side under the stated minimum (data.rois.MIN_ROI_SIDE); the ROI is skipped",
    "duplicate-case": "two case files with one case id (13.xml beside 13.XML, or the same <number>); the first is kept",
    "label-conflict": "the same image bytes under both labels; every copy is dropped",
    "linked-cases": "cases that share an image, or hold near-duplicate images (one patient under two case ids, a "
    "frame saved again): kept on one side of every split",
    "ignored-folder": "a sub-folder that is not read: not a class folder (benign/, malignant/), a hidden folder "
    "(.ipynb_checkpoints/), or a folder inside a case folder",
    "skipped-file": "a file in a class or case folder that the folder format does not read (a DICOM, a text "
    "file, a hidden file); not read",
}


@dataclass(frozen=True)
class Wart:
    """One defect in the input and what the loader did about it.

    ``file`` is the path relative to the dataset root (posix separators) so that reports are
    comparable between machines; ``case``/``frame`` locate it when known.
    """

    kind: str
    file: str
    message: str
    action: str
    case: str | None = None
    frame: int | None = None

    def __post_init__(self):
        if self.kind not in WART_KINDS:
            raise ValueError(f"unknown wart kind {self.kind!r}; known: {sorted(WART_KINDS)}")

    @property
    def key(self) -> tuple:
        # The message is part of the identity: one file can hold two different defects of
        # one kind (an unknown TI-RADS and an unknown margin in the same XML).
        return (self.kind, self.file, self.case, self.frame, self.message)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RuleCounts:
    """Label counts under one label rule, at three granularities.

    ``excluded`` counts what the rule leaves out: unlabelled cases (empty TI-RADS) and, for
    ``mccnn``, the 4a/4b cases it drops on purpose. Frames and ROIs are counted as they are
    usable (after warts), before de-duplication, so they describe the data, not one run.
    """

    rule: str
    cases: dict[str, int] = field(default_factory=lambda: {"benign": 0, "malignant": 0, "excluded": 0})
    frames: dict[str, int] = field(default_factory=lambda: {"benign": 0, "malignant": 0, "excluded": 0})
    rois: dict[str, int] = field(default_factory=lambda: {"benign": 0, "malignant": 0, "excluded": 0})

    def to_dict(self) -> dict:
        return {"rule": self.rule, "cases": dict(self.cases), "frames": dict(self.frames), "rois": dict(self.rois)}


@dataclass
class LoadReport:
    """Counts and warts of one load. ``samples`` is the number of labelled ROIs the loader
    returned under the active ``label_rule`` (after de-duplication); zero means nothing usable.
    ``case_files = cases + cases_skipped``: every case file found is either read or skipped
    with a wart (malformed, or a duplicate case id)."""

    root: str
    format: str
    label_rule: str
    options: dict = field(default_factory=dict)
    case_files: int = 0
    cases: int = 0
    cases_skipped: int = 0
    frames: int = 0
    frames_usable: int = 0
    outlines: int = 0
    arrows: int = 0
    dual_view_frames: int = 0
    samples: int = 0
    samples_by_label: dict[str, int] = field(default_factory=lambda: {"benign": 0, "malignant": 0})
    sample_cases: int = 0
    by_rule: dict[str, RuleCounts] = field(default_factory=dict)
    warts: list[Wart] = field(default_factory=list)
    # a dataset that ships its own split: {"train": {"cases", "benign", "malignant"}, "test": ...}
    # counted on the samples returned (after de-duplication); empty otherwise
    sides: dict = field(default_factory=dict)
    _seen: set = field(default_factory=set, repr=False, compare=False)

    def add(
        self, kind: str, file: str, message: str, action: str, case: str | None = None, frame: int | None = None
    ) -> bool:
        """Record a wart unless the same one (kind, file, case, frame, message) was already
        recorded, so that a defect met twice (e.g. by two passes) is reported once. True if
        recorded."""
        wart = Wart(kind, file, message, action, case, frame)
        if wart.key in self._seen:
            return False
        self._seen.add(wart.key)
        self.warts.append(wart)
        return True

    def wart_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(w.kind for w in self.warts).items()))

    def warts_of(self, kind: str) -> list[Wart]:
        return [w for w in self.warts if w.kind == kind]

    def warts_of_file(self, file: str) -> list[Wart]:
        return [w for w in self.warts if w.file == file]

    @property
    def usable(self) -> bool:
        return self.samples > 0

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "format": self.format,
            "label_rule": self.label_rule,
            "options": dict(self.options),
            "case_files": self.case_files,
            "cases": self.cases,
            "cases_skipped": self.cases_skipped,
            "frames": self.frames,
            "frames_usable": self.frames_usable,
            "outlines": self.outlines,
            "arrows": self.arrows,
            "dual_view_frames": self.dual_view_frames,
            "samples": self.samples,
            "samples_by_label": dict(self.samples_by_label),
            "sample_cases": self.sample_cases,
            "by_rule": {k: v.to_dict() for k, v in self.by_rule.items()},
            "wart_counts": self.wart_counts(),
            "warts": [w.to_dict() for w in self.warts],
            **({"sides": {k: dict(v) for k, v in self.sides.items()}} if self.sides else {}),
        }

    def warn_summary(self, stacklevel: int = 3) -> None:
        """One ``DataWarning`` for the whole load (not one per wart: DDTI alone has ~20)."""
        if not self.warts:
            return
        counts = ", ".join(f"{n} {k}" for k, n in self.wart_counts().items())
        warnings.warn(
            f"{self.root}: {len(self.warts)} data warts handled ({counts}); see the load report "
            "(`.report.warts`, or `hfcn-bench data check`)",
            DataWarning,
            stacklevel=stacklevel,
        )
