"""Python-side registrations for the C++ operators: fake (meta) kernels for torch.compile and
autograd. The op is linear in x, so ``crop_resize_backward`` is its derivative and
``crop_resize`` is in turn the derivative of ``crop_resize_backward``: gradients of any order."""

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


def _setup_forward(ctx, inputs, output):
    x, boxes, _, _ = inputs
    ctx.save_for_backward(boxes)
    ctx.in_hw = (x.shape[2], x.shape[3])


def _grad_forward(ctx, grad):
    (boxes,) = ctx.saved_tensors
    gx = torch.ops.hfcn_bench.crop_resize_backward(grad, boxes, *ctx.in_hw)
    return gx, None, None, None


def _setup_backward(ctx, inputs, output):
    grad, boxes, _, _ = inputs
    ctx.save_for_backward(boxes)
    ctx.out_hw = (grad.shape[3], grad.shape[4])


def _grad_backward(ctx, grad_gx):
    (boxes,) = ctx.saved_tensors
    return torch.ops.hfcn_bench.crop_resize(grad_gx, boxes, *ctx.out_hw), None, None, None


def register() -> None:
    global _done
    if _done:
        return
    torch.library.register_fake("hfcn_bench::crop_resize")(_fake_forward)
    torch.library.register_fake("hfcn_bench::crop_resize_backward")(_fake_backward)
    torch.library.register_autograd("hfcn_bench::crop_resize", _grad_forward, setup_context=_setup_forward)
    torch.library.register_autograd(
        "hfcn_bench::crop_resize_backward", _grad_backward, setup_context=_setup_backward
    )
    _done = True
