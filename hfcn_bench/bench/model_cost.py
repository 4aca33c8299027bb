"""What a training step of each HFCN variant costs, measured side by side.

The paper's efficiency argument (Song et al., IEEE Access 8:64064-64074, 2020): cropping the
*feature map* runs the backbone once per image, where image-level multi-crop (AlexNet, VGG,
GoogLeNet) runs it once per crop. :func:`compare_model_costs` measures it: for every variant a
training step (forward + weighted loss + backward + SGD step, the paper's optimiser) and an
inference forward on the same batch, with the same weights, timed in interleaved rounds so that
drift of a shared machine hits every variant alike; then the crop op alone (forward + backward on
the feature-map shape), fused and naive, to give its share of the step (Amdahl's law: a faster op
can only save that share).

Pure: returns rows (dicts of plain numbers and strings), prints nothing.

On a shared or virtualised CPU, read the timings with the thread count, the OpenMP wait policy
and the load average each row carries: with libgomp's default wait policy, a 2-vCPU VM ran
small parallel regions (a 400k-element add, one ``F.interpolate``) 30-80x slower than with
``OMP_WAIT_POLICY=PASSIVE``/``ACTIVE`` or one thread, which inflates the naive crop (many small
kernels) far more than the fused one. ``threads=1`` or ``OMP_WAIT_POLICY=PASSIVE`` in the
environment give comparable numbers.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from .. import ops
from ..errors import HfcnError
from ..models import HFCN, HFCNConfig, build_model, hfcn_loss
from ..models.hfcn import naive_crop_resize

__all__ = [
    "MODES",
    "PAPER_SGD",
    "check_parity",
    "compare_model_costs",
    "measure_train_step",
    "mode_config",
    "time_crop_op",
    "time_crop_ops",
]

# Default variants: name -> (crop, crop_impl).
MODES = {
    "none": ("none", "fused"),
    "rfc": ("rfc", "fused"),
    "bfc": ("bfc", "fused"),
    "bfc-naive": ("bfc", "naive"),
    "rfc-naive": ("rfc", "naive"),
    "image": ("image", "fused"),
    "image-naive": ("image", "naive"),
}

# The paper's optimiser: SGD, lr 1e-5, momentum 0.9, weight decay 5e-4.
PAPER_SGD = dict(lr=1e-5, momentum=0.9, weight_decay=5e-4)


def mode_config(mode: str, base: HFCNConfig | None = None, **overrides) -> HFCNConfig:
    """The :class:`HFCNConfig` of a variant name such as ``"bfc"`` or ``"bfc-naive"``."""
    if mode not in MODES:
        raise HfcnError(f"unknown model variant {mode!r}; known: {', '.join(MODES)}")
    crop, impl = MODES[mode]
    base = base or HFCNConfig()
    return dataclasses.replace(base, crop=crop, crop_impl=impl, **overrides)


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _stats(times: Sequence[float]) -> tuple[float, float]:
    """(median, interquartile range) in seconds."""
    a = np.asarray(times, dtype=float)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return float(med), float(q3 - q1)


class _Variant:
    """One model with its optimiser and a fixed batch: ``train_step()`` and ``infer()``."""

    def __init__(self, name: str, model: HFCN, x: torch.Tensor, y: torch.Tensor):
        self.name = name
        self.model = model
        self.x, self.y = x, y
        self.opt = torch.optim.SGD(model.parameters(), **PAPER_SGD)
        self.train_times: list[float] = []
        self.infer_times: list[float] = []

    def train_step(self) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = hfcn_loss(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()

    def infer(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            self.model(self.x)


def _batch(batch: int, size: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = (torch.arange(batch) % 2).to(device)
    return x, y


def check_parity(fused: HFCN, naive: HFCN, x: torch.Tensor) -> float:
    """Compare the outputs of a fused model and its naive twin (same weights) in eval mode.

    Returns the largest absolute difference over all output tensors; raises :class:`HfcnError`
    when they differ beyond float tolerance (a benchmark of two things that do not compute the
    same function would be meaningless). RFC generators are restarted on both sides.
    """
    worst = 0.0
    was = fused.training, naive.training
    fused.eval(), naive.eval()
    fused.reset_crop_generator(), naive.reset_crop_generator()
    try:
        with torch.inference_mode():
            a, b = fused(x), naive(x)
        for name, u, v in zip(a._fields, a, b):
            if u is None and v is None:
                continue
            if name == "boxes":
                if u.tolist() != v.tolist():
                    raise HfcnError(
                        f"parity check: fused and naive models used different windows {u.tolist()} vs {v.tolist()}"
                    )
                continue
            try:
                torch.testing.assert_close(u, v)
            except AssertionError as exc:
                detail = (
                    "; ".join(ln.strip() for ln in str(exc).splitlines() if ln.startswith(("Mismatched", "Greatest")))
                    or str(exc).strip().splitlines()[0]
                )
                raise HfcnError(
                    f"parity check failed for {fused.config.crop!r}: fused and naive outputs differ in {name}: {detail}"
                ) from None
            worst = max(worst, float((u - v).abs().max()))
    finally:
        fused.train(was[0]), naive.train(was[1])
        fused.reset_crop_generator(), naive.reset_crop_generator()
    return worst


def _op_runner(x: torch.Tensor, boxes: torch.Tensor, impl: str, grad: torch.Tensor) -> Callable[[], None]:
    h, w = x.shape[-2:]
    rows = [tuple(r) for r in boxes.tolist()]
    dev_boxes = boxes.to(x.device)
    if impl == "fused":

        def fwd():  # the public op (the reference when the extension is missing)
            return ops.crop_resize(x, dev_boxes, (h, w))
    elif impl == "naive":

        def fwd():
            return naive_crop_resize(x, rows, (h, w))
    else:
        raise HfcnError(f"unknown crop op implementation {impl!r}; known: fused, naive")

    def run():
        x.grad = None
        fwd().backward(grad)

    return run


def time_crop_ops(
    shape: Sequence[int],
    boxes: torch.Tensor,
    impls: Sequence[str] = ("fused", "naive"),
    repeats: int = 20,
    warmup: int = 3,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, tuple[float, float]]:
    """impl -> (median, IQR) seconds of the crop op's forward + backward on a
    ``shape = [B, C, h, w]`` map, the crops resized back to ``h x w``, the implementations timed
    in interleaved rounds: "fused" (``ops.crop_resize``, or the reference when the
    extension is missing) and "naive" (slicing + ``F.interpolate``)."""
    device = torch.device(device)
    B, C, h, w = shape
    x = torch.randn(B, C, h, w, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(B, boxes.shape[0], C, h, w, device=device, dtype=dtype)
    runners = {impl: _op_runner(x, boxes, impl, grad) for impl in impls}
    sync = _sync(device)
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for i in range(warmup + repeats):
        for impl, run in runners.items():
            t0 = time.perf_counter()
            run()
            sync()
            if i >= warmup:
                times[impl].append(time.perf_counter() - t0)
    return {impl: _stats(t) for impl, t in times.items()}


def time_crop_op(shape, boxes, impl: str = "fused", **kwargs) -> tuple[float, float]:
    """(median, IQR) seconds of one implementation; see :func:`time_crop_ops`."""
    return time_crop_ops(shape, boxes, (impl,), **kwargs)[impl]


class _Threads:
    def __init__(self, threads: int | None):
        self.threads, self.saved = threads, None

    def __enter__(self):
        if self.threads is not None:
            if not isinstance(self.threads, int) or self.threads < 1:
                raise HfcnError(f"threads must be a positive integer, got {self.threads!r}")
            self.saved = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        return torch.get_num_threads()

    def __exit__(self, *exc):
        if self.saved is not None:
            torch.set_num_threads(self.saved)


def _run_rounds(variants: Sequence[_Variant], repeats: int, warmup: int, inference: bool, sync) -> None:
    """Interleaved rounds: round r times every variant once, so slow drift (another process, CPU
    frequency, thermal state) spreads over all variants instead of biasing the last one."""
    for _ in range(warmup):  # first calls build oneDNN/cuDNN primitives and allocator pools
        for v in variants:
            v.train_step()
            if inference:
                v.infer()
    sync()
    for _ in range(repeats):
        for v in variants:
            t0 = time.perf_counter()
            v.train_step()
            sync()
            v.train_times.append(time.perf_counter() - t0)
            if inference:
                t0 = time.perf_counter()
                v.infer()
                sync()
                v.infer_times.append(time.perf_counter() - t0)


def _row(v: _Variant, batch: int, size: int, device: torch.device, threads: int, repeats: int) -> dict:
    m = v.model
    train_med, train_iqr = _stats(v.train_times)
    row = {
        "mode": v.name,
        "backbone": m.config.backbone,
        "crop": m.config.crop,
        "crop_impl": m.config.crop_impl,
        "crop_backend": m.crop_backend,
        "alpha": m.config.alpha,
        "num_crops": m.num_crops,
        "backbone_passes": 1 + m.num_crops if m.config.crop == "image" else 1,
        "batch": batch,
        "size": size,
        "device": str(device),
        "threads": threads,
        # libgomp's default wait policy made small parallel regions 30-80x slower on a 2-vCPU
        # VM (ACTIVE or PASSIVE did not): a number to read next to the timings.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "repeats": repeats,
        "params": sum(p.numel() for p in m.parameters()),
        "train_median_s": train_med,
        "train_iqr_s": train_iqr,
    }
    if v.infer_times:
        row["infer_median_s"], row["infer_iqr_s"] = _stats(v.infer_times)
    return row


def measure_train_step(
    config: HFCNConfig | dict | None = None,
    *,
    batch: int = 16,
    size: int = 224,
    threads: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    inference: bool = True,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict:
    """Time one HFCN variant: a training step and (``inference``) an eval forward.

    Args:
        config: an :class:`HFCNConfig` or a dict of its fields (``input_size`` is set to
            ``size``).
        batch, size: the batch of random ``[batch, 3, size, size]`` images (paper: 16, 224).
        threads: torch intra-op threads during the measurement (default: unchanged).
        repeats: timed steps; warmup: untimed steps first.
        device: "cpu" or a CUDA device (timings synchronise the device).

    Returns:
        A row: the configuration, ``train_median_s``/``train_iqr_s`` and
        ``infer_median_s``/``infer_iqr_s`` (seconds), thread count and device.
    """
    if config is None:
        config = HFCNConfig()
    elif isinstance(config, dict):
        config = HFCNConfig(**config)
    config = dataclasses.replace(config, input_size=size)
    _check_counts(batch, size, repeats, warmup)
    device = torch.device(device)
    with _Threads(threads) as nthreads:
        torch.manual_seed(seed)
        model = HFCN(config).to(device)
        x, y = _batch(batch, size, device, seed)
        v = _Variant(config.crop if config.crop_impl == "fused" else f"{config.crop}-naive", model, x, y)
        _run_rounds([v], repeats, warmup, inference, _sync(device))
        return _row(v, batch, size, device, nthreads, repeats)


def _check_counts(batch, size, repeats, warmup) -> None:
    for name, val, lo in (("batch", batch, 1), ("size", size, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise HfcnError(f"{name} must be an integer >= {lo}, got {val!r}")


def compare_model_costs(
    modes: Iterable[str] = ("none", "rfc", "bfc", "bfc-naive", "image"),
    *,
    backbone: str = "paper",
    alpha: float = 0.6,
    batch: int = 16,
    size: int = 224,
    threads: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    inference: bool = True,
    op_repeats: int = 20,
    device: str | torch.device = "cpu",
    seed: int = 0,
    base: HFCNConfig | None = None,
    memory: bool = False,
) -> list[dict]:
    """Measure every variant of ``modes`` side by side on one batch, with the same weights.

    Before any timing, each fused variant is checked against its naive twin (same weights, eval
    mode) with :func:`check_parity`; a mismatch raises :class:`HfcnError`.

    Returns one row per mode (see :func:`measure_train_step`) with, in addition,
    ``train_ratio``/``infer_ratio`` (median over the median of "none", when "none" is measured),
    ``parity_max_abs_diff`` for fused variants, and for the BFC rows the crop op alone on the
    ``[batch, C, h, w]`` feature map: ``op_median_s``/``op_iqr_s`` (forward + backward of this
    row's implementation) and ``op_share`` (its fraction of this row's training step). The
    "bfc-naive" row also has ``ratio_vs_bfc`` (measured naive/fused step) and
    ``amdahl_predicted_ratio_vs_bfc`` = ``(T_bfc - op_fused + op_naive) / T_bfc``, what swapping
    only the op predicts. With ``memory``, each row also has ``train_peak_mib``: the peak extra
    memory of one more training step (:func:`op_speed.peak_memory`; how it was measured in
    ``peak_memory_how``), and ``memory_ratio`` against "none".
    """
    modes = list(modes)
    if not modes:
        raise HfcnError("no model variants to compare")
    for m in modes:
        if m not in MODES:
            raise HfcnError(f"unknown model variant {m!r}; known: {', '.join(MODES)}")
    if len(set(modes)) != len(modes):
        raise HfcnError(f"model variants listed twice: {modes}")
    _check_counts(batch, size, repeats, warmup)
    device = torch.device(device)
    base = dataclasses.replace(base or HFCNConfig(), backbone=backbone, alpha=alpha, input_size=size, seed=seed)
    with _Threads(threads) as nthreads:
        torch.manual_seed(seed)
        # Every variant has the same parameters (backbone + shared classifier): one set of weights.
        models = {m: build_model(mode_config(m, base)) for m in modes}
        state = models[modes[0]].state_dict()
        for model in models.values():
            model.load_state_dict(state)
            model.to(device)

        # Parity before timing: every fused variant against its naive twin.
        probe = _batch(min(batch, 2), size, device, seed + 1)[0]
        parity: dict[str, float] = {}
        for m in modes:
            crop, impl = MODES[m]
            if crop == "none" or impl != "fused":
                continue
            twin = models.get(f"{m}-naive")
            if twin is None:
                twin = build_model(mode_config(f"{m}-naive", base)).to(device)
                twin.load_state_dict(state)
            parity[m] = check_parity(models[m], twin, probe)

        x, y = _batch(batch, size, device, seed)
        variants = [_Variant(m, models[m], x, y) for m in modes]
        _run_rounds(variants, repeats, warmup, inference, _sync(device))
        rows = [_row(v, batch, size, device, nthreads, repeats) for v in variants]
        if memory:
            from .op_speed import peak_memory

            for v, r in zip(variants, rows):
                r["train_peak_mib"], r["peak_memory_how"] = peak_memory(v.train_step, device)

        # The crop op alone, on the shape the BFC branch crops.
        op: dict[str, tuple[float, float]] = {}
        bfc_like = [m for m in modes if MODES[m][0] == "bfc"]
        if bfc_like:
            ref_model = models[bfc_like[0]]
            shape = (batch, ref_model.num_features, *ref_model.feature_hw)
            boxes = ops.boundary_boxes(*ref_model.feature_hw, alpha)
            op = time_crop_ops(shape, boxes, ("fused", "naive"), repeats=op_repeats, device=device)

    by_mode = {r["mode"]: r for r in rows}
    none = by_mode.get("none")
    for r in rows:
        if r["mode"] in parity:
            r["parity_max_abs_diff"] = parity[r["mode"]]
        if none is not None:
            r["train_ratio"] = r["train_median_s"] / none["train_median_s"]
            if inference:
                r["infer_ratio"] = r["infer_median_s"] / none["infer_median_s"]
            if memory and none.get("train_peak_mib"):
                r["memory_ratio"] = r["train_peak_mib"] / none["train_peak_mib"]
        if r["crop"] == "bfc" and op:
            impl = r["crop_impl"]
            r["op_median_s"], r["op_iqr_s"] = op[impl]
            r["op_share"] = op[impl][0] / r["train_median_s"]
    if "bfc" in by_mode and "bfc-naive" in by_mode and op:
        t_bfc = by_mode["bfc"]["train_median_s"]
        naive = by_mode["bfc-naive"]
        naive["ratio_vs_bfc"] = naive["train_median_s"] / t_bfc
        naive["amdahl_predicted_ratio_vs_bfc"] = (t_bfc - op["fused"][0] + op["naive"][0]) / t_bfc
    return rows
