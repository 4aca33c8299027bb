"""Working from a run folder: re-evaluate a trained run, predict new ROIs, show where the model
looked.

A run folder (written by :func:`hfcn_bench.train.train_and_evaluate` or
:func:`~hfcn_bench.train.cross_validate`) holds ``config.json`` (training config, data
provenance), ``split.json`` (the case-level split manifest), ``best.pt``/``last.pt`` (or
``fold{i}/`` with them for k-fold runs), ``history.json``, ``metrics.json`` and
``predictions.csv``.

:func:`evaluate_run` reloads the data the manifest names, checks its fingerprint, rebuilds every
model from its checkpoint and recomputes the test report exactly as training did: the threshold
is chosen again on the *validation* cases stored in the checkpoint (training cases when the run
had none), never on the test side.

:func:`predict_files` classifies the ROIs of DDTI case XMLs or of whole image files and draws,
per ROI, the crop windows of the feature-cropping branch with each crop's malignant
probability, plus a Grad-CAM map of the fused malignant probability (Selvaraju et al., ICCV
2017) on the backbone's feature map.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .atomic import atomic_write
from .data.report import DataWarning, LoadReport
from .data.rois import crop_roi, expand_box, open_rgb, polygon_bbox
from .data.splits import Manifest, case_labels, read_manifest, verify_manifest
from .errors import HfcnError
from .train import (
    RUN_FORMAT,
    FoldResult,
    Progress,
    TrainConfig,
    _fold_boot,
    _threshold_with_fallback,
    model_from_checkpoint,
    pool_folds,
    predict,
    score_predictions,
)

__all__ = ["RunInfo", "read_run", "evaluate_run", "predict_files", "roi_inputs", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass
class RunInfo:
    """A run folder's ``config.json`` and ``split.json``."""

    path: Path
    header: dict
    config: TrainConfig
    manifest: Manifest

    @property
    def is_kfold(self) -> bool:
        return self.manifest.method == "kfold"

    def checkpoint(self, fold: int | None = None, which: str = "best") -> Path:
        """Path of ``best.pt``/``last.pt``, inside ``fold{fold}/`` for k-fold runs."""
        if which not in ("best", "last"):
            raise HfcnError(f"checkpoint must be 'best' or 'last', got {which!r}")
        if self.is_kfold:
            if fold is None:
                raise HfcnError(f"{self.path} is a {len(self.manifest.splits)}-fold run: say which fold's model",
                                hint=f"--fold N with N in 0..{len(self.manifest.splits) - 1}")
            return self.path / f"fold{fold}" / f"{which}.pt"
        return self.path / f"{which}.pt"


def read_run(run_dir: str | os.PathLike) -> RunInfo:
    """Read a run folder's config and split manifest; a missing or foreign file is a clear error."""
    path = Path(run_dir)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise HfcnError(f"{path} is not a run folder (no config.json)",
                        hint="give the --out folder of an `hfcn-bench train` run")
    try:
        header = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HfcnError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != RUN_FORMAT:
        raise HfcnError(f"{cfg_path} is not an hfcn-bench run config")
    try:
        config = TrainConfig.from_dict(header["train"])
    except (KeyError, TypeError) as exc:
        raise HfcnError(f"{cfg_path}: damaged run config ({exc!r})") from None
    return RunInfo(path, header, config, read_manifest(path / "split.json"))


def _load_run_data(info: RunInfo, data: str | os.PathLike | None):
    from .data import load_dataset

    root = data if data is not None else info.manifest.data.get("root")
    if not root:
        raise HfcnError(f"{info.path}: the manifest names no data folder", hint="pass --data DIR")
    opts = {k: v for k, v in (info.manifest.data.get("options") or {}).items()
            if k in ("margin", "empty_outline", "truncated")}
    with warnings.catch_warnings():
        # The warts were reported when the run was trained; the fingerprint check below is
        # what matters now.
        warnings.simplefilter("ignore", DataWarning)
        ds = load_dataset(root, label_rule=info.manifest.label_rule, **opts)
    verify_manifest(info.manifest, ds)
    return ds


def evaluate_run(
    run_dir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    checkpoint: str = "best",
    aggregate: str | None = "run",
    n_boot: int | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> dict:
    """Recompute a run's test report from its checkpoints.

    Args:
        run_dir: the run folder.
        data: the dataset folder (default: the root recorded in the manifest); its fingerprint
            must match the manifest.
        checkpoint: "best" or "last".
        aggregate: None (per ROI), "mean" or "max" (per case); "run" (default): the run's own
            setting.
        n_boot: bootstrap resamples (default: the run's).
        device: where the models run.

    Returns the same report as training wrote to ``metrics.json`` (pooled over folds for k-fold
    runs) plus ``checkpoint`` and ``stored_threshold`` (what training stored, for comparison).
    """
    info = read_run(run_dir)
    if aggregate == "run":
        aggregate = info.header.get("aggregate")
    n_boot = int(info.header.get("n_boot", 1000) if n_boot is None else n_boot)
    ds = _load_run_data(info, data)
    cfg = info.config
    folds: list[FoldResult] = []
    stored = []
    for split in info.manifest.splits:
        ck_path = info.checkpoint(split.fold, checkpoint)
        model, cfg_ck, ck = model_from_checkpoint(ck_path, device=device)
        train_samples, test_samples = split.select(ds)
        val_cases = set(ck.get("extra", {}).get("val_cases", []))
        unknown = val_cases - set(split.train)
        if unknown:
            raise HfcnError(f"{ck_path}: {len(unknown)} validation case(s) are not on the training side of the "
                            f"split: {sorted(unknown)[:5]}", hint="the checkpoint belongs to another run")
        val_samples = [s for s in train_samples if s.case_id in val_cases]
        source = "validation" if val_samples else "training"
        thr_pred = predict(model, val_samples if val_samples else train_samples, cfg_ck, progress=progress)
        test_pred = predict(model, test_samples, cfg_ck, progress=progress)
        boot = _fold_boot(n_boot) if info.is_kfold else n_boot
        rep = score_predictions(test_pred, thr_pred, [s.label for s in train_samples], cfg_ck, aggregate=aggregate,
                                n_boot=boot, train_case_labels=case_labels(train_samples), threshold_source=source)
        rep["skipped"] = thr_pred.skipped + test_pred.skipped
        roi_thr = _threshold_with_fallback(thr_pred, cfg_ck.threshold_rule, None, source)[0]
        folds.append(FoldResult(split.fold if split.fold is not None else 0, test_pred, roi_thr, train_samples, rep))
        stored.append(ck.get("metrics", {}).get("threshold"))
    if info.is_kfold:
        report = pool_folds(folds, cfg, aggregate=aggregate, n_boot=n_boot)
    else:
        report = dict(folds[0].report)
        report["kind"] = info.manifest.method
    report["checkpoint"] = checkpoint
    report["stored_threshold"] = stored if info.is_kfold else stored[0]
    report["run"] = str(info.path)
    report["config"] = cfg.to_dict()
    report["data"] = ds.describe()
    return report


# ---------------------------------------------------------------------------------------------
# prediction on files


def _find_frame_image(xml_path: Path, case_id: str, index: int) -> Path | None:
    """The image of frame ``index`` of a case, in either DDTI layout (flat, or xml/ beside an
    image folder)."""
    folders = [xml_path.parent]
    if xml_path.parent.name == "xml":
        folders += [xml_path.parent.parent / d for d in ("raw_jpg", "jpg", "images")]
    for folder in folders:
        for ext in (".jpg", ".jpeg", ".png", ".JPG", ".PNG"):
            p = folder / f"{case_id}_{index}{ext}"
            if p.is_file():
                return p
    return None


@dataclass
class RoiInput:
    """One ROI to predict: where it comes from and its box in the frame."""

    source: Path
    image: Path
    case_id: str
    frame: int
    region: int
    box: tuple[int, int, int, int]
    kind: str
    tirads: str | None = None
    label: int | None = None

    @property
    def name(self) -> str:
        return f"{self.case_id}_{self.frame}_{self.region}"


def roi_inputs(paths: Sequence[str | os.PathLike], margin: float = 0.0, label_rule: str = "tirads"
               ) -> tuple[list[RoiInput], list[str]]:
    """ROIs of the given files: every nodule outline of a DDTI case XML (with its TI-RADS label
    when present), or the whole image of an image file. Returns ``(rois, errors)``: a file that
    cannot be used gives one error line naming it, never an exception."""
    from .data.ddti import label_for, parse_case_xml

    rois: list[RoiInput] = []
    errors: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            errors.append(f"{path}: no such file")
            continue
        suffix = path.suffix.lower()
        if suffix == ".xml":
            report = LoadReport(str(path.parent), "ddti", label_rule)
            case = parse_case_xml(path, report)
            if case is None:
                errors.append(f"{path}: " + "; ".join(f"{w.message}" for w in report.warts) or "unreadable case XML")
                continue
            label = label_for(case.tirads, label_rule)
            found = 0
            for frame in case.frames:
                img = _find_frame_image(path, case.case_id, frame.index)
                if img is None:
                    errors.append(f"{path}: frame {frame.index}: image {case.case_id}_{frame.index}.jpg not found "
                                  f"next to the XML or in ../raw_jpg")
                    continue
                try:
                    from PIL import Image

                    with Image.open(img) as im:
                        size = im.size
                except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-file error
                    errors.append(f"{img}: cannot read image ({exc})")
                    continue
                seen = []
                for r in frame.svg.regions:
                    if r.is_outline and r.points not in seen:
                        seen.append(r.points)
                for i, pts in enumerate(seen):
                    box = expand_box(polygon_bbox(pts), margin, size)
                    rois.append(RoiInput(path, img, case.case_id, frame.index, i, box, "outline", case.tirads, label))
                    found += 1
                if not seen:
                    rois.append(RoiInput(path, img, case.case_id, frame.index, 0, (0, 0, size[0], size[1]),
                                         "full-frame (no outline)", case.tirads, label))
                    found += 1
            if not found and not any(e.startswith(str(path)) for e in errors):
                errors.append(f"{path}: the case has no frames")
        elif suffix in IMAGE_SUFFIXES:
            try:
                from PIL import Image

                with Image.open(path) as im:
                    im.load()
                    size = im.size
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{path}: cannot read image ({exc})")
                continue
            m = re.match(r"^(.+)_(\d+)$", path.stem)
            case_id, frame = (m.group(1), int(m.group(2))) if m else (path.stem, 0)
            rois.append(RoiInput(path, path, case_id, frame, 0, (0, 0, size[0], size[1]), "whole image"))
        else:
            errors.append(f"{path}: not a case XML or an image ({', '.join(IMAGE_SUFFIXES)})")
    return rois, errors


class _FeatureHook:
    """Keeps the backbone's output (and, after backward, its gradient) for Grad-CAM."""

    def __init__(self, module: torch.nn.Module):
        self.feat: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        output.retain_grad()
        self.feat = output

    def close(self):
        self.handle.remove()


def _gradcam(feat: torch.Tensor, grad: torch.Tensor) -> np.ndarray:
    """Grad-CAM: ReLU of the feature channels weighted by their mean gradient, in [0, 1]."""
    feat, grad = feat.detach(), grad.detach()
    w = grad.mean(dim=(1, 2), keepdim=True)
    cam = torch.relu((w * feat).sum(0))
    cam = cam / cam.max() if float(cam.max()) > 0 else cam
    return cam.detach().cpu().numpy()


def _explain(model, x: torch.Tensor) -> dict:
    """Forward one ROI ``x [1, 3, S, S]`` with gradients to the feature map; returns the
    probabilities, the crop windows and the Grad-CAM map of the fused malignant probability."""
    model.eval()
    model.reset_crop_generator()
    hook = _FeatureHook(model.backbone)
    try:
        with torch.enable_grad():
            out = model(x)
            out.prob[0, 1].backward()
        feat = hook.feat
        # crop="image" runs the backbone on the image and its crops in one batch; the first
        # map is the whole ROI's.
        cam = _gradcam(feat[0], feat.grad[0]) if feat is not None and feat.grad is not None else None
    finally:
        hook.close()
        model.zero_grad(set_to_none=True)
    out = type(out)(*(v.detach() if isinstance(v, torch.Tensor) else v for v in out))
    return {
        "prob": float(out.prob[0, 1]),
        "global_prob": float(out.global_prob[0, 1]),
        "crop_prob": None if out.crop_prob is None else float(out.crop_prob[0, 1]),
        "crop_probs": [] if out.crop_probs is None else [float(v) for v in out.crop_probs[0, :, 1]],
        "boxes": [] if out.boxes is None else [list(map(int, b)) for b in out.boxes.tolist()],
        "cam": cam,
        "feature_hw": tuple(int(v) for v in model.feature_hw),
    }


_DISPLAY = 256


def _draw(roi_img, info: dict, config: TrainConfig, threshold: float, title: str, path: Path) -> Path:
    """The "where the model looked" picture: crop windows with their P(malignant) on the left,
    Grad-CAM on the right."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    img = np.asarray(roi_img)
    fig = Figure(figsize=(8.4, 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.imshow(img)
    fh, fw = info["feature_hw"]
    # Windows are in feature-map pixels (image pixels for crop="image"); each map pixel covers
    # display/map pixels of the ROI.
    if config.crop == "image":
        sy = sx = _DISPLAY / config.image_size
    else:
        sy, sx = _DISPLAY / fh, _DISPLAY / fw
    cmap = colormaps["RdYlGn_r"]
    n = len(info["boxes"])
    for k, ((t, l, h, w), p) in enumerate(zip(info["boxes"], info["crop_probs"])):
        inset = 1.5 * (k + 1)  # overlapping windows stay distinguishable
        ax1.add_patch(Rectangle((l * sx + inset, t * sy + inset), w * sx - 2 * inset, h * sy - 2 * inset,
                                fill=False, edgecolor=cmap(p), linewidth=2))
        cx, cy = (l + w / 2) * sx, (t + h / 2) * sy
        # Label each window towards its own corner (the centre window in the middle).
        if n == 5 and config.crop in ("bfc", "image") and k < 4:
            cx = (l * sx + 12) if k in (0, 2) else ((l + w) * sx - 12)
            cy = (t * sy + 14) if k in (0, 1) else ((t + h) * sy - 14)
        ax1.text(cx, cy, f"{p:.2f}", color="white", fontsize=9, ha="center", va="center",
                 bbox=dict(boxstyle="round,pad=0.2", fc=cmap(p), ec="none", alpha=0.85))
    ax1.set_title("crop windows: P(malignant) per crop" if n else "global branch only", fontsize=9)
    ax1.set_axis_off()
    ax2.imshow(img)
    if info["cam"] is not None:
        cam = torch.from_numpy(info["cam"])[None, None].float()
        up = torch.nn.functional.interpolate(cam, size=(img.shape[0], img.shape[1]), mode="bilinear",
                                             align_corners=False)[0, 0].numpy()
        ax2.imshow(up, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax2.set_title("Grad-CAM of the fused P(malignant)", fontsize=9)
    ax2.set_axis_off()
    call = "malignant" if info["prob"] >= threshold else "benign"
    parts = [f"P = {info['prob']:.3f}", f"global {info['global_prob']:.3f}"]
    if info["crop_prob"] is not None:
        parts.append(f"crops {info['crop_prob']:.3f} (ω = {config.branch_weight:g})")
    fig.suptitle(f"{title}\n{', '.join(parts)} -> {call} at threshold {threshold:.3f}", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    return atomic_write(path, lambda fh: fh.write(data))


def predict_files(
    run_dir: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike = "best",
    fold: int | None = None,
    margin: float | None = None,
    device: str = "cpu",
    draw: bool = True,
) -> tuple[list[dict], list[str]]:
    """P(malignant) for every ROI of ``paths`` (DDTI case XMLs or image files), with a PNG per
    ROI showing the crop windows, each crop's probability and a Grad-CAM map.

    Args:
        run_dir: the run folder; its ``best.pt`` (``fold{fold}/best.pt`` for k-fold runs) and the
            threshold stored in it are used.
        paths: case XMLs (all their outlines; the frame images are looked up beside the XML or
            in ``../raw_jpg``) and/or images (the whole image is the ROI).
        out_dir: where the PNGs go (default ``run_dir/predictions``).
        checkpoint: "best", "last" or a checkpoint path.
        margin: ROI margin for outlines (default: the run's data option).

    Returns ``(rows, errors)``: one dict per ROI (probabilities, decision, window probabilities,
    PNG path) and one line per input that could not be used.
    """
    from .data.dataset import IMAGENET_MEAN, IMAGENET_STD

    info = read_run(run_dir)
    if str(checkpoint) in ("best", "last"):
        ck_path = info.checkpoint(fold, str(checkpoint))
    else:
        ck_path = Path(checkpoint)
    model, cfg, ck = model_from_checkpoint(ck_path, device=device)
    threshold = ck.get("metrics", {}).get("threshold")
    if threshold is None:
        threshold = ck.get("extra", {}).get("threshold")
    if threshold is None:
        raise HfcnError(f"{ck_path} holds no decision threshold (training did not finish?)",
                        hint="use the best.pt of a finished run")
    if margin is None:
        margin = float((info.manifest.data.get("options") or {}).get("margin", 0.0))
    out = Path(out_dir) if out_dir is not None else info.path / "predictions"
    rois, errors = roi_inputs(paths, margin=margin, label_rule=info.manifest.label_rule)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    dev = next(model.parameters()).device
    rows = []
    for r in rois:
        try:
            frame = open_rgb(r.image)
            roi = crop_roi(frame, r.box, size=cfg.image_size, letterbox=cfg.letterbox)
        except Exception as exc:  # noqa: BLE001 - one bad ROI must not end the others
            errors.append(f"{r.image}: ROI {r.name} could not be loaded ({exc})")
            continue
        x = torch.from_numpy(np.asarray(roi, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        x = ((x - mean) / std)[None].to(dev)
        res = _explain(model, x)
        png = None
        if draw:
            shown = crop_roi(frame, r.box, size=_DISPLAY, letterbox=cfg.letterbox)
            title = f"{r.source.name}: frame {r.frame}, ROI {r.region} ({r.kind})"
            if r.tirads:
                title += f", TI-RADS {r.tirads}"
            png = _draw(shown, res, cfg, float(threshold), title, out / f"{r.name}.png")
        rows.append({
            "input": str(r.source), "image": str(r.image), "case_id": r.case_id, "frame": r.frame,
            "region": r.region, "kind": r.kind, "bbox": list(r.box), "tirads": r.tirads, "label": r.label,
            "prob": res["prob"], "global_prob": res["global_prob"], "crop_prob": res["crop_prob"],
            "crop_probs": res["crop_probs"], "threshold": float(threshold),
            "pred": "malignant" if res["prob"] >= float(threshold) else "benign",
            "png": None if png is None else str(png),
        })
    return rows, errors
