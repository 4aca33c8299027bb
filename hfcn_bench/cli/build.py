"""``hfcn-bench build [--cuda]``: compile (or load from cache) the C++/CUDA extension now."""

from __future__ import annotations

import os

from ..errors import HfcnError


def register(sub) -> None:
    p = sub.add_parser("build", help="JIT-compile the crop_resize extension (CPU, or CPU+CUDA with --cuda)")
    p.add_argument("--cuda", action="store_true", help="compile the CUDA kernels too, even without a GPU")
    p.set_defaults(handler=run)


def run(args, console) -> int:
    if args.cuda:
        os.environ["HFCN_BUILD_CUDA"] = "1"
    from .. import ops

    with console.status("compiling the extension (first time takes a while)..."):
        ok = ops.load_extension(cuda=True if args.cuda else None)
    if not ok:
        raise HfcnError(
            f"the extension did not build: {ops.extension_error()}",
            hint="install a C++ compiler (and nvcc with CUDA_HOME for --cuda); "
            "HFCN_VERBOSE_BUILD=1 shows the compiler output",
        )
    console.print(f"extension ready: backend [bold]{ops.backend()}[/bold], sources {ops.csrc_dir()}")
    return 0
