"""The fused crop_resize op against its contract (slicing + F.interpolate), on every device,
dtype and layout, plus gradients, torch.library/torch.compile integration, determinism and
every bad-input error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hfcn_bench.ops as ops

ROOT = Path(__file__).resolve().parents[1]

# Max abs error allowed against the float64 reference, by dtype (the contract for
# float32/float64; half types round every output to 8 or 11 significant bits).
TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 4e-3, torch.bfloat16: 3e-2}
DTYPES = list(TOL)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.cuda),
]


@pytest.fixture(scope="module", autouse=True)
def extension():
    """The tests are about the extension: fail loudly if it did not build."""
    if not ops.load_extension():
        pytest.fail(f"C++ extension did not build: {ops.extension_error()}")
    return ops.backend()


def need(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    if device == "cuda" and ops.backend() != "cuda":
        pytest.skip("extension loaded without its CUDA kernels (set HFCN_BUILD_CUDA=1)")


def expected(x: torch.Tensor, boxes: torch.Tensor, size) -> torch.Tensor:
    """The contract, computed in float64 on the CPU, one crop at a time."""
    xd = x.detach().to("cpu", torch.float64)
    oh, ow = ops.normalize_size(size)
    b = boxes.cpu()
    out = torch.empty(x.shape[0], b.shape[-2], x.shape[1], oh, ow, dtype=torch.float64)
    for s in range(x.shape[0]):
        rows = b if b.dim() == 2 else b[s]
        for n, (t, left, h, w) in enumerate(rows.tolist()):
            out[s, n] = F.interpolate(
                xd[s : s + 1, :, t : t + h, left : left + w], size=(oh, ow), mode="bilinear", align_corners=False
            )[0]
    return out


def layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "contiguous":
        return x.contiguous()
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # a view with non-unit inner stride and an offset
        big = torch.zeros(x.shape[0], x.shape[1], x.shape[2] + 1, 2 * x.shape[3] + 1, dtype=x.dtype, device=x.device)
        big[:, :, 1:, 1::2] = x
        view = big[:, :, 1:, 1::2]
        assert not view.is_contiguous()
        return view
    raise AssertionError(kind)


# --------------------------------------------------------------------------- windows


def test_boundary_boxes_paper_setting():
    b = ops.boundary_boxes(14, 14, alpha=0.6)
    assert b.dtype == torch.int64 and b.shape == (5, 4)
    # round(0.6 * 14) = 8: corners at 0 and 14 - 8 = 6, centre at 3.
    assert b.tolist() == [[0, 0, 8, 8], [0, 6, 8, 8], [6, 0, 8, 8], [6, 6, 8, 8], [3, 3, 8, 8]]


@pytest.mark.parametrize(
    "size,alpha,side",
    [(14, 0.5, 7), (14, 0.7, 10), (14, 0.8, 11), (14, 0.9, 13), (14, 1.0, 14), (7, 0.5, 4), (10, 0.6, 6)],
)
def test_window_size_rounds_half_up(size, alpha, side):
    assert ops.window_size(size, alpha) == side


def test_boundary_boxes_alpha_one_is_whole_map():
    assert ops.boundary_boxes(9, 11, 1.0).tolist() == [[0, 0, 9, 11]] * 5


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, float("nan")])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        ops.boundary_boxes(14, 14, alpha)


def test_random_boxes_seeded_and_inside():
    a = ops.random_boxes(14, 12, 0.6, 50, generator=torch.Generator().manual_seed(3))
    b = ops.random_boxes(14, 12, 0.6, 50, generator=torch.Generator().manual_seed(3))
    c = ops.random_boxes(14, 12, 0.6, 50, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    t, left, h, w = a.unbind(1)
    assert (h == 8).all() and (w == 7).all()
    assert (t >= 0).all() and (t + h <= 14).all() and (left >= 0).all() and (left + w <= 12).all()
    assert len({tuple(r) for r in a.tolist()}) > 5  # positions actually vary


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "strided"])
def test_forward_matches_contract(device, dtype, kind):
    need(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 14, 13, generator=g, dtype=torch.float64)
    boxes = torch.tensor(
        [[0, 0, 8, 8], [0, 5, 8, 8], [6, 0, 8, 8], [6, 5, 8, 8], [3, 2, 8, 8], [2, 1, 12, 11], [5, 4, 1, 1]]
    )
    xs = layout(x.to(device, dtype), kind)
    for size in [(14, 13), (5, 7), (8, 8), (1, 3)]:
        y = ops.crop_resize(xs, boxes.to(device), size)
        assert y.shape == (3, 7, 5, *size) and y.dtype == dtype and y.device.type == device
        ref = expected(xs, boxes, size)
        err = (y.cpu().double() - ref).abs().max().item()
        assert err <= TOL[dtype], f"{dtype} {kind} {size}: max abs error {err}"


@pytest.mark.parametrize("device", DEVICES)
def test_float32_matches_torch_interpolate_itself(device):
    """Parity with what F.interpolate computes in float32 (not just the float64 oracle)."""
    need(device)
    x = torch.randn(16, 128, 14, 14, generator=torch.Generator().manual_seed(1)).to(device)
    boxes = ops.boundary_boxes(14, 14, 0.6).to(device)
    y = ops.crop_resize(x, boxes, 14)
    ref = ops.crop_resize_reference(x, boxes, 14)
    assert (y - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_per_sample_boxes(device):
    need(device)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 10, 12, generator=g, dtype=torch.float64).to(device)
    boxes = torch.stack([ops.random_boxes(10, 12, 0.7, 3, generator=g) for _ in range(4)]).to(device)
    y = ops.crop_resize(x, boxes, (9, 6))
    assert (y.cpu() - expected(x, boxes, (9, 6))).abs().max().item() <= 1e-12
    assert (y - ops.crop_resize_reference(x, boxes, (9, 6))).abs().max().item() <= 1e-12


@st.composite
def problems(draw):
    B = draw(st.integers(1, 3))
    C = draw(st.integers(1, 4))
    H = draw(st.integers(1, 40))
    W = draw(st.integers(1, 40))
    per_sample = draw(st.booleans())
    n = draw(st.integers(1, 4))

    def box():
        h = draw(st.integers(1, H))
        w = draw(st.integers(1, W))
        return [draw(st.integers(0, H - h)), draw(st.integers(0, W - w)), h, w]

    shape = (B, n) if per_sample else (n,)
    rows = [[box() for _ in range(n)] for _ in range(B)] if per_sample else [box() for _ in range(n)]
    boxes = torch.tensor(rows, dtype=torch.int64).reshape(*shape, 4)
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    return (B, C, H, W), boxes, size


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(), seed=st.integers(0, 2**31 - 1))
def test_random_windows_forward_and_backward(problem, seed):
    """Random maps, windows (up- and down-sampling, wide rows beyond the SIMD fast path) and
    output sizes: forward within 1e-5 (float32) and 1e-12 (float64), backward = autograd of
    the reference."""
    shape, boxes, size = problem
    g = torch.Generator().manual_seed(seed)
    x64 = torch.randn(*shape, generator=g, dtype=torch.float64)
    ref = expected(x64, boxes, size)
    assert (ops.crop_resize(x64, boxes, size) - ref).abs().max().item() <= 1e-12
    x32 = x64.float()
    y32 = ops.crop_resize(x32, boxes, size)
    # The contract in float32 is F.interpolate in float32 (same rounding of the source
    # coordinates); against the float64 oracle the float32 coordinates themselves are off by
    # up to ~1 ulp of the map size, hence the looser bound.
    assert (y32 - ops.crop_resize_reference(x32, boxes, size)).abs().max().item() <= 1e-5
    assert (y32.double() - ref).abs().max().item() <= 1e-4

    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        xa = x64.to(dtype).requires_grad_()
        (ga,) = torch.autograd.grad(ops.crop_resize(xa, boxes, size), xa, grad.to(dtype))
        xb = x64.clone().requires_grad_()
        (gb,) = torch.autograd.grad(ops.crop_resize_reference(xb, boxes, size), xb, grad)
        scale = max(1.0, gb.abs().max().item())
        assert (ga.double() - gb).abs().max().item() <= tol * scale, dtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_matches_reference_autograd(device, dtype):
    need(device)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 14, 14, generator=g, dtype=torch.float64)
    boxes = torch.cat([ops.boundary_boxes(14, 14, 0.6), torch.tensor([[1, 1, 3, 13], [0, 0, 14, 14]])])
    grad = torch.randn(2, 7, 4, 14, 14, generator=g, dtype=torch.float64)
    xa = x.to(device, dtype).requires_grad_()
    (ga,) = torch.autograd.grad(ops.crop_resize(xa, boxes.to(device), 14), xa, grad.to(device, dtype))
    xb = x.clone().requires_grad_()
    (gb,) = torch.autograd.grad(ops.crop_resize_reference(xb, boxes, 14), xb, grad)
    tol = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 1.5e-1}[dtype]
    assert (ga.cpu().double() - gb).abs().max().item() <= tol * max(1.0, gb.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device):
    need(device)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 2, 7, 6, generator=g, dtype=torch.float64).to(device).requires_grad_()
    boxes = torch.tensor([[0, 0, 4, 4], [3, 1, 4, 5], [1, 2, 6, 3]], device=device)
    fn = lambda inp: ops.crop_resize(inp, boxes, (5, 7))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    op = lambda inp: torch.ops.hfcn_bench.crop_resize(inp, boxes, 5, 7)  # noqa: E731
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(op, (x,))


def test_opcheck():
    """torch.library's own checks: schema, autograd registration, fake tensor, AOT dispatch."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 9, 9, generator=g, requires_grad=True)
    boxes = ops.boundary_boxes(9, 9, 0.6)
    torch.library.opcheck(torch.ops.hfcn_bench.crop_resize.default, (x, boxes, 9, 9))
    grad = torch.randn(2, 5, 3, 9, 9, generator=g, requires_grad=True)
    torch.library.opcheck(torch.ops.hfcn_bench.crop_resize_backward.default, (grad, boxes, 9, 9))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    boxes = ops.boundary_boxes(14, 14, 0.6)

    def head(x):
        crops = ops.crop_resize(torch.relu(x), boxes, (14, 14))
        return crops.mean(dim=(1, 3, 4)).sum()

    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 8, 14, 14, requires_grad=True)
    out = compiled(x)
    (gc,) = torch.autograd.grad(out, x)
    x2 = x.detach().clone().requires_grad_()
    (ge,) = torch.autograd.grad(head(x2), x2)
    assert torch.allclose(out, head(x.detach()), atol=1e-6)
    assert torch.allclose(gc, ge, atol=1e-6)


# --------------------------------------------------------------------------- determinism, edge cases


def _grad_once(x, boxes, grad):
    xa = x.clone().requires_grad_()
    (ga,) = torch.autograd.grad(ops.crop_resize(xa, boxes, 14), xa, grad)
    return ga


@pytest.mark.parametrize("device", DEVICES)
def test_backward_bitwise_deterministic_across_runs_and_threads(device):
    need(device)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(8, 32, 14, 14, generator=g).to(device)
    boxes = torch.cat([ops.boundary_boxes(14, 14, 0.6), ops.random_boxes(14, 14, 0.6, 6, generator=g)]).to(device)
    grad = torch.randn(8, 11, 32, 14, 14, generator=g).to(device)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = _grad_once(x, boxes, grad)
        others = [_grad_once(x, boxes, grad)]
        for n in (2, 3, 4):  # more threads than cores too: the split of the planes changes
            torch.set_num_threads(n)
            others += [_grad_once(x, boxes, grad) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    for other in others:
        assert torch.equal(first, other)
        # torch.equal treats -0.0 == 0.0: compare the bits too.
        assert torch.equal(first.view(torch.int32), other.view(torch.int32))


def _readers(in_size: int, out_size: int) -> list[list[tuple[int, torch.Tensor]]]:
    """Per source coordinate, the output coordinates that read it (increasing) and their
    float32 weights: crop_resize.h's source_taps and tap_weight, in float32 arithmetic."""
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    readers = [[] for _ in range(in_size)]
    for d in range(out_size):
        if in_size == out_size:
            taps = [(d, f32(1.0)), (d, f32(0.0))]
        else:
            scale = f32(in_size) / f32(out_size)
            src = torch.clamp(scale * (f32(d) + f32(0.5)) - f32(0.5), min=0)
            i0 = min(int(src), in_size - 1)
            i1 = i0 + (1 if i0 < in_size - 1 else 0)
            w1 = torch.clamp(src - f32(i0), max=1)
            taps = [(i0, f32(1.0) - w1), (i1, w1)]
        for s in sorted({taps[0][0], taps[1][0]}):
            w = [wt for i, wt in taps if i == s]
            readers[s].append((d, w[0] if len(w) == 1 else w[0] + w[1]))
    return readers


def _backward_in_the_documented_order(grad: torch.Tensor, boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The float32 input gradient with crop_resize.h's terms in its order: per input element,
    the horizontal adjoint (over output columns, increasing), then the vertical one (over
    output rows, increasing), then the crops in index order; one multiply and one add per term
    (torch's elementwise float32 kernels round each, as the -ffp-contract=off build does)."""
    B, N, C, oh, ow = grad.shape
    out = torch.zeros(B, C, H, W, dtype=torch.float32)
    for b in range(B):
        rows = boxes if boxes.dim() == 2 else boxes[b]
        for n, (t, left, h, w) in enumerate(rows.tolist()):
            g = grad[b, n]  # [C, oh, ow]
            cols = torch.zeros(C, oh, w)
            for kk, terms in enumerate(_readers(w, ow)):
                acc = torch.zeros(C, oh)
                for j, wt in terms:
                    acc = acc + wt * g[:, :, j]
                cols[:, :, kk] = acc
            for rr, terms in enumerate(_readers(h, oh)):
                acc = torch.zeros(C, w)
                for i, wt in terms:
                    acc = acc + wt * cols[:, i, :]
                out[b, :, t + rr, left : left + w] = out[b, :, t + rr, left : left + w] + acc
    return out


@pytest.mark.parametrize(
    "H, W, boxes, size",
    [
        (14, 14, ops.boundary_boxes(14, 14, 0.6), 14),  # the paper's: 8-column windows, two planes per register
        (28, 28, ops.boundary_boxes(28, 28, 0.6), 28),  # 17 columns: a block of 16 and a 1-column tail
        (20, 40, torch.tensor([[0, 0, 20, 40], [3, 5, 9, 33], [1, 2, 5, 3]]), (9, 30)),  # down- and up-sampling
        (12, 12, torch.tensor([[0, 0, 4, 5], [2, 3, 10, 9]]), 40),  # readers wider than a register table
        (16, 16, torch.stack([ops.random_boxes(16, 16, 0.5, 3, generator=torch.Generator().manual_seed(3))] * 2), 11),
    ],
    ids=["paper", "28x28", "mixed", "wide-readers", "per-sample"],
)
def test_backward_bitwise_equals_the_documented_order(H, W, boxes, size):
    """The CPU backward (SIMD blocks, two-plane registers and their odd-plane tail, the scalar
    path) adds exactly the documented terms in the documented order: bitwise equal to a
    float32 model of it, at 1 and 3 threads, on 5 channels (an odd count: a run's last plane
    has no partner)."""
    oh, ow = ops.normalize_size(size)
    g = torch.Generator().manual_seed(9)
    grad = torch.randn(2, boxes.shape[-2], 5, oh, ow, generator=g)
    want = _backward_in_the_documented_order(grad, boxes, H, W)
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            got = torch.ops.hfcn_bench.crop_resize_backward(grad, boxes, H, W)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), n
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_zero_crops_zero_channels(device):
    need(device)
    boxes = ops.boundary_boxes(6, 6, 0.5).to(device)
    empty_batch = torch.randn(0, 3, 6, 6, device=device, requires_grad=True)
    y = ops.crop_resize(empty_batch, boxes, 4)
    assert y.shape == (0, 5, 3, 4, 4)
    y.sum().backward()
    assert empty_batch.grad.shape == (0, 3, 6, 6)

    x = torch.randn(2, 3, 6, 6, device=device, requires_grad=True)
    no_boxes = torch.zeros(0, 4, dtype=torch.int64, device=device)
    y = ops.crop_resize(x, no_boxes, 4)
    assert y.shape == (2, 0, 3, 4, 4)
    (gx,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    assert gx is None or (gx == 0).all()
    assert torch.equal(
        torch.ops.hfcn_bench.crop_resize_backward(torch.zeros(2, 0, 3, 4, 4, device=device), no_boxes, 6, 6),
        torch.zeros(2, 3, 6, 6, device=device),
    )
    assert ops.crop_resize(torch.randn(2, 0, 6, 6, device=device), boxes, 4).shape == (2, 5, 0, 4, 4)


def test_identity_crop_is_exact_copy():
    x = torch.randn(2, 3, 9, 7)
    y = ops.crop_resize(x, torch.tensor([[0, 0, 9, 7], [2, 1, 4, 3]]), (9, 7))
    assert torch.equal(y[:, 0], x)


# --------------------------------------------------------------------------- bad input


BAD_BOXES = [
    ([[0, 0, 8, 8], [7, 0, 8, 8]], "box 1 \\(top=7, left=0, height=8, width=8\\) does not fit a 14x14"),
    ([[0, 0, 0, 5]], "box 0 .*height=0"),
    ([[-1, 0, 4, 4]], "box 0 \\(top=-1"),
    ([[0, 10, 4, 5]], "box 0 .*left=10.*width=5"),
]


@pytest.mark.parametrize("impl", ["fused", "raw_op", "reference"])
@pytest.mark.parametrize("rows,msg", BAD_BOXES)
def test_bad_box_names_the_box(impl, rows, msg):
    x = torch.randn(2, 3, 14, 14)
    boxes = torch.tensor(rows)
    fn = {
        "fused": lambda: ops.crop_resize(x, boxes, 7),
        "raw_op": lambda: torch.ops.hfcn_bench.crop_resize(x, boxes, 7, 7),
        "reference": lambda: ops.crop_resize_reference(x, boxes, 7),
    }[impl]
    with pytest.raises(ValueError, match=msg):
        fn()


def test_bad_per_sample_box_names_sample_and_box():
    boxes = torch.tensor([[[0, 0, 4, 4]], [[0, 0, 4, 40]]])
    with pytest.raises(ValueError, match=r"box \[1, 0\]"):
        ops.crop_resize(torch.randn(2, 1, 8, 8), boxes, 4)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bad_arguments(impl):
    fn = ops.crop_resize if impl == "fused" else ops.crop_resize_reference
    x = torch.randn(2, 3, 14, 14)
    good = ops.boundary_boxes(14, 14, 0.6)
    with pytest.raises(ValueError, match="4-D"):
        fn(torch.randn(3, 14, 14), good, 7)
    with pytest.raises(TypeError, match="int64"):
        fn(x, good.float(), 7)
    with pytest.raises(TypeError, match="int64"):
        fn(x, good.int(), 7)
    with pytest.raises(ValueError, match=r"shape \[N, 4\] or \[B=2, N, 4\]"):
        fn(x, good[:, :3], 7)
    with pytest.raises(ValueError, match=r"shape \[N, 4\] or \[B=2, N, 4\]"):
        fn(x, good.expand(3, 5, 4), 7)
    with pytest.raises(ValueError, match="size"):
        fn(x, good, (0, 7))
    with pytest.raises(ValueError, match="size"):
        fn(x, good, "big")
    with pytest.raises(ValueError, match="one device"):
        fn(x, good.to("meta"), 7)
    with pytest.raises(ValueError, match="fit"):  # an empty map: no window fits it
        fn(torch.randn(2, 3, 0, 14), good, 7)


def test_backward_op_checks_its_arguments():
    grad = torch.randn(2, 5, 3, 7, 7)
    boxes = ops.boundary_boxes(14, 14, 0.6)
    with pytest.raises(ValueError, match="5-D"):
        torch.ops.hfcn_bench.crop_resize_backward(grad[0], boxes, 14, 14)
    with pytest.raises(ValueError, match="crops but boxes have"):
        torch.ops.hfcn_bench.crop_resize_backward(grad, boxes[:3], 14, 14)
    with pytest.raises(ValueError, match="does not fit a 8x8"):
        torch.ops.hfcn_bench.crop_resize_backward(grad, boxes, 8, 8)


# --------------------------------------------------------------------------- build and fallback


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=300,
    )


def test_backend_names_the_extension(extension):
    assert extension in ("cpp-cpu", "cuda")
    assert ops.extension_error() is None
    assert hasattr(torch.ops.hfcn_bench, "crop_resize")


def test_fallback_to_reference_warns_and_still_computes():
    code = (
        "import warnings, torch, hfcn_bench.ops as ops\n"
        "x = torch.randn(2, 3, 14, 14); b = ops.boundary_boxes(14, 14, 0.6)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    y = ops.crop_resize(x, b, 14)\n"
        "assert ops.backend() == 'reference', ops.backend()\n"
        "msgs = [str(m.message) for m in w]\n"
        "assert any('falls back to the pure-PyTorch reference' in m for m in msgs), msgs\n"
        "assert torch.equal(y, ops.crop_resize_reference(x, b, 14))\n"
        "print('ok')\n"
    )
    # A compiler that does not exist makes the JIT build fail the way a bare machine would.
    res = _run_python(code, CXX="/nonexistent/c++", TORCH_EXTENSIONS_DIR=str(ROOT / "build" / "no-compiler-test"))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_sources_ship_with_a_non_editable_install(tmp_path):
    """setup.py's build_py copies csrc/ into hfcn_bench/_csrc, where the loader looks first."""
    res = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    shipped = sorted(p.name for p in (tmp_path / "hfcn_bench" / "_csrc").iterdir())
    assert shipped == sorted(p.name for p in (ROOT / "csrc").iterdir() if p.suffix in (".h", ".cpp", ".cu"))
    code = "import hfcn_bench.ops as ops; print(ops.csrc_dir())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()) == tmp_path / "hfcn_bench" / "_csrc"


# --------------------------------------------------------------------------- CUDA: no host sync


def test_cuda_host_code_never_reads_boxes_back():
    """Issue 14's acceptance, checked on any machine: the CUDA entry makes no .to(kCPU),
    .item() or .cpu() call (each one a device-to-host copy and a stream synchronisation)."""
    src = (ROOT / "csrc" / "crop_resize_cuda.cu").read_text() + (ROOT / "csrc" / "crop_resize_host.h").read_text()
    code = "\n".join(line.split("//")[0] for line in src.splitlines())
    for call in (".to(at::kCPU", ".item(", ".cpu(", "item<", "cudaDeviceSynchronize", "cudaStreamSynchronize"):
        assert call not in code, call


@pytest.mark.cuda
@pytest.mark.parametrize("crop", ["bfc", "rfc"])
def test_cuda_training_step_makes_no_host_sync(crop):
    need("cuda")
    from hfcn_bench.models import HFCN, HFCNConfig, hfcn_loss

    model = HFCN(HFCNConfig(backbone="paper", crop=crop, input_size=64)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # the presets' optimiser
    x = torch.randn(4, 3, 64, 64, device="cuda")
    y = torch.tensor([0, 1, 0, 1], device="cuda")
    for _ in range(2):  # the first step may allocate; the second must be as clean
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.zero_grad(set_to_none=True)
            hfcn_loss(model(x), y).backward()  # the project's loss (eqs. 7-8), as train does
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    ops.raise_device_box_error()


@pytest.mark.cuda
def test_cuda_bad_device_box_is_clamped_then_reported():
    need("cuda")
    ops.raise_device_box_error()  # nothing pending
    x = torch.randn(2, 3, 8, 8, device="cuda")
    bad = torch.tensor([[0, 0, 4, 4], [6, 6, 4, 4]], device="cuda")  # the second overruns the map
    y = ops.crop_resize(x, bad, 4)  # no sync, so no error yet; the kernel clamps, never reads out
    assert torch.isfinite(y).all()
    with pytest.raises(ValueError, match=r"box 1 \(top=6, left=6, height=4, width=4\) does not fit a 8x8"):
        ops.raise_device_box_error()
    ops.raise_device_box_error()  # cleared
    with pytest.raises(ValueError, match=r"box 1 \(top=6"):  # CPU boxes: checked before the call
        ops.crop_resize(x, bad.cpu(), 4)
