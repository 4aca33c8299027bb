"""The public crop + resize op and a ``torch.autograd.Function`` over it."""

from __future__ import annotations

import torch

from ._extension import backend, cuda_kernels_loaded, load_extension
from .reference import crop_resize_reference, normalize_size

__all__ = ["CropResizeFunction", "crop_resize", "raise_device_box_error"]


class CropResizeFunction(torch.autograd.Function):
    """Autograd wrapper over ``torch.ops.hfcn_bench.crop_resize``, kept for callers that want a
    Python ``Function`` (the op itself is differentiable: its autograd is registered in C++).

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
            per sample, on the device of ``x`` or on the CPU. A list of rows is accepted too.
            For CUDA maps, CPU boxes are validated on the host and copied to the GPU
            asynchronously; CUDA boxes are validated on the GPU (no synchronisation): a window
            that does not fit is clamped into the map there and reported by the next call on
            that device, or at once by :func:`hfcn_bench.ops.raise_device_box_error`.
        size (int or (oh, ow)): output size of every crop.

    Returns:
        Tensor[B, N, C, oh, ow] with ``y[b, n] == F.interpolate(x[b:b+1, :, t:t+h, l:l+w],
        size, mode="bilinear", align_corners=False)[0]``.

    Runs the C++/CUDA extension (built on first use) and falls back to
    :func:`crop_resize_reference` when it cannot be built (``backend()`` then says
    ``"reference"``). Raises ``ValueError``/``TypeError`` naming the bad box or argument.
    """
    if not isinstance(boxes, torch.Tensor):
        # Host rows stay on the host: they are checked there, never read back from a device.
        boxes = torch.as_tensor(boxes, dtype=torch.int64)
    if boxes.device != x.device and boxes.device.type != "cpu":
        # Checked here too: the dispatcher would otherwise pick a kernel by the other device.
        raise ValueError(
            f"x is on {x.device} but boxes are on {boxes.device}; put both on one device (or boxes on the CPU)"
        )
    oh, ow = normalize_size(size)
    if not load_extension():
        return crop_resize_reference(x, boxes, (oh, ow))
    if x.device.type != "cpu" and (x.device.type != "cuda" or backend() != "cuda"):
        # Extension built without its CUDA kernels (no nvcc), or another device: the reference.
        return crop_resize_reference(x, boxes, (oh, ow))
    # Differentiable as is (autograd in C++, a few microseconds per call).
    return torch.ops.hfcn_bench.crop_resize(x, boxes, oh, ow)


def raise_device_box_error(device=None) -> None:
    """Raise the ``ValueError`` of a bad box that a CUDA kernel found, if any (then clear it).

    CUDA boxes are checked on the device, without a synchronisation: a window that does not fit
    is clamped into the map for that call and recorded, and the next CUDA call of the op
    raises it. This synchronises ``device`` (default: every CUDA device) and raises
    at once instead: call it where an error must surface now (end of an epoch, a test). A no-op
    without the CUDA kernels, and it never builds the extension: if no CUDA kernel was loaded,
    none can have recorded a fault (the epoch loop calls this for every system on CUDA).
    """
    if not cuda_kernels_loaded() or not torch.cuda.is_available():
        return
    # The record is the process's: with no device named, wait for every device's kernels.
    for d in [device] if device is not None else range(torch.cuda.device_count()):
        torch.cuda.synchronize(d)
    message = torch.ops.hfcn_bench.take_box_error()
    if message:
        raise ValueError(message)
