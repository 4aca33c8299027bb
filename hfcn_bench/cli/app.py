"""``hfcn-bench app``: serve a local web page (Gradio) that classifies one nodule with a run:
P(malignant) against the run's threshold, HFCN's crop windows and Grad-CAM, the model card."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

from ..errors import HfcnError

__all__ = ["register"]


def register(sub) -> None:
    from ..app.page import DEFAULT_CONCURRENCY, DEFAULT_QUEUE_SIZE

    p = sub.add_parser(
        "app",
        help="a local web app to classify one nodule with a run (crop windows, Grad-CAM, "
        "model card); research use, not a medical device",
    )
    p.add_argument(
        "--run",
        type=Path,
        required=True,
        help="a run folder written by `hfcn-bench train`, or a folder of run folders (the page then offers a list)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; the app has no login)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"requests of one endpoint processed at once (default {DEFAULT_CONCURRENCY}); the rest wait in the queue",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        default=DEFAULT_QUEUE_SIZE,
        help=f"requests that may wait in the queue (default {DEFAULT_QUEUE_SIZE}); more are refused",
    )
    p.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    p.set_defaults(handler=run_app)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_app(args, console) -> int:
    from ..app import Catalog, Classifier
    from ..app.page import build_app, serve

    if not 0 < args.port < 65536:
        raise HfcnError(f"--port must be 1..65535, got {args.port}")
    if args.concurrency < 1 or args.queue_size < 1:
        raise HfcnError("--concurrency and --queue-size must be at least 1")
    catalog = Catalog(args.run, device=args.device)
    if len(catalog.names) == 1:
        # One run: refuse now, not at the first request, when it holds no usable model.
        with console.status(f"loading {catalog.default}..."):
            catalog.load(catalog.default)
    demo = build_app(Classifier(catalog), concurrency=args.concurrency, queue_size=args.queue_size)
    try:
        url = serve(demo, host=args.host, port=args.port)
    except OSError as exc:
        raise HfcnError(
            f"cannot serve on {args.host}:{args.port}: {exc}", hint="choose another --port (the port may be in use)"
        ) from None
    console.print(
        f"serving {catalog.describe()} at [bold]{url}[/bold] (research use, not a medical device; Ctrl-C stops it)",
        highlight=False,
    )
    if not _is_loopback(args.host):
        console.print(
            f"[yellow]warning:[/yellow] bound to {args.host}: the app is reachable from the network and has no login",
            highlight=False,
        )
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping the app", highlight=False)
    finally:
        demo.close()
    return 0
