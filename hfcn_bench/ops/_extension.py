"""JIT build and load of the C++/CUDA extension (``torch.utils.cpp_extension.load`` + ninja).

The first use compiles ``csrc/`` into torch's extension cache (``TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``); later uses load the cached library, and torch rebuilds
it when a source or a flag changes. Environment:

- ``HFCN_BUILD_CUDA``: ``1`` builds the CUDA kernels even without a GPU (a compile check),
  ``0`` never builds them; unset, they are built when ``torch.cuda.is_available()``.
- ``HFCN_NO_EXTENSION=1``: do not build; use the pure-PyTorch reference.
- ``HFCN_VERBOSE_BUILD=1``: show the compiler's output.
- ``HFCN_EXTRA_CFLAGS``: more host compiler flags (e.g. ``-g`` to profile the kernels).
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["csrc_dir", "load_extension", "backend", "extension_error", "build_cuda_requested"]

_SOURCES_CPU = ("crop_resize.cpp",)
_SOURCES_CUDA = ("crop_resize_cuda.cu",)
_HEADERS = ("crop_resize.h", "crop_resize_host.h")

_lock = threading.Lock()
_state: dict = {"loaded": None, "error": None}


def csrc_dir() -> Path:
    """Where the C++ sources are: the package's own copy (``pip install .``) or the checkout's
    ``csrc/`` (``pip install -e .`` and a plain source tree)."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "_csrc", here.parents[1] / "csrc"):
        if (cand / _SOURCES_CPU[0]).is_file():
            return cand
    raise FileNotFoundError(
        "hfcn_bench C++ sources not found (looked in "
        f"{here.parent / '_csrc'} and {here.parents[1] / 'csrc'}); reinstall the package"
    )


def build_cuda_requested() -> bool:
    flag = os.environ.get("HFCN_BUILD_CUDA", "").strip()
    if flag in ("0", "false", "no"):
        return False
    if flag in ("1", "true", "yes"):
        return True
    return torch.cuda.is_available()


def _cpu_tag() -> str:
    # -march=native code is only valid on this CPU model: keep one cached build per model.
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                model += line
    except OSError:
        pass
    return hashlib.sha1(model.encode()).hexdigest()[:8]


def _build(with_cuda: bool) -> None:
    from torch.utils.cpp_extension import load

    src = csrc_dir()
    sources = [str(src / s) for s in _SOURCES_CPU + (_SOURCES_CUDA if with_cuda else ())]
    # OpenMP: at::parallel_for in an extension runs serially unless compiled and linked with it.
    # -ffp-contract=off: no fused multiply-adds, like PyTorch's own CPU build, so the source
    # coordinates (scale * (dst + 0.5) - 0.5) round exactly as F.interpolate's do.
    cflags = ["-O3", "-fopenmp", "-ffp-contract=off"]
    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        cflags.append("-march=native" if platform.machine() in ("x86_64", "AMD64") else "-mcpu=native")
    cflags += os.environ.get("HFCN_EXTRA_CFLAGS", "").split()  # e.g. "-g" for profiling
    name = f"hfcn_bench_{'cuda' if with_cuda else 'cpu'}_{_cpu_tag()}"
    load(
        name=name,
        sources=sources,
        extra_cflags=cflags,
        extra_ldflags=["-fopenmp"],
        extra_cuda_cflags=["-O3"],
        extra_include_paths=[str(src)],
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=os.environ.get("HFCN_VERBOSE_BUILD") == "1",
    )


def _summarise(exc: Exception) -> str:
    """The first compiler error line of a failed build (torch puts the output in the message)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() and not ln.startswith("FAILED")]
    detail = errors[1] if len(errors) > 1 and errors[0].startswith("Error building") else (errors or lines or [""])[0]
    return f"{type(exc).__name__}: {detail[:300]}"


def load_extension(cuda: bool | None = None) -> bool:
    """Build (first time) and load the extension; True when ``torch.ops.hfcn_bench`` is ready.

    On failure, warn once with the reason and return False: the op then runs on the pure-PyTorch
    reference. ``cuda`` overrides ``HFCN_BUILD_CUDA``. Only one variant (CPU, or CPU+CUDA) can be
    loaded into a process, since both register the same operators.
    """
    # Decided already: answer without the lock (also keeps torch.compile from tracing a lock).
    if _state["loaded"] is not None:
        return True
    if _state["error"] is not None:
        return False
    with _lock:
        if _state["loaded"] is not None or _state["error"] is not None:
            return _state["loaded"] is not None
        if os.environ.get("HFCN_NO_EXTENSION") == "1":
            _state["error"] = "disabled by HFCN_NO_EXTENSION=1"
            return False
        with_cuda = build_cuda_requested() if cuda is None else cuda
        forced = cuda is not None or os.environ.get("HFCN_BUILD_CUDA", "").strip() in ("1", "true", "yes")
        try:
            try:
                _build(with_cuda)
            except Exception as exc:
                if not with_cuda or forced:
                    raise
                # A GPU but no working nvcc: the CPU kernels are still worth having.
                warnings.warn(
                    f"hfcn_bench: the CUDA kernels did not build ({_summarise(exc)}); using the CPU "
                    "kernels only (CUDA tensors take the pure-PyTorch reference). "
                    "Set CUDA_HOME to a CUDA toolkit to build them.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                with_cuda = False
                _build(False)
        except Exception as exc:  # a missing compiler, nvcc or header: fall back, say why
            _state["error"] = _summarise(exc)
            warnings.warn(
                "hfcn_bench: the C++ extension could not be built, crop_resize falls back to the "
                f"pure-PyTorch reference (slower). Reason: {_state['error']}. "
                "Set HFCN_VERBOSE_BUILD=1 to see the compiler output.",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        from . import _registration

        _registration.register()
        _state["loaded"] = "cuda" if with_cuda else "cpu"
        return True


def extension_error() -> str | None:
    """Why the extension is not in use, or None."""
    return _state["error"]


def cuda_kernels_loaded() -> bool:
    """Whether the extension is loaded with its CUDA kernels; never builds it."""
    return _state["loaded"] == "cuda"


def backend() -> str:
    """``"cuda"`` (extension with CUDA kernels), ``"cpp-cpu"`` (CPU kernels only) or
    ``"reference"`` (pure-PyTorch fallback). Builds the extension on first call."""
    if not load_extension():
        return "reference"
    return "cuda" if _state["loaded"] == "cuda" else "cpp-cpu"
