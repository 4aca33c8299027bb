"""``hfcn-bench`` command line. Each sub-command lives in a module of this package that exposes
``register(subparsers)``; handlers return an exit code. The project's errors (``HfcnError``: bad
input, a damaged file, an impossible option) and ``OSError`` (a file-system fault, which names
its file) become one red line with a hint; the traceback is shown only with ``--debug``. Any
other exception is a bug: its traceback is shown, with a line asking to report it (exit code
70, ``EX_SOFTWARE``)."""

from __future__ import annotations

import argparse
import sys
import traceback

from rich.console import Console

from ..errors import HfcnError

__all__ = ["main", "build_parser"]

# Sub-command modules, in the order --help lists them.
EX_SOFTWARE = 70  # sysexits.h: an internal software error (a bug)
_COMMAND_MODULES = ("build", "data", "train", "evaluate", "predict", "compare", "rank", "reproduce", "recipe", "app")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="hfcn-bench",
        description="Hybrid Feature Cropping Network (HFCN) for thyroid nodule ultrasound: "
        "fused crop+resize op, DDTI data tools, training and benchmark reports.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None, console: Console | None = None) -> int:
    """Entry point of ``hfcn-bench``; ``console`` lets tests capture the output."""
    console = console or Console()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args, console) or 0)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return 130
    except (HfcnError, OSError) as exc:
        if args.debug:
            raise
        hint = getattr(exc, "hint", None)
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, markup=True)
        if hint:
            console.print(f"[yellow]hint:[/yellow] {hint}", highlight=False)
        return 1
    except Exception:  # noqa: BLE001 - not one of ours: a bug, shown whole
        if args.debug:
            raise
        console.print(traceback.format_exc(), highlight=False, markup=False)
        console.print(
            "[bold red]internal error:[/bold red] this is a bug in hfcn-bench, not a problem with your input; "
            "please report it with the traceback above",
            highlight=False,
        )
        return EX_SOFTWARE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
