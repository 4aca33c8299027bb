"""The public crop + resize op and the ``torch.autograd.Function`` the HFCN model calls."""

from __future__ import annotations

import torch

from ._extension import backend, load_extension
from .reference import crop_resize_reference, normalize_size

__all__ = ["CropResizeFunction", "crop_resize"]


class CropResizeFunction(torch.autograd.Function):
    """Autograd wrapper over ``torch.ops.hfcn_bench.crop_resize``.

    ``forward(x[B, C, H, W], boxes, out_h, out_w) -> y[B, N, C, out_h, out_w]``; the backward is
    ``crop_resize_backward`` (a gather, deterministic), itself differentiable, so double
    backward (``create_graph=True``) works.
    """

    @staticmethod
    def forward(x, boxes, out_h, out_w):
        return torch.ops.hfcn_bench.crop_resize(x, boxes, out_h, out_w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, boxes, _, _ = inputs
        ctx.save_for_backward(boxes)
        ctx.in_hw = (x.shape[2], x.shape[3])

    @staticmethod
    def backward(ctx, grad):
        (boxes,) = ctx.saved_tensors
        gx = torch.ops.hfcn_bench.crop_resize_backward(grad.contiguous(), boxes, *ctx.in_hw)
        return gx, None, None, None


def crop_resize(x: torch.Tensor, boxes, size) -> torch.Tensor:
    """Crop windows out of feature maps and resize each bilinearly, fused over the whole batch.

    Args:
        x (Tensor[B, C, H, W]): feature maps (float32/64, float16, bfloat16; any layout).
        boxes (LongTensor[N, 4] or LongTensor[B, N, 4]): integer windows
            ``(top, left, height, width)`` in feature-map pixels, shared by the batch or one set
            per sample, on the device of ``x``. A list of rows is accepted too.
        size (int or (oh, ow)): output size of every crop.

    Returns:
        Tensor[B, N, C, oh, ow] with ``y[b, n] == F.interpolate(x[b:b+1, :, t:t+h, l:l+w],
        size, mode="bilinear", align_corners=False)[0]``.

    Runs the C++/CUDA extension (built on first use) and falls back to
    :func:`crop_resize_reference` when it cannot be built (``backend()`` then says
    ``"reference"``). Raises ``ValueError``/``TypeError`` naming the bad box or argument.
    """
    if not isinstance(boxes, torch.Tensor):
        boxes = torch.as_tensor(boxes, dtype=torch.int64, device=x.device)
    if boxes.device != x.device:
        # Checked here too: the dispatcher would otherwise pick a kernel by the other device.
        raise ValueError(f"x is on {x.device} but boxes are on {boxes.device}; put both on one device")
    oh, ow = normalize_size(size)
    if not load_extension():
        return crop_resize_reference(x, boxes, (oh, ow))
    if x.device.type == "cuda" and backend() != "cuda":
        # Extension built without its CUDA kernels (no nvcc): CUDA tensors take the reference.
        return crop_resize_reference(x, boxes, (oh, ow))
    if not (x.requires_grad and torch.is_grad_enabled()):
        # Nothing to differentiate: skip the autograd.Function's bookkeeping (tens of µs per
        # call, a visible serial share of a ~1 ms op run on several threads).
        return torch.ops.hfcn_bench.crop_resize(x, boxes, oh, ow)
    return CropResizeFunction.apply(x, boxes, oh, ow)
