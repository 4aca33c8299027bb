"""What the page shows: the uploaded frame with the nodule box on it (clicked or typed), the
prediction's picture (HFCN: crop windows with their probabilities beside the Grad-CAM overlay;
the CNN comparators: the ROI beside its Grad-CAM; other systems: the ROI), and the result in
words."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["PREVIEW_SIDE", "Preview", "make_preview", "draw_preview", "result_picture", "result_markdown"]

# The frame is shown at most this many pixels on its longer side: a 40-megapixel upload is not
# sent back to the browser in full. Clicks are mapped back to frame pixels by the scale.
PREVIEW_SIDE = 1024

USER_BOX = (255, 214, 0)  # the box the user gave
MODEL_BOX = (0, 200, 255)  # the box a cascade system localised itself
CORNER = (255, 64, 64)


class Preview(dict):
    """The page's per-session view of the uploaded frame: ``base`` (the frame at preview size,
    uint8 RGB), ``scale`` (preview pixels per frame pixel), ``size`` (the frame's width,
    height), ``name``. A dict, so the web framework can keep it in a session state."""


def make_preview(rgb: np.ndarray, name: str) -> Preview:
    h, w = rgb.shape[:2]
    scale = min(1.0, PREVIEW_SIDE / max(w, h))
    base = (
        rgb
        if scale == 1.0
        else np.asarray(
            Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        )
    )
    return Preview(base=np.ascontiguousarray(base), scale=scale, size=(int(w), int(h)), name=name)


def draw_preview(view: Preview, box=None, model_box=None, corner=None) -> np.ndarray:
    """The preview with the user's ``box`` (yellow), a cascade's own ``model_box`` (cyan) and a
    first clicked ``corner`` (red cross), all in frame pixels."""
    im = Image.fromarray(view["base"]).convert("RGB")
    d = ImageDraw.Draw(im)
    s = view["scale"]
    width = max(2, round(max(im.size) / 300))
    for b, colour in ((box, USER_BOX), (model_box, MODEL_BOX)):
        if b is not None:
            x0, y0, x1, y1 = (v * s for v in b)
            d.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=width)
    if corner is not None:
        cx, cy = corner[0] * s, corner[1] * s
        r = 4 * width
        d.line([cx - r, cy, cx + r, cy], fill=CORNER, width=width)
        d.line([cx, cy - r, cx, cy + r], fill=CORNER, width=width)
    return np.asarray(im)


def result_picture(outcome) -> np.ndarray:
    """The prediction's figure (``bench.figures.prediction_figure``) as an RGB array."""
    from ..bench.figures import figure_rgb, prediction_figure

    return figure_rgb(prediction_figure(outcome.prediction, outcome.title, roi=outcome.roi))


def result_markdown(res: dict) -> str:
    """The result in words: P(malignant) against the run's threshold, the label, HFCN's branch
    and window probabilities, the notes and the label caveat."""
    lines = [
        f"## P(malignant) = {res['prob']:.3f} → {res['label']}",
        f"Decision threshold **{res['threshold']:.3f}** (the run's own, chosen on its training side); "
        f"run `{res['run']}` (system `{res['system']}`), ROI {', '.join(map(str, res['roi_box']))}.",
    ]
    if res.get("global_prob") is not None:
        parts = [f"global branch {res['global_prob']:.3f}"]
        if res.get("crop_prob") is not None:
            parts.append(f"crop branch {res['crop_prob']:.3f} (weight ω = {res.get('branch_weight', 0.5):g})")
        lines.append("HFCN: " + ", ".join(parts) + ".")
        if res.get("crop_probs"):
            lines.append("Crop windows' P(malignant): " + ", ".join(f"{p:.3f}" for p in res["crop_probs"]) + ".")
    if res.get("tirads"):
        lines.append(
            f"The case's TI-RADS: {res['tirads']} ({res.get('tirads_label') or 'excluded by the rule'} "
            "under the run's label rule)."
        )
    if not res.get("gradcam"):
        lines.append(
            f"No Grad-CAM: system `{res['system']}` does not classify the ROI with a CNN whose map can be "
            "explained here."
        )
    for n in res.get("notes") or []:
        lines.append(f"- note: {n}")
    if res.get("label_caveat"):
        lines.append(f"*{res['label_caveat']}*")
    return "\n\n".join(lines)
