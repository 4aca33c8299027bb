"""The HFCN training loss: class-weighted cross-entropy on the fused probability.

Song et al., IEEE Access 8:64064-64074 (2020), eqs. 4-8: the loss is the cross-entropy of the
*fused* prediction ``P = w * P_G + (1 - w) * P_C`` (not of each branch), each sample weighted by
its class, malignant (the positive class, index 1) ``w_m = 3``, benign (index 0) ``w_b = 2``, and
summed over the batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .backbones import ModelConfigError
from .hfcn import HFCNOutput

__all__ = ["hfcn_loss", "descriptor_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def _make_class_weights(weights: tuple, K: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The class weights as a tensor on ``device``, checked on the host (they are host numbers;
    reading a CUDA tensor back would synchronise every step)."""
    if len(weights) != K or any(w < 0 for w in weights) or not sum(weights) > 0:
        raise ModelConfigError(f"class weights must be {K} non-negative numbers, not all zero, got {list(weights)}")
    with torch.inference_mode(False):  # a tensor the training steps that reuse it may save for backward
        return torch.tensor(weights, dtype=dtype, device=device)


# Made once per setting, not copied to the device in every training step.
_cached_class_weights = functools.lru_cache(maxsize=32)(_make_class_weights)


def _class_weights(weights: tuple, K: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Under a fake-tensor mode (export, compile's tracing) a cached tensor would be a fake one.
    if torch._guards.detect_fake_mode() is not None or torch.compiler.is_compiling():
        return _make_class_weights(weights, K, dtype, device)
    return _cached_class_weights(weights, K, dtype, device)


def hfcn_loss(
    out: HFCNOutput | torch.Tensor,
    labels: torch.Tensor,
    w_malignant: float = 3.0,
    w_benign: float = 2.0,
    reduction: str = "mean",
    class_weights: Sequence[float] | None = None,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Class-weighted cross-entropy ``-w_{y_i} log P_i[y_i]`` of the fused probability (eqs. 7-8).

    Args:
        out: an :class:`HFCNOutput` (its ``prob`` is used) or probabilities ``Tensor[B, K]``.
        labels (LongTensor[B]): class indices, 0 = benign, 1 = malignant.
        w_malignant, w_benign: the paper's class weights (3 and 2).
        reduction: "mean" (default): the *weighted* mean ``sum_i w_i l_i / sum_i w_i``, as
            ``F.nll_loss`` computes it, so only the ratio ``w_malignant / w_benign`` matters and
            the loss scale (hence the learning rate) does not depend on the weights; "sum": the
            paper's sum over the batch, whose scale grows with the weights and the batch size;
            "none": per-sample weighted losses ``[B]``.
        class_weights: weights for all K classes, overriding ``w_benign``/``w_malignant`` (needed
            when K != 2).
        eps: with an :class:`HFCNOutput` the loss uses its ``log_prob`` (log-sum-exp over the
            mixture of softmaxes: finite, with a gradient, however saturated the logits); a bare
            probability tensor is clamped to ``[eps, 1]`` before the log, which has no gradient
            below ``eps``.

    Returns:
        A scalar (``[B]`` with reduction="none").
    """
    prob = out.prob if isinstance(out, HFCNOutput) else out
    if not isinstance(prob, torch.Tensor) or prob.dim() != 2:
        raise ModelConfigError(
            f"hfcn_loss expects HFCNOutput or probabilities [B, K], got "
            f"{list(prob.shape) if isinstance(prob, torch.Tensor) else type(prob).__name__}"
        )
    if reduction not in _REDUCTIONS:
        raise ModelConfigError(f"unknown reduction {reduction!r}; known: {', '.join(_REDUCTIONS)}")
    K = prob.shape[1]
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ModelConfigError("labels must be an integer tensor of class indices (0 = benign, 1 = malignant)")
    if labels.shape != prob.shape[:1]:
        raise ModelConfigError(f"labels must have shape [{prob.shape[0]}], got {list(labels.shape)}")
    if class_weights is None:
        if K != 2:
            raise ModelConfigError(f"{K} classes: pass class_weights (one per class)")
        class_weights = (w_benign, w_malignant)
    try:
        host_w = tuple(float(w) for w in class_weights)
    except (TypeError, ValueError):
        raise ModelConfigError(f"class weights must be {K} numbers, got {class_weights!r}") from None
    weights = _class_weights(host_w, K, prob.dtype, prob.device)
    # Label range: checked when the labels are on the host; on CUDA, nll_loss's own device-side
    # assertion rejects an out-of-range class without a synchronisation here.
    if not torch.compiler.is_compiling() and labels.numel() > 0 and labels.device.type == "cpu":
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= K:
            raise ModelConfigError(f"labels must be in [0, {K - 1}], got values from {lo} to {hi}")
    log_p = getattr(out, "log_prob", None) if isinstance(out, HFCNOutput) else None
    if log_p is None:
        log_p = prob.clamp(min=eps, max=1.0).log()
    return F.nll_loss(log_p, labels.long(), weight=weights, reduction=reduction)


def descriptor_loss(
    logits: Sequence[torch.Tensor] | None, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Masked cross-entropy of the auxiliary descriptor heads (Buda et al., Radiology 2019: one
    head per TI-RADS descriptor, each loss masked where the descriptor is missing).

    Args:
        logits: one ``Tensor[B, K_f]`` per head (:attr:`HFCNOutput.descriptor_logits`).
        targets (LongTensor[B, F]): class index per sample and head, ``-1`` where missing.
        reduction: "mean": each head's mean over its known rows; "sum": their sum (the
            paper's summed main loss). Either way the heads are averaged over those with a
            known row in the batch, so the term does not grow with the number of heads.

    Returns:
        A scalar; 0 (with a gradient path) when no row of the batch has a known descriptor.
        Everything stays on the device: no host synchronisation per step.
    """
    if logits is None:
        raise ModelConfigError("descriptor_loss: the model has no descriptor heads (descriptor_classes is empty)")
    if reduction not in ("mean", "sum"):
        raise ModelConfigError(f"unknown reduction {reduction!r}; known: mean, sum")
    if targets.dim() != 2 or targets.shape[1] != len(logits):
        raise ModelConfigError(
            f"descriptor targets must be [B, {len(logits)}] (one column per head), got {list(targets.shape)}"
        )
    total = logits[0].sum() * 0.0
    heads = total.detach().clone()
    for f, lg in enumerate(logits):
        t = targets[:, f].to(lg.device).long()
        known = (t >= 0).sum()
        per = F.cross_entropy(lg, t.clamp(min=0), reduction="none") * (t >= 0)
        loss_f = per.sum() if reduction == "sum" else per.sum() / known.clamp(min=1)
        total = total + loss_f
        heads = heads + (known > 0).to(heads.dtype)
    return total / heads.clamp(min=1)
