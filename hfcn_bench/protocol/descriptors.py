"""Scoring the auxiliary TI-RADS descriptor heads: does the model see microcalcifications?

A system with descriptor heads puts each head's class probabilities into its predictions'
``extra`` as ``descriptor_<field>`` (``[N, K_f]``); the targets are the samples' own
``descriptors`` (read from the case reports, never given to the model). Each head is scored
one class against the rest (ROC-AUC per category, e.g. ``micro`` vs none or macro), on the rows
whose descriptor is known, with a case-bootstrap interval; the head's summary AUC is the mean
over its categories that both occur and do not occur among those rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import metrics as M
from ..data.descriptors import DESCRIPTOR_FIELDS, DESCRIPTORS, MISSING
from .predictions import Predictions

__all__ = ["DESCRIPTOR_PREFIX", "descriptor_extras", "descriptor_aucs", "descriptor_report"]

DESCRIPTOR_PREFIX = "descriptor_"


def descriptor_extras(probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{field: [N, K]}`` head probabilities as :class:`Predictions` extras
    (``descriptor_<field>``)."""
    return {DESCRIPTOR_PREFIX + name: p for name, p in probs.items()}


def descriptor_aucs(
    targets: np.ndarray, probs: dict[str, np.ndarray], case_ids=None, n_boot: int = 0, seed: int = 0
) -> dict:
    """Per head: ``{"rows": known rows, "cases": their cases, "auc": mean over categories,
    "per_class": {category: {"auc", "positives", "low", "high"}}}``.

    ``targets`` [N, F] (``MISSING`` = -1) in :data:`DESCRIPTOR_FIELDS` order; ``probs`` maps a
    field to ``[N, K]``. A category without positives or negatives among the known rows has no
    AUC (``None``); ``n_boot > 0`` adds case-bootstrap intervals (``case_ids`` required)."""
    targets = np.asarray(targets, dtype=np.int64).reshape(len(targets), -1)
    cases = np.asarray(case_ids if case_ids is not None else np.arange(len(targets)), dtype=object)
    out = {}
    for f, name in enumerate(DESCRIPTOR_FIELDS):
        if name not in probs:
            continue
        p = np.asarray(probs[name], dtype=np.float64)
        known = targets[:, f] != MISSING
        t, pk, ck = targets[known, f], p[known], cases[known]
        per_class, aucs = {}, []
        for k, cat in enumerate(DESCRIPTORS[name]):
            y = (t == k).astype(np.int64)
            row: dict = {"positives": int(y.sum()), "auc": None, "low": None, "high": None}
            if 0 < y.sum() < y.size:
                if n_boot > 0:
                    try:
                        row["auc"], row["low"], row["high"] = M.bootstrap_ci(
                            y, pk[:, k], ck, M.roc_auc, n_boot=n_boot, seed=seed
                        )
                    except M.UndefinedMetricError:
                        row["auc"] = M.roc_auc(y, pk[:, k])
                else:
                    row["auc"] = M.roc_auc(y, pk[:, k])
                aucs.append(row["auc"])
            per_class[cat] = row
        out[name] = {
            "rows": int(known.sum()),
            "cases": len(set(ck.tolist())),
            "auc": float(np.mean(aucs)) if aucs else None,
            "per_class": per_class,
        }
    return out


def descriptor_report(preds: Sequence[Predictions], n_boot: int = 0, seed: int = 0) -> dict | None:
    """The descriptor heads' scores over the test predictions of every split pooled (out of
    fold for k folds); ``None`` when the predictions carry no descriptor head."""
    preds = [p for p in preds if any(k.startswith(DESCRIPTOR_PREFIX) for k in p.extra)]
    if not preds:
        return None
    names = [n for n in DESCRIPTOR_FIELDS if all(DESCRIPTOR_PREFIX + n in p.extra for p in preds)]
    targets = np.concatenate([np.asarray([s.descriptors for s in p.samples], dtype=np.int64) for p in preds])
    probs = {n: np.concatenate([p.extra[DESCRIPTOR_PREFIX + n] for p in preds]) for n in names}
    cases = np.concatenate([p.case_ids for p in preds])
    return descriptor_aucs(targets, probs, cases, n_boot=n_boot, seed=seed)
