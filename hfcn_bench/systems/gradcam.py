"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017) for every CNN system: HFCN's backbone map and the
trunk map of the ROI classifiers (MC-CNN's pyramid network, the two-stage system's ResNet-18).

The map is ``ReLU(sum_k w_k A_k)`` with ``w_k`` the spatial mean of ``d score / d A_k`` over
the feature map ``A`` of one layer, scaled to [0, 1]. The gradient is taken with
``torch.autograd.grad`` with respect to the feature map only: nothing accumulates in the
parameters' ``.grad`` of a model that may be shared (an app serving requests, a training run
that keeps its optimiser state).

Not thread-safe for one model: a forward hook is added to the layer for the duration of a call,
so two concurrent calls on one model would see each other's maps. Callers that share a model
between threads serialise the calls (the app holds a lock per loaded run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["FeatureHook", "gradcam_map", "gradcam", "roi_classifier_explain"]


class FeatureHook:
    """Keeps the output of ``module`` from the forwards run while it is open (a context manager)."""

    def __init__(self, module: nn.Module):
        self.feat: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.feat = output

    def close(self) -> None:
        self.handle.remove()

    def __enter__(self) -> FeatureHook:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def gradcam_map(feat: torch.Tensor, grad: torch.Tensor) -> np.ndarray:
    """Grad-CAM of one map: ``feat``, ``grad`` (Tensor[C, h, w]) -> float32 array [h, w] in [0, 1]."""
    feat, grad = feat.detach().float(), grad.detach().float()
    w = grad.mean(dim=(1, 2), keepdim=True)
    cam = torch.relu((w * feat).sum(0))
    peak = float(cam.max())
    # an all-zero map (no channel pushes the score up anywhere) stays zero rather than 0/0
    cam = cam / peak if peak > 0 else cam
    return cam.cpu().numpy().astype(np.float32)


def gradcam(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, score: Callable[[Any], torch.Tensor]
) -> tuple[Any, np.ndarray | None, tuple[int, int] | None]:
    """Forward ``x`` (Tensor[1, 3, H, W]) through ``model`` in eval mode and return
    ``(output, cam, (h, w))``: the model's output (detached where it is a tensor), the Grad-CAM
    of ``score(output)`` (a scalar tensor) on ``layer``'s output for the first item of its batch
    (HFCN with crop="image" runs the ROI and its crops as one batch; the ROI's map comes first),
    and that map's size. ``cam`` is None when the layer did not run or the score does not depend
    on it."""
    model.eval()
    # The input itself requires grad so that the feature map is part of the graph even for a
    # model whose parameters are frozen.
    x = x.detach().clone().requires_grad_(True)
    with FeatureHook(layer) as hook, torch.enable_grad():
        out = model(x)
        feat = hook.feat
        cam = hw = None
        if feat is not None and feat.requires_grad:
            (grad,) = torch.autograd.grad(score(out), feat, allow_unused=True)
            if grad is not None:
                cam = gradcam_map(feat[0], grad[0])
                hw = (int(feat.shape[-2]), int(feat.shape[-1]))
    if isinstance(out, torch.Tensor):
        out = out.detach()
    elif isinstance(out, tuple):
        out = type(out)(*(v.detach() if isinstance(v, torch.Tensor) else v for v in out))
    return out, cam, hw


def roi_classifier_explain(
    model: nn.Module, trunk: nn.Module, sample, cfg, display: int = 256, what: str = "trunk"
) -> dict | None:
    """What a two-class ROI classifier (``model(x) -> logits [1, 2]``) looked at for one ROI:
    P(malignant) and the Grad-CAM of the malignant-vs-benign logit margin on ``trunk``'s map.
    The ROI is prepared exactly as the classifier's prediction prepares it
    (``systems.common.loadable_rois``: ``cfg.image_size``, ImageNet normalisation, no
    augmentation). Returns None when the ROI's image cannot be read (prediction skips it too).

    The score is the logit margin ``z_1 - z_0`` (P(malignant) = sigmoid of it) rather than the
    probability: a saturated softmax has vanishing gradients and would give an empty map for
    exactly the confident calls."""
    from ..data.rois import crop_roi, open_rgb
    from .common import loadable_rois

    ds, idx = loadable_rois([sample], cfg.image_size, cfg.seed, [])
    if not idx:
        return None
    x = ds[idx[0]][0][None].to(next(model.parameters()).device)
    logits, cam, hw = gradcam(model, trunk, x, lambda z: z[0, 1] - z[0, 0])
    prob = float(torch.softmax(logits.float(), dim=1)[0, 1])
    roi = np.asarray(crop_roi(open_rgb(sample.image_path), sample.bbox, size=display, letterbox=ds.letterbox))
    return {
        "prob": prob,
        "cam": cam,
        "feature_hw": hw,
        "roi": roi,
        "cam_of": f"Grad-CAM of the malignant logit margin on the {what} map" + (f" ({hw[0]}x{hw[1]})" if hw else ""),
    }
