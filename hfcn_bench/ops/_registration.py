"""Python-side registrations for the C++ operators: the fake (meta) kernels torch.compile needs.

Autograd is registered in C++ (``csrc/crop_resize.cpp``, the ``Autograd`` dispatch key): the op
is linear in x, so ``crop_resize_backward`` is its derivative and ``crop_resize`` is in turn
the derivative of ``crop_resize_backward`` (gradients of any order). A C++ autograd kernel
costs a few microseconds per call where a Python one costs tens, a serial share that shows on
a ~1 ms op run on several threads."""

from __future__ import annotations

import torch

_done = False


def _fake_forward(x, boxes, out_h, out_w):
    torch._check(x.dim() == 4, lambda: f"crop_resize: x must be 4-D [B, C, H, W], got {x.dim()}-D")
    torch._check(boxes.dim() in (2, 3), lambda: "crop_resize: boxes must be [N, 4] or [B, N, 4]")
    return x.new_empty((x.shape[0], boxes.shape[-2], x.shape[1], out_h, out_w))


def _fake_backward(grad, boxes, in_h, in_w):
    torch._check(grad.dim() == 5, lambda: "crop_resize_backward: grad must be 5-D")
    return grad.new_empty((grad.shape[0], grad.shape[2], in_h, in_w))


def register() -> None:
    global _done
    if _done:
        return
    torch.library.register_fake("hfcn_bench::crop_resize")(_fake_forward)
    torch.library.register_fake("hfcn_bench::crop_resize_backward")(_fake_backward)
    _done = True
