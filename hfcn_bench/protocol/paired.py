"""Paired comparisons of two finished runs on the same held-out ROIs.

Two models scored on the same cases are compared on the same draws: the ROC-AUC difference
gets a paired case-bootstrap interval (:func:`hfcn_bench.metrics.paired_auc_difference`) and
DeLong's test (:func:`hfcn_bench.metrics.delong_test`), on the ROIs both scored (matched by
their ``key``: case / frame / region). A run's scores are its pooled out-of-fold ones:
probability minus the threshold of the fold that scored it, as the pooled AUC reads them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .. import metrics as M
from ..errors import HfcnError

__all__ = ["run_scores", "aligned", "paired_difference"]


def run_scores(run: str | Path, output: str = "main") -> dict:
    """``{"keys", "scores", "labels", "cases"}`` of one output (``main`` or a variant's name)
    of a finished run, from its ``predictions.csv``. Raises :class:`HfcnError` naming the file
    when it is missing or unreadable, or holds no labelled row of that output."""
    path = Path(run) / "predictions.csv"
    try:
        text = path.read_text(encoding="utf-8")
        rows = [r for r in csv.DictReader(io.StringIO(text)) if r.get("output") == output]
        out = {
            "keys": [r["key"] for r in rows],
            "scores": np.asarray([float(r["prob"]) - float(r["threshold"]) for r in rows]),
            "labels": np.asarray([int(r["label"]) for r in rows]),
            "cases": np.asarray([r["case_id"] for r in rows], dtype=object),
        }
    except FileNotFoundError:
        raise HfcnError(f"{path}: missing (paired comparisons read each run's predictions)") from None
    except (OSError, UnicodeDecodeError, KeyError, ValueError, TypeError) as exc:
        raise HfcnError(f"{path}: unreadable predictions ({type(exc).__name__}: {exc})") from None
    if not out["keys"]:
        raise HfcnError(f"{path}: no labelled prediction of output {output!r}")
    return out


def aligned(sets: list[dict]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]] | None:
    """``(labels, cases, [scores of each set])`` on the ROIs every set scored (:func:`run_scores`
    dicts), in the first set's order; ``None`` when fewer than 4 are shared."""
    shared = set(sets[0]["keys"]).intersection(*(s["keys"] for s in sets[1:]))
    keys = [k for k in sets[0]["keys"] if k in shared]
    if len(keys) < 4:
        return None
    sel = []
    for s in sets:
        index = {k: i for i, k in enumerate(s["keys"])}
        sel.append(np.asarray([index[k] for k in keys]))
    first = sets[0]
    return first["labels"][sel[0]], first["cases"][sel[0]], [s["scores"][i] for s, i in zip(sets, sel)]


def paired_difference(a: dict, b: dict, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """``AUC_a - AUC_b`` on the ROIs both ``a`` and ``b`` scored (:func:`run_scores` dicts):
    ``{"diff", "low", "high", "n_valid", "delong_z", "delong_p", "auc_a", "auc_b", "n_rois"}``;
    ``None`` when fewer than 4 ROIs are shared or the difference is undefined (one class)."""
    both = aligned([a, b])
    if both is None:
        return None
    y, cases, (sa, sb) = both
    try:
        boot = M.paired_auc_difference(y, sa, sb, cases, n_boot, seed=seed)
        dl = M.delong_test(y, sa, sb)
    except M.UndefinedMetricError:
        return None
    return {
        **boot,
        "delong_z": dl["z"],
        "delong_p": dl["p"],
        "auc_a": dl["auc_a"],
        "auc_b": dl["auc_b"],
        "n_rois": len(y),
    }
