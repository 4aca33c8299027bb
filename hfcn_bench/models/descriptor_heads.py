"""Auxiliary TI-RADS descriptor heads on a pooled feature vector, shared by every network that
can carry them (HFCN, MC-CNN's pyramid network, the two-stage system's ResNet-18, a fine-tuned
transfer trunk).

Buda et al. (Radiology 2019) train one head per TI-RADS descriptor beside the malignancy
output, on the same trunk, each loss masked where the report is silent
(:func:`hfcn_bench.models.loss.descriptor_loss`). Each head here is ``Dropout -> Linear`` on
the globally pooled features. The heads read the features, never the other way round: the
malignancy output does not depend on them, and they are never given a descriptor as input.

>>> heads = DescriptorHeads(512, descriptor_classes(0.5))     # doctest: +SKIP
>>> logits = heads(pooled)        # one Tensor[B, K_f] per descriptor  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data.descriptors import DESCRIPTORS

__all__ = ["DESCRIPTOR_CLASSES", "DescriptorHeads", "descriptor_classes"]

# Class count of each head, in DESCRIPTOR_FIELDS order.
DESCRIPTOR_CLASSES: tuple[int, ...] = tuple(len(v) for v in DESCRIPTORS.values())


def descriptor_classes(weight: float) -> tuple[int, ...]:
    """The heads a config's ``aux_descriptors`` loss weight asks for: all of them when the
    weight is positive, none (``()``) at 0."""
    return DESCRIPTOR_CLASSES if weight > 0 else ()


class DescriptorHeads(nn.ModuleList):
    """One ``Dropout(dropout) -> Linear(dim, K_f)`` per entry of ``classes``.

    ``pooled (Tensor[B, dim]) -> tuple of Tensor[B, K_f]`` (logits). Its state-dict keys are
    ``<f>.1.weight``/``<f>.1.bias``, so a model that held a plain ``ModuleList`` of the same
    layers loads unchanged."""

    def __init__(self, dim: int, classes: Sequence[int], dropout: float = 0.0):
        super().__init__(nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, int(k))) for k in classes)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        return tuple(head(pooled) for head in self)
