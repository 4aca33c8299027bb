"""pytest-benchmark suite for the crop + resize op (run with ``pytest --benchmark``).

Groups are "<direction> <shape> <threads>T", one benchmark per method, so pytest-benchmark's
tables compare the fused op, naive slicing, the torchvision peers and the memory floor of the
direction side by side; ``--benchmark-json``/``--benchmark-compare`` work as usual. Nothing here asserts a
time: the speed targets are checked (and reported) by ``hfcn-bench compare``. Each benchmark
checks parity with the contract first (see hfcn_bench.bench.op_speed)."""

from __future__ import annotations

import pytest
import torch

from hfcn_bench import ops
from hfcn_bench.bench import op_speed

SHAPES = [op_speed.PAPER_SHAPE, op_speed.LARGE_SHAPE]
METHODS = [m for m in op_speed.available_methods() if m != "image-multicrop"]


@pytest.fixture(params=[1, 2], ids=lambda t: f"{t}T")
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.label.replace(" ", "_"))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
def test_op(benchmark, shape, method, direction, threads):
    gen = torch.Generator().manual_seed(0)
    boxes = ops.boundary_boxes(shape.height, shape.width, shape.alpha)
    x = torch.randn(shape.batch, shape.channels, shape.height, shape.width, generator=gen)
    fn = op_speed._make_method(method, shape, boxes, torch.device("cpu"))
    check = op_speed._parity(method, fn, x, boxes, shape.out)
    assert check["parity_ok"], f"{method} failed parity: {check['parity']}"
    benchmark.group = f"{direction} {shape.label} {threads}T"
    benchmark.extra_info.update({"parity": check["parity"], "threads": threads, "backend": ops.backend()})
    if method == "floor":  # the direction's own floor: copies of the bytes it must move
        grad = torch.randn(shape.batch, len(boxes), shape.channels, shape.out, shape.out, generator=gen)
        run = op_speed._floor_statement(fn, x, grad, direction)
    elif direction == "forward":

        def run():
            with torch.no_grad():
                return fn(x)
    else:
        xg = x.clone().requires_grad_()
        grad = torch.randn_like(fn(x))

        def run():
            return torch.autograd.grad(fn(xg), xg, grad)

    benchmark(run)
