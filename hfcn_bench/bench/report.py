"""The report of ``hfcn-bench compare``: one dict of sections, rendered for people (rich tables)
and machines (report.json, report.md, one CSV per table), plus ratios against an older report.

A report is written after every section, atomically, so an error or an interrupt in a later
section never loses what was already measured.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_text_atomic
from ..protocol.scoring import overlap_note

__all__ = [
    "Column",
    "TABLES",
    "environment",
    "write_report",
    "render_rich",
    "render_markdown",
    "compare_reports",
    "load_report",
    "PAPER_TABLE4",
]

# Song et al. 2020, Table 4 (accuracy / precision / recall / F1 in %), on the authors' mixed
# public + private data: quoted beside our numbers as the paper's, never as ours.
PAPER_TABLE4 = {
    ("none", "paper"): (89.50, 84.21, 90.14, 87.07),
    ("rfc", "paper"): (95.58, 92.00, 97.18, 94.52),
    ("bfc", "paper"): (96.13, 93.24, 97.18, 95.17),
    ("none", "vgg19"): (88.40, 82.05, 90.14, 85.91),
    ("rfc", "vgg19"): (92.82, 88.16, 94.37, 91.16),
    ("bfc", "vgg19"): (93.37, 88.31, 95.77, 91.89),
    ("none", "resnet50"): (88.95, 84.00, 88.73, 86.30),
    ("rfc", "resnet50"): (92.27, 85.19, 97.18, 90.79),
    ("bfc", "resnet50"): (94.48, 90.67, 95.77, 93.15),
    ("none", "inception_v3"): (88.95, 82.28, 91.55, 86.67),
    ("rfc", "inception_v3"): (94.48, 90.67, 95.77, 93.15),
    ("bfc", "inception_v3"): (94.48, 89.61, 97.18, 93.24),
    ("none", "xception"): (88.95, 83.12, 90.14, 86.49),
    ("rfc", "xception"): (94.48, 90.67, 95.77, 93.15),
    ("bfc", "xception"): (95.03, 90.79, 97.18, 93.88),
}


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str = "{}"
    # For --against: how a bigger value reads ("lower" = times, "higher" = speed-ups, scores).
    better: str | None = None
    # Shown in the terminal table too (False: only in report.md / CSV, to fit 80-120 columns).
    terminal: bool = True

    def render(self, row: dict) -> str:
        value = row.get(self.key)
        if value is None or value == "":
            return "-"
        if isinstance(value, float) and value != value:  # NaN
            return "nan"
        try:
            return self.fmt.format(value)
        except (ValueError, TypeError):
            return str(value)


def _ms(v: float) -> str:
    return f"{v * 1e3:.3f}"


class _Ms:
    """Format seconds as milliseconds in str.format-style columns."""

    def format(self, v):  # noqa: A003 - mimics str.format
        return _ms(float(v))


MS = _Ms()

# (section, table) -> (title, identity keys, columns)
TABLES: dict[tuple[str, str], tuple[str, tuple[str, ...], list[Column]]] = {
    ("op_speed", "rows"): (
        "Op speed: crop + bilinear resize",
        ("shape", "method", "direction", "threads"),
        [
            Column("shape", "shape"),
            Column("method", "method"),
            Column("direction", "direction"),
            Column("threads", "threads"),
            Column("median_s", "median ms", MS, "lower"),
            Column("iqr_s", "IQR ms", MS, terminal=False),
            Column("speedup", "vs naive", "{:.1f}x", "higher"),
            Column("floor_ratio", "x floor", "{:.2f}", "lower"),
            Column("gbps", "GB/s", "{:.1f}", "higher"),
            Column("pct_of_copy", "% of copy GB/s", "{:.0f}%", "higher", terminal=False),
            Column("pct_of_peak", "% of peak GB/s", "{:.0f}%", "higher", terminal=False),
            Column("peak_mib", "peak MiB", "{:.1f}"),
            Column("parity", "parity (max abs err)", terminal=False),
            Column("status", "status"),
        ],
    ),
    ("op_speed", "copy"): (
        "Copy bandwidth (STREAM-like, the roofline's ceiling)",
        ("threads",),
        [
            Column("threads", "threads"),
            Column("size", "arrays"),
            Column("median_s", "median ms", MS, "lower"),
            Column("iqr_s", "IQR ms", MS, terminal=False),
            Column("gbps", "GB/s", "{:.1f}", "higher"),
        ],
    ),
    ("op_speed", "checks"): (
        "Op speed targets (issue 24: floor ratios)",
        ("check",),
        [
            Column("check", "check"),
            Column("value", "measured", "{:.2f}", None),
            Column("minimum", "must", "{:.3g}"),
            Column("target", "aim", "{}"),
            Column("passed", "passed"),
            Column("met_target", "met aim"),
            Column("detail", "detail", terminal=False),
        ],
    ),
    ("model_cost", "rows"): (
        "Model cost: training step (forward + loss + backward + SGD) and inference",
        ("mode", "batch", "size", "threads"),
        [
            Column("mode", "mode"),
            Column("batch", "batch", terminal=False),
            Column("size", "size", terminal=False),
            Column("threads", "threads"),
            Column("backbone_passes", "backbone passes", terminal=False),
            Column("train_median_s", "train step ms", MS, "lower"),
            Column("train_iqr_s", "IQR ms", MS, terminal=False),
            Column("train_ratio", "step / none", "{:.2f}x"),
            Column("infer_median_s", "inference ms", MS, "lower"),
            Column("infer_ratio", "inference / none", "{:.2f}x"),
            Column("op_median_s", "crop op fwd+bwd ms", MS, terminal=False),
            Column("op_share", "op share of step", "{:.1%}"),
            Column("ratio_vs_bfc", "step / bfc fused", "{:.3f}x"),
            Column("parity_max_abs_diff", "fused vs naive max diff", "{:.1e}", terminal=False),
        ],
    ),
    ("model_cost", "checks"): (
        "Model cost targets (issue: hybrid model)",
        ("check",),
        [
            Column("check", "check"),
            Column("value", "measured", "{:.3f}", None),
            Column("limit", "limit"),
            Column("passed", "passed"),
        ],
    ),
    ("metrics", "rows"): (
        "Paper metrics (malignant = positive), case-level protocol",
        ("system", "backbone", "crop", "alpha"),
        [
            Column("system", "system"),
            Column("backbone", "backbone"),
            Column("crop", "crop"),
            Column("alpha", "alpha"),
            Column("accuracy", "acc", "{:.3f}", "higher"),
            Column("precision", "prec", "{:.3f}", "higher"),
            Column("recall", "rec", "{:.3f}", "higher"),
            Column("f1", "F1", "{:.3f}", "higher"),
            Column("f1_ci", "F1 95% CI"),
            Column("auc", "ROC-AUC", "{:.3f}", "higher"),
            Column("auc_ci", "AUC 95% CI"),
            Column("specificity", "spec", "{:.3f}", "higher", terminal=False),
            Column("train_s", "train s", "{:.0f}", terminal=False),
            Column("train_cost", "train step / Global", "{:.2f}x"),
            Column("paper", "paper acc/prec/rec/F1 %"),
            Column("localisation", "localisation / variant", terminal=False),
            Column("error", "error", terminal=False),
        ],
    ),
    ("metrics", "paired"): (
        "Feature vs image cropping: paired ROC-AUC differences (same ROIs; paired case bootstrap, DeLong)",
        ("backbone", "comparison"),
        [
            Column("backbone", "backbone"),
            Column("comparison", "comparison"),
            Column("diff", "AUC difference", "{:+.3f}", "higher"),
            Column("ci", "95% CI"),
            Column("delong_p", "DeLong p", "{:.3f}"),
            Column("n_rois", "ROIs"),
            Column("error", "error", terminal=False),
        ],
    ),
    ("metrics", "baseline"): (
        "Majority-class baseline (always the training majority)",
        ("protocol",),
        [
            Column("protocol", "protocol", terminal=False),
            Column("majority_class", "predicts"),
            Column("accuracy", "acc", "{:.3f}"),
            Column("precision", "prec", "{:.3f}"),
            Column("recall", "rec", "{:.3f}"),
            Column("f1", "F1", "{:.3f}"),
            Column("auc", "ROC-AUC", "{:.2f}"),
        ],
    ),
}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(backend: str, device: str, threads: Sequence[int]) -> dict:
    """What a reader needs to reproduce or discount the figures."""
    return {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": list(threads),
        "device": device,
        "extension_backend": backend,
        "git_commit": _git_commit(),
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return _jsonable(obj.item())
    return str(obj)


def _tables(report: dict):
    for (section, table), (title, ids, columns) in TABLES.items():
        rows = (report.get(section) or {}).get(table)
        if rows:
            yield section, table, title, ids, columns, rows


def render_markdown(report: dict) -> str:
    out = io.StringIO()
    out.write("# hfcn-bench compare\n\n")
    env = report.get("environment", {})
    out.write(
        f"torch {env.get('torch')} (CUDA build {env.get('cuda_build')}), extension backend "
        f"`{env.get('extension_backend')}`, device {env.get('device')}, CPU {env.get('cpu')} "
        f"({env.get('cpu_count')} cores), threads {env.get('threads')}, commit {env.get('git_commit')}\n\n"
    )
    if report.get("data"):
        d = report["data"]
        out.write(
            f"Data: {d.get('source')} ({d.get('path')}), label rule `{d.get('label_rule')}`, "
            f"fingerprint `{d.get('fingerprint')}`\n\n"
        )
    for _, _, title, _, columns, rows in _tables(report):
        out.write(f"## {title}\n\n")
        out.write("| " + " | ".join(c.header for c in columns) + " |\n")
        out.write("|" + "---|" * len(columns) + "\n")
        for r in rows:
            out.write("| " + " | ".join(c.render(r).replace("|", "/") for c in columns) + " |\n")
        out.write("\n")
    for note in report.get("notes", []):
        out.write(f"- {note}\n")
    if report.get("errors"):
        out.write("\n## Errors\n\n")
        for e in report["errors"]:
            out.write(f"- {e}\n")
    if report.get("figures"):
        out.write("\n## Figures\n\n")
        for f in report["figures"]:
            out.write(f"![{Path(f).stem}]({Path(f).name})\n")
    return out.getvalue()


def _csv(columns: list[Column], rows: list[dict]) -> str:
    keys = [c.key for c in columns]
    extra = sorted({k for r in rows for k in r} - set(keys))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys + extra, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _jsonable(r.get(k)) for k in keys + extra})
    return buf.getvalue()


def write_report(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write report.json, report.md and one CSV per table into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    written = []
    path = out / "report.json"
    write_text_atomic(path, json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n")
    written.append(path)
    path = out / "report.md"
    write_text_atomic(path, render_markdown(report))
    written.append(path)
    for section, table, _, _, columns, rows in _tables(report):
        path = out / f"{section}_{table}.csv"
        write_text_atomic(path, _csv(columns, rows))
        written.append(path)
    return written


def render_rich(report: dict, console, sections: Sequence[str] | None = None) -> None:
    from rich.table import Table

    for section, _, title, _, columns, rows in _tables(report):
        if sections and section not in sections:
            continue
        table = Table(title=title, title_justify="left", show_lines=False)
        columns = [c for c in columns if c.terminal]
        for c in columns:
            table.add_column(c.header, overflow="fold")
        for r in rows:
            cells = []
            for c in columns:
                text = c.render(r)
                if c.key in ("passed", "parity_ok") and r.get(c.key) is False:
                    text = f"[bold red]{text}[/bold red]"
                elif c.key == "passed" and r.get(c.key) is True:
                    text = f"[green]{text}[/green]"
                cells.append(text)
            table.add_row(*cells)
        console.print(table)


def load_report(path: str | os.PathLike) -> dict:
    from ..errors import HfcnError

    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HfcnError(f"{p}: no such report", hint="give a report.json written by `hfcn-bench compare`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HfcnError(
            f"{p}: not a JSON report ({exc})", hint="give a report.json written by `hfcn-bench compare`"
        ) from None
    if not isinstance(data, dict) or "environment" not in data:
        raise HfcnError(f"{p}: not an hfcn-bench report (no 'environment' section)")
    return data


def compare_reports(new: dict, old: dict, tolerance: float = 0.10) -> list[dict]:
    """Ratio new/old of every figure both reports hold, matched by the table's identity keys.

    A row is a regression when a lower-is-better figure grew, or a higher-is-better one shrank,
    by more than ``tolerance`` (10% by default: timings on shared machines are noisy).
    """
    out = []
    for (section, table), (title, ids, columns) in TABLES.items():
        new_rows = (new.get(section) or {}).get(table) or []
        old_rows = {tuple(r.get(k) for k in ids): r for r in (old.get(section) or {}).get(table) or []}
        for r in new_rows:
            key = tuple(r.get(k) for k in ids)
            prev = old_rows.get(key)
            if prev is None:
                continue
            for c in columns:
                if c.better is None:
                    continue
                a, b = r.get(c.key), prev.get(c.key)
                if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b == 0:
                    continue
                ratio = a / b
                worse = ratio > 1 + tolerance if c.better == "lower" else ratio < 1 - tolerance
                better = ratio < 1 - tolerance if c.better == "lower" else ratio > 1 + tolerance
                out.append(
                    {
                        "table": title,
                        "row": " / ".join(str(k) for k in key),
                        "figure": c.header,
                        "old": b,
                        "new": a,
                        "ratio": ratio,
                        "verdict": "regression" if worse else "improvement" if better else "same",
                    }
                )
    return out


def render_against(rows: list[dict], console) -> None:
    from rich.table import Table

    table = Table(title="Against the earlier report (new / old)", title_justify="left")
    for h in ("table", "row", "figure", "old", "new", "ratio", "verdict"):
        table.add_column(h, overflow="fold")
    style = {"regression": "bold red", "improvement": "green", "same": "dim"}
    for r in rows:
        table.add_row(
            r["table"],
            r["row"],
            r["figure"],
            f"{r['old']:.4g}",
            f"{r['new']:.4g}",
            f"{r['ratio']:.2f}",
            f"[{style[r['verdict']]}]{r['verdict']}[/{style[r['verdict']]}]",
        )
    console.print(table)


def _eval_rows(report: dict) -> list[dict]:
    rows = []
    external = bool(report.get("external"))
    for name, rep in [("main", report)] + list((report.get("variants") or {}).items()):
        m = rep["metrics"]
        ci = m.get("ci") or {}
        cal = rep.get("calibration") or {}
        base = rep.get("majority_baseline") or {}
        rows.append(
            {
                "output": name,
                "n_rois": rep.get("n_samples"),
                "n_cases": rep.get("n_cases"),
                "auc": rep.get("auc"),
                "auc_low": (ci.get("auc") or [None, None])[0],
                "auc_high": (ci.get("auc") or [None, None])[1],
                "accuracy": m.get("accuracy"),
                "precision": m.get("precision"),
                "recall": m.get("recall"),
                "f1": m.get("f1"),
                "f1_low": (ci.get("f1") or [None, None])[0],
                "f1_high": (ci.get("f1") or [None, None])[1],
                "specificity": m.get("specificity"),
                "threshold": rep.get("threshold"),
                "brier": cal.get("brier"),
                "ece": cal.get("ece"),
                "majority_f1": base.get("f1"),
                "majority_accuracy": base.get("accuracy"),
                # external images that are training images of the run (eval --allow-overlap)
                **({"overlap_images": (report.get("overlap_count") or {}).get("images", 0)} if external else {}),
            }
        )
    return rows


def render_eval_markdown(report: dict) -> str:
    """An ``eval`` report as Markdown: what was scored, on what, and the numbers."""

    def f(v, d=3):
        return "—" if v is None else f"{v:.{d}f}"

    out = io.StringIO()
    kind = "external validation" if report.get("external") else "re-evaluation of the held-out cases"
    sysname = report["system"]["name"]
    out.write(f"# hfcn-bench eval: {sysname}, {kind}\n\n")
    d = report.get("data") or {}
    out.write(
        f"Run `{report.get('run')}` ({report.get('checkpoint')} weights). Data: {d.get('format')} at "
        f"`{d.get('root')}`, {d.get('samples')} ROIs of {d.get('cases')} cases, label rule `{d.get('label_rule')}`"
        + (" (a TI-RADS proxy, not pathology)" if d.get("label_rule") in ("tirads", "mccnn") else "")
        + f", fingerprint `{str(d.get('fingerprint'))[:16]}`.\n\n"
    )
    note = overlap_note(report)
    if note:
        out.write(f"**Overlap: {note}.** The images are listed at the end.\n\n")
    out.write(f"Protocol: {report.get('protocol')}.\n\n")
    if report.get("external"):
        p = report["prevalence"]
        out.write(
            f"Prevalence (malignant share of ROIs): training {f(p['training'])} ({p['training_rois']} ROIs), "
            f"external {f(p['external'])} ({p['external_rois']} ROIs). {report.get('ensemble')}.\n\n"
        )
    out.write(
        "| output | ROIs | ROC-AUC [95% CI] | F1 [95% CI] | accuracy | precision | recall | specificity | "
        "threshold | Brier | majority F1 |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in _eval_rows(report):
        out.write(
            f"| {r['output']} | {r['n_rois']} | {f(r['auc'])} [{f(r['auc_low'])}, {f(r['auc_high'])}] | "
            f"{f(r['f1'])} [{f(r['f1_low'])}, {f(r['f1_high'])}] | {f(r['accuracy'])} | {f(r['precision'])} | "
            f"{f(r['recall'])} | {f(r['specificity'])} | {f(r['threshold'], 4)} | {f(r['brier'])} | "
            f"{f(r['majority_f1'])} |\n"
        )
    for lim in report.get("limitations") or []:
        out.write(f"\n- limitation: {lim}")
    if report.get("overlap"):
        out.write("\n\nImages of this set that are training images of the run (scored with --allow-overlap):\n\n")
        out.write("".join(f"- {o}\n" for o in report["overlap"]))
    return out.getvalue() + "\n"


def write_eval_report(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    """``eval_report.json``, ``.md``, ``.csv`` and ``reliability.png`` (when calibration has
    data) under ``out_dir``, atomically."""
    from . import figures

    out = Path(out_dir)
    written = [
        write_text_atomic(out / "eval_report.json", json.dumps(_jsonable(report), indent=1) + "\n"),
        write_text_atomic(out / "eval_report.md", render_eval_markdown(report)),
    ]
    rows = _eval_rows(report)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    written.append(write_text_atomic(out / "eval_report.csv", buf.getvalue()))
    if (report.get("calibration") or {}).get("bins"):
        try:
            written.append(
                figures.plot_reliability(
                    report["calibration"], out / "reliability.png", title=f"{report['system']['name']}: reliability"
                )
            )
        except ValueError:
            pass  # no filled bin (never for a scored report); the numbers are written either way
    return written
