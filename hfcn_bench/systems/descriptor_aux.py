"""Training any system's network with the auxiliary TI-RADS descriptor heads: the
``aux_descriptors`` config field, the targets a batch trains on, the heads' probabilities in
the predictions, and the sentence the report lists among the differences from the paper.

The heads themselves are :class:`hfcn_bench.models.DescriptorHeads`; their loss is
:func:`hfcn_bench.models.descriptor_loss` (masked where a case's report is silent); their
scores are :mod:`hfcn_bench.protocol.descriptors`. The targets come from the samples'
``descriptors`` (the case reports) and reach the loss only: prediction reads the image alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..data.descriptors import DESCRIPTOR_FIELDS
from ..data.rois import Sample
from ..errors import HfcnError
from ..protocol.descriptors import descriptor_aucs, descriptor_extras

__all__ = ["check_weight", "limitation", "targets", "head_probs", "extras", "head_aucs", "loop_config"]


def check_weight(value) -> float:
    """``aux_descriptors`` as a float, or :class:`HfcnError` naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise HfcnError(f"aux_descriptors must be a number >= 0 (0: no descriptor heads), got {value!r}")
    return float(value)


def limitation(weight: float) -> str | None:
    """The report's line for a run with descriptor heads (``None`` without)."""
    if not weight > 0:
        return None
    return (
        f"auxiliary TI-RADS descriptor heads (loss weight {weight:g}) trained on the case "
        "reports' composition, echogenicity, margins and calcifications: supervision the paper did not "
        "use (prediction stays image-only)"
    )


def targets(samples: Sequence[Sample]) -> torch.Tensor:
    """``LongTensor[N, F]``: each sample's descriptor classes (``-1`` = not recorded)."""
    if not samples:
        return torch.zeros((0, len(DESCRIPTOR_FIELDS)), dtype=torch.int64)
    return torch.tensor([s.descriptors for s in samples], dtype=torch.int64)


def head_probs(chunks: Sequence[Sequence[torch.Tensor]] | None) -> dict[str, np.ndarray]:
    """Softmax of the heads' logits, batch chunks concatenated: ``{field: [N, K]}`` (``{}``
    when the model has no heads). ``chunks``: one tuple of per-head logits per batch."""
    if not chunks:
        return {}
    heads = zip(*chunks)
    return {
        name: torch.cat([lg.softmax(dim=-1).float() for lg in per]).cpu().numpy().astype(np.float64)
        for name, per in zip(DESCRIPTOR_FIELDS, heads)
    }


def extras(chunks) -> dict[str, np.ndarray]:
    """:func:`head_probs` as :class:`~hfcn_bench.protocol.Predictions` extras
    (``descriptor_<field>``)."""
    return descriptor_extras(head_probs(chunks))


def head_aucs(targets_: torch.Tensor | np.ndarray, probs: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Each head's summary AUC on validation rows (``{field: auc}``, ``None`` where undefined):
    the ``val_descriptor_auc`` of an epoch's history row. ``targets_``: :func:`targets` of those
    rows; ``probs``: :func:`head_probs`."""
    t = targets_.numpy() if isinstance(targets_, torch.Tensor) else targets_
    return {name: h["auc"] for name, h in descriptor_aucs(t, probs).items()}


def loop_config(config: dict) -> dict:
    """A config as the epoch loop records it for resume checks: ``aux_descriptors`` at 0 is left
    out, so a checkpoint written before the field existed still resumes (the loop refuses a
    resume whose recorded config differs in any key), and a run without heads records what it
    recorded before."""
    if not config.get("aux_descriptors"):
        return {k: v for k, v in config.items() if k != "aux_descriptors"}
    return dict(config)
