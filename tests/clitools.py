"""Running ``hfcn-bench`` sub-commands in-process against a captured console (the tests of the
command line share this)."""

from __future__ import annotations

import io

from rich.console import Console

from hfcn_bench.cli import main


def run(argv, width: int = 200) -> tuple[int, str]:
    """``(exit code, everything printed)`` of ``hfcn-bench ARGV``."""
    buf = io.StringIO()
    rc = main(list(argv), console=Console(file=buf, width=width, force_terminal=False, color_system=None))
    return rc, buf.getvalue()


def default_sigint() -> None:
    """``preexec_fn`` for a child a test stops with Ctrl-C (SIGINT): Ctrl-C's default action,
    whatever the test runner inherited. A shell without job control starts its background
    commands (``cmd &``, ``nohup``) with SIGINT ignored, every child inherits that, and Python
    then installs no KeyboardInterrupt handler: the child would never see the test's Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
