"""What every system hands the protocol: per-ROI predictions on a list of samples.

A system's ``predict`` returns one :class:`Predictions` per way it scores (its main result and
any variants). Only ``prob`` (P(malignant), or any score that ranks like it), ``labels`` and
``case_ids`` are needed for scoring; ``extra`` carries what a system can say beyond one number
(HFCN's global-branch and crop-window probabilities) and travels into ``predictions.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import metrics as M
from ..data.rois import Sample

__all__ = ["Predictions", "UNKNOWN_LABEL"]

# Label of a sample whose class is not known (prediction on unlabelled inputs); never scored.
UNKNOWN_LABEL = -1


@dataclass
class Predictions:
    """Per-ROI predictions of one model on one sample list (ROIs that could not be loaded are
    left out and named in ``skipped``).

    ``prob`` [N] float64 is P(malignant); ``labels`` [N] int64 (``UNKNOWN_LABEL`` for an
    unlabelled input); ``case_ids`` [N] object; ``samples`` the N samples predicted, in order;
    ``extra`` maps a name to an array with N rows (e.g. ``global_prob``, ``crop_probs``
    [N, n_crops]).
    """

    prob: np.ndarray
    labels: np.ndarray
    case_ids: np.ndarray
    samples: list[Sample]
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, samples: Sequence[Sample], prob, skipped: Sequence[str] = (), **extra) -> Predictions:
        """Predictions for ``samples`` (their labels and case ids) with scores ``prob``."""
        samples = list(samples)
        prob = np.asarray(prob, dtype=np.float64).reshape(-1)
        if prob.size != len(samples):
            raise ValueError(f"{prob.size} scores for {len(samples)} samples")
        labels = np.asarray([UNKNOWN_LABEL if s.label is None else s.label for s in samples], dtype=np.int64)
        return cls(
            prob,
            labels,
            np.asarray([s.case_id for s in samples], dtype=object),
            samples,
            {k: np.asarray(v, dtype=np.float64) for k, v in extra.items() if v is not None},
            list(skipped),
        )

    def __len__(self) -> int:
        return int(self.prob.size)

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.samples]

    def at_level(self, aggregate: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(prob, labels, ids)`` per ROI (``aggregate=None``) or per case ("mean"/"max")."""
        if aggregate is None:
            return self.prob, self.labels, self.case_ids
        ids, p, y = M.aggregate_by_case(self.case_ids, self.prob, self.labels, how=aggregate)
        return p, y, ids

    def labelled(self) -> Predictions:
        """The rows whose label is known."""
        keep = self.labels != UNKNOWN_LABEL
        if keep.all():
            return self
        idx = np.flatnonzero(keep)
        return self.take(idx)

    def take(self, idx) -> Predictions:
        idx = np.asarray(idx, dtype=np.int64)
        return Predictions(
            self.prob[idx],
            self.labels[idx],
            self.case_ids[idx],
            [self.samples[i] for i in idx],
            {k: v[idx] for k, v in self.extra.items()},
            list(self.skipped),
        )

    def to_json(self) -> dict:
        """A compact JSON form (what a fitted model stores of its threshold predictions)."""
        return {
            "prob": [float(v) for v in self.prob],
            "labels": [int(v) for v in self.labels],
            "case_ids": [str(c) for c in self.case_ids],
            "keys": self.keys,
        }

    @classmethod
    def from_json(cls, obj: dict) -> Predictions:
        """Inverse of :meth:`to_json` (no samples: scoring and thresholds need none)."""
        prob = np.asarray(obj["prob"], dtype=np.float64)
        return cls(prob, np.asarray(obj["labels"], dtype=np.int64), np.asarray(obj["case_ids"], dtype=object), [])
