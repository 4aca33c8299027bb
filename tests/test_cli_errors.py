"""How the command line reports failures: the project's errors and OSError as one line with a
hint, anything else as a bug with its traceback (never disguised as a user error)."""

from __future__ import annotations

import pytest
from clitools import run

from hfcn_bench import cli
from hfcn_bench.errors import HfcnError


def _parser_with(handler):
    real = cli.build_parser

    def build():
        parser = real()
        for action in parser._subparsers._group_actions:  # the sub-command table
            action.choices["build"].set_defaults(handler=handler)
        return parser

    return build


@pytest.mark.parametrize(
    "exc",
    [HfcnError("the box 0,0,1,1 is under 8 px", hint="draw a larger box"), FileNotFoundError(2, "gone", "x.xml")],
)
def test_known_errors_are_one_line(monkeypatch, exc):
    def handler(args, console):
        raise exc

    monkeypatch.setattr(cli, "build_parser", _parser_with(handler))
    rc, out = run(["build"])
    assert rc == 1
    assert "error:" in out and "Traceback" not in out and "bug" not in out
    if isinstance(exc, HfcnError):
        assert "under 8 px" in out and "hint: draw a larger box" in out
    else:
        assert "x.xml" in out


@pytest.mark.parametrize("exc", [TypeError("f() got an unexpected keyword"), KeyError("auc"), ValueError("boom")])
def test_a_bug_shows_its_traceback_and_says_so(monkeypatch, exc):
    def handler(args, console):
        raise exc

    monkeypatch.setattr(cli, "build_parser", _parser_with(handler))
    rc, out = run(["build"])
    assert rc == cli.EX_SOFTWARE
    assert "Traceback (most recent call last)" in out and type(exc).__name__ in out
    assert "this is a bug in hfcn-bench" in out and "please report it" in out
    # --debug re-raises it untouched
    with pytest.raises(type(exc)):
        run(["--debug", "build"])
