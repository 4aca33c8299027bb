"""``hfcn``: the Hybrid Feature Cropping Network (Song et al., IEEE Access 8:64064-64074, 2020)
as a registered system, so that training, evaluation, prediction, comparison and ranking go
through the same code path as every comparator. The HFCN-specific work (configuration,
presets, the training task, prediction) is :mod:`hfcn_bench.systems.hfcn_training`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..data.splits import inner_split
from ..engine import torch_threads
from . import hfcn_training as T
from .base import Fitted, Output, System
from .gradcam import gradcam

__all__ = ["HFCNSystem"]


class HFCNSystem(System):
    name = "hfcn"
    paper = "Song et al., IEEE Access 8:64064-64074, 2020 (PAPERS.md section 1)"
    description = (
        "one backbone; a global branch and a feature-cropping branch (BFC: four corners + centre, or "
        "RFC: random windows) share the classifier; P = w P_G + (1 - w) P_C"
    )
    config_cls = T.TrainConfig
    presets = T.PRESETS

    def limitations(self, cfg) -> list[str]:
        """What differs from the paper: the backbone's weights, the preset's optimisation, and
        each element of the pretrained-trunk recipe that is switched on (issue 22)."""
        lim = []
        if cfg.weights is None and cfg.backbone != "paper":
            lim.append(
                f"randomly initialised {cfg.backbone} backbone (the paper's Table 4 backbones were "
                "ImageNet-pretrained; only EfficientNet-Lite0/1/2 ship in a package here)"
            )
        elif cfg.weights == "imagenet":
            lim.append(f"ImageNet {cfg.backbone} backbone (weights shipped in a package)")
        elif cfg.weights is not None:
            lim.append(f"backbone weights from {cfg.weights}")
        if cfg.preset != "paper":
            lim.append(
                f"preset {cfg.preset}: {cfg.optimizer} lr {cfg.lr:g}, {cfg.epochs} epochs at {cfg.image_size} px "
                "instead of the paper's SGD lr 1e-5 at 224 px (the paper states no epoch count)"
            )
        lim += T.recipe_differences(cfg)
        lim.append("no private data: the paper trained on DDTI plus 377 private images")
        return lim

    def fit(self, train_samples, cfg, *, out_dir=None, progress=None, resume=False, keep_last=True) -> Fitted:
        tr, va = inner_split(train_samples, cfg.val_fraction, cfg.seed)
        res = T.fit(tr, va, cfg, out_dir=out_dir, progress=progress, resume=resume, keep_last=keep_last)
        training = {
            "best_epoch": res.best_epoch,
            "best_val_score": res.best_score,
            "epochs_run": len(res.history),
            "resumed_from": res.resumed_from,
            "val_cases": len(res.val_cases),
            "train_rois": len(tr),
            "val_rois": len(va),
            "history": res.history,
        }
        device = str(next(res.model.parameters()).device)
        return Fitted(
            self.name,
            cfg,
            {"model": res.model},
            {"main": res.threshold_predictions},
            {"main": "validation" if res.val_cases else "training"},
            training,
            {"train_s": res.seconds, "device": device},
            res.skipped,
            res.val_cases,
        )

    def predict(self, fitted, samples, *, progress=None) -> Output:
        t = time.perf_counter()
        pred = T.predict(fitted.models["model"], samples, fitted.config, progress=progress)
        return Output({"main": pred}, seconds=time.perf_counter() - t)

    def save(self, fitted, out_dir) -> list[str]:
        return [n for n in ("best.pt", "last.pt") if (Path(out_dir) / n).is_file()]

    def load(self, cfg, directory, record, checkpoint="best", device="cpu"):
        with torch_threads(cfg.threads):
            model, _, _ = T.model_from_checkpoint(Path(directory) / f"{checkpoint}.pt", device=device)
        return {"model": model}

    def threads(self, cfg):
        return cfg.threads if cfg.threads is not None else torch.get_num_threads()

    def explain(self, fitted, sample, display: int = 256) -> dict:
        """What HFCN looked at for one ROI: the crop windows with each window's P(malignant),
        the global branch's and the fused probability, and a Grad-CAM map (Selvaraju et al.,
        ICCV 2017) of the fused P(malignant) on the backbone's feature map. ``roi`` is the ROI
        resized to ``display`` pixels for drawing."""
        from ..data.dataset import IMAGENET_MEAN, IMAGENET_STD
        from ..data.rois import context_box, crop_roi, open_rgb

        cfg = fitted.config
        model = fitted.models["model"]
        frame = open_rgb(sample.image_path)
        box = context_box(sample.bbox, cfg.roi_context, frame.size)
        roi = crop_roi(frame, box, size=cfg.image_size, letterbox=cfg.letterbox)
        x = torch.from_numpy(np.asarray(roi, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        x = ((x - mean) / std)[None].to(next(model.parameters()).device)
        with torch_threads(cfg.threads):
            info = _explain(model, x)
        info.update(
            {
                "roi": np.asarray(crop_roi(frame, box, size=display, letterbox=cfg.letterbox)),
                "crop": cfg.crop,
                "image_size": cfg.image_size,
                "branch_weight": cfg.branch_weight,
            }
        )
        return info


def _explain(model, x: torch.Tensor) -> dict:
    """Forward one ROI ``x [1, 3, S, S]`` with gradients to the backbone's feature map; returns
    the probabilities, the crop windows and the Grad-CAM map of the fused malignant
    probability (:mod:`.gradcam`)."""
    model.reset_crop_generator()
    out, cam, _ = gradcam(model, model.backbone, x, lambda o: o.prob[0, 1])
    return {
        "prob": float(out.prob[0, 1]),
        "global_prob": float(out.global_prob[0, 1]),
        "crop_prob": None if out.crop_prob is None else float(out.crop_prob[0, 1]),
        "crop_probs": [] if out.crop_probs is None else [float(v) for v in out.crop_probs[0, :, 1]],
        "boxes": [] if out.boxes is None else [list(map(int, b)) for b in out.boxes.tolist()],
        "cam": cam,
        "cam_of": "Grad-CAM of the fused P(malignant) on the backbone map",
        "feature_hw": tuple(int(v) for v in model.feature_hw),
    }
