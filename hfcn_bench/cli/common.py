"""What the sub-commands share: output-path checks, loading a dataset with its warnings shown,
the progress bars fed by the library's ``progress(kind, done, total, info)`` callbacks, and the
rich tables of a metrics report."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import HfcnError

__all__ = [
    "check_out_dir",
    "add_near_duplicate_flag",
    "load_data",
    "progress_bars",
    "metrics_tables",
    "print_report",
    "fmt",
]


def check_out_dir(path: Path | None, flag: str = "--out") -> None:
    """An output folder must be a folder: refused before any work when it is an existing file."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise HfcnError(f"{flag} {path} is a file, not a folder", hint=f"give {flag} a folder (new or existing)")


def add_near_duplicate_flag(parser, note: str = "") -> None:
    """``--no-near-duplicate-links`` (``args.near_duplicate_links``, True by default) for the
    commands whose load builds a split."""
    parser.add_argument(
        "--no-near-duplicate-links",
        dest="near_duplicate_links",
        action="store_false",
        help="do not link cases whose images are near-duplicates (re-encoded, resized, cropped, a pane, "
        "brightness); cases sharing identical image bytes are linked either way" + note,
    )


def fmt(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _epoch_value(v) -> str:
    """A history value on the epoch line: 4 decimals, a per-head dict (descriptor AUCs) as
    ``name 0.612, ...``."""
    if isinstance(v, float):
        return fmt(v, 4)
    if isinstance(v, dict):
        return "(" + ", ".join(f"{k} {fmt(x) if isinstance(x, float) or x is None else x}" for k, x in v.items()) + ")"
    return str(v)


def load_data(console, path, label_rule: str, margin: float, quiet: bool, classes=None, link_near_duplicates=True):
    """The dataset at ``path`` (the embedded phantoms when None), its load warnings printed;
    ``classes``: a folder dataset's class mapping (``--classes``); ``link_near_duplicates``:
    link cases whose images are near-duplicates (off only where no split is built)."""
    from ..data import ensure_synthetic, load_dataset

    if path is not None:
        # The manifest records the root; an absolute one lets `eval` find the data from any
        # working directory.
        path = Path(path).expanduser().resolve()
    else:
        with console.status("preparing the embedded synthetic phantoms (data/synthetic)..."):
            path = ensure_synthetic().resolve()
        if not quiet:
            console.print(f"data: synthetic phantoms at {path} (pass --data for DDTI)", highlight=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(
            path, label_rule=label_rule, margin=margin, classes=classes, link_near_duplicates=link_near_duplicates
        )
    if not quiet:
        for w in caught:
            console.print(f"[yellow]warning:[/yellow] {w.message}", highlight=False)
    if len(ds) == 0:
        raise HfcnError(
            f"no labelled ROI in {path} under rule {label_rule!r}", hint="check the folder with `hfcn-bench data check`"
        )
    return ds


_STAGES = {"epoch": "", "det_epoch": "detector ", "seg_epoch": "segmenter "}


@contextmanager
def progress_bars(console, enabled: bool = True):
    """Rich progress bars for the ``progress(kind, done, total, info)`` callbacks of training
    and prediction; one printed line per finished epoch (any stage) and per fold."""
    if not enabled:
        yield None
        return
    cols = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*cols, console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def task(kind: str, desc: str, total: int) -> int:
            if kind not in tasks:
                tasks[kind] = bar.add_task(desc, total=total)
            return tasks[kind]

        def done_with(kind: str, tid: int, done: int, total: int) -> None:
            if done == total:
                bar.update(tid, visible=False)
                tasks.pop(kind)

        def update(kind: str, done: int, total: int, info: dict) -> None:
            if kind == "load":
                desc = f"decoding {info.get('what', 'ROIs')}"
                tid = task("load", desc, total)
                bar.update(tid, completed=done, total=total, description=desc)
                done_with("load", tid, done, total)
            elif kind == "batch":
                tid = task("batch", "batches", total)
                if done == 1:
                    bar.reset(tid, total=total)
                bar.update(
                    tid,
                    completed=done,
                    description=f"epoch {info.get('epoch')}"
                    + (f" loss {info['loss']:.3f}" if info.get("loss") is not None else ""),
                )
            elif kind.endswith("epoch"):
                stage = _STAGES.get(kind, kind.replace("_epoch", " ") if kind != "epoch" else "")
                tid = task(kind, f"{stage}epochs", total)
                bar.update(tid, completed=done, total=total)
                vals = "  ".join(f"{k} {_epoch_value(v)}" for k, v in info.items() if k.startswith("val_"))
                # only a validation score picks epochs (the descriptor heads' AUCs do not)
                scored = any(isinstance(v, float) for k, v in info.items() if k.startswith("val_"))
                star = "  [green]* best[/green]" if info.get("best") and scored else ""
                lr = f"  lr {info['lr']:.2e}" if "lr" in info else ""
                bar.console.print(
                    f"{stage}epoch {done}/{total}  loss {info.get('train_loss', 0):.4f}  {vals}{lr}  "
                    f"{info.get('seconds', 0):.1f} s{star}",
                    highlight=False,
                )
                if done == total:
                    bar.reset(tid)
            elif kind == "fold":
                tid = task("fold", "folds", total)
                bar.update(tid, completed=done, total=total)
                bar.console.print(
                    f"[bold]fold {info['fold']}[/bold]: test ROC-AUC {fmt(info.get('auc'))}, F1 {fmt(info.get('f1'))}",
                    highlight=False,
                )
            elif kind == "predict":
                tid = task("predict", "predicting", total)
                bar.update(tid, completed=done, total=total)
                done_with("predict", tid, done, total)

        yield update


def _ci(report: dict, name: str) -> str:
    c = (report.get("ci") or {}).get(name)
    return "—" if not c else f"[{c['low']:.3f}, {c['high']:.3f}]"


def metrics_tables(report: dict, title: str = "test metrics") -> list[Table]:
    """Rich tables for a scored report: the metrics with their 95 % case-bootstrap intervals
    beside the majority-class baseline, calibration, and the confusion matrix."""
    m = report["metrics"]
    base = report.get("majority_baseline") or {}
    level = report.get("level", "roi")
    size = (
        f"{report['n_cases']} cases"
        if level.startswith("case")
        else f"{report['n_samples']} ROIs of {report['n_cases']} cases"
    )
    t = Table(title=f"{title} ({size}; malignant = positive)", title_justify="left")
    t.add_column("metric")
    t.add_column("model", justify="right")
    t.add_column(f"{int(round(100 * report.get('ci_level', 0.95)))}% CI (case bootstrap)", justify="right")
    maj = base.get("majority_class")
    t.add_column(
        "majority baseline" + ("" if maj is None else f" (always {('benign', 'malignant')[maj]})"), justify="right"
    )
    sens = report.get("sens_at_spec") or {}
    cal = report.get("calibration") or {}
    rows = [
        ("ROC-AUC", report.get("auc"), _ci(report, "auc"), base.get("auc")),
        ("PR-AUC", report.get("pr_auc"), "", base.get("pr_auc")),
        ("accuracy (eq. 9)", m["accuracy"], _ci(report, "accuracy"), base.get("accuracy")),
        ("precision (eq. 10)", m["precision"], "", base.get("precision")),
        ("recall = sensitivity (eq. 11)", m["recall"], "", base.get("recall")),
        ("F1 (eq. 12)", m["f1"], _ci(report, "f1"), base.get("f1")),
        ("specificity", m["specificity"], "", base.get("specificity")),
        (f"sensitivity at specificity {sens.get('specificity', 0.9):g}", sens.get("sensitivity"), "", None),
        ("Brier score (calibration)", cal.get("brier"), "", None),
    ]
    for name, val, ci, b in rows:
        t.add_row(name, fmt(val), ci, fmt(b))
    src = report.get("threshold_source", "")
    t.add_row(
        "decision threshold",
        fmt(report["threshold"], 4),
        f"{report.get('threshold_rule', '')} on {src}" if src else report.get("scores", ""),
        "",
    )
    cm = Table(title="confusion matrix (rows: truth)", title_justify="left")
    cm.add_column("")
    cm.add_column("predicted benign", justify="right")
    cm.add_column("predicted malignant", justify="right")
    cm.add_row("benign", str(m["tn"]), str(m["fp"]))
    cm.add_row("malignant", str(m["fn"]), str(m["tp"]))
    return [t, cm]


def _fold_table(report: dict) -> Table:
    t = Table(title=f"{report['k']} folds (each scored with its own threshold)", title_justify="left")
    for c in ("fold", "test cases", "ROC-AUC", "F1", "threshold", "best epoch", "train s"):
        t.add_column(c, justify="right")
    for f in report["folds"]:
        tr = f.get("training") or {}
        best = tr.get("best_epoch", (tr.get("classifier") or {}).get("best_epoch", "—"))
        t.add_row(
            str(f["fold"]),
            str(f["n_cases"]),
            fmt(f["auc"]),
            fmt(f["metrics"]["f1"]),
            fmt(f["threshold"], 4),
            str(best),
            fmt((f.get("timings") or {}).get("train_s"), 1),
        )
    s = report["fold_summary"]
    t.add_row(
        "mean ± sd",
        "",
        f"{fmt(s['auc']['mean'])} ± {fmt(s['auc']['sd'])}",
        f"{fmt(s['f1']['mean'])} ± {fmt(s['f1']['sd'])}",
        "",
        "",
        "",
    )
    return t


def descriptor_table(desc: dict) -> Table:
    """The auxiliary descriptor heads' ROC-AUC on the held-out cases, per category against the
    rest, with its case-bootstrap interval (a head's summary is the mean over its categories)."""
    t = Table(
        title="descriptor heads on held-out cases (targets from the case reports; never an input)",
        title_justify="left",
    )
    for c in ("head", "known ROIs", "AUC (mean)", "per category: AUC [95% CI] (positives)"):
        t.add_column(c, justify="left" if c.startswith(("head", "per")) else "right")
    for name, h in desc.items():
        parts = [
            f"{cat} {fmt(c['auc'])}"
            + (f" [{c['low']:.3f}, {c['high']:.3f}]" if c.get("low") is not None else "")
            + f" ({c['positives']})"
            for cat, c in h["per_class"].items()
        ]
        t.add_row(name, f"{h['rows']} ({h['cases']} cases)", fmt(h["auc"]), "; ".join(parts))
    return t


def print_report(console, report: dict, title: str) -> None:
    """A report as tables: per-fold summary, the metrics, each variant's headline table, the
    localisation summaries, the data's provenance, the system's limitations."""
    if report.get("kind") == "kfold":
        console.print(_fold_table(report))
        title = f"{title}, pooled out-of-fold"
    for table in metrics_tables(report, title):
        console.print(table)
    for name, v in (report.get("variants") or {}).items():
        console.print(metrics_tables(v, f"variant {name}: {v.get('description', '')}")[0])
    if report.get("descriptors"):
        console.print(descriptor_table(report["descriptors"]))
    for key in ("detection", "segmentation", "pairing"):
        if isinstance(report.get(key), dict):
            vals = ", ".join(
                f"{k} {v:.3f}"
                if isinstance(v, float)
                else f"{k} [{', '.join(f'{x:.3f}' for x in v)}]"
                if isinstance(v, list) and all(isinstance(x, float) for x in v)
                else f"{k} {v}"
                for k, v in report[key].items()
                if k != "per_fold"
            )
            console.print(f"{key}: {vals}", highlight=False)
    data = report.get("data") or {}
    split = report.get("split") or {}
    if split.get("description"):
        sides = data.get("given_split") or {}
        counts = (
            "; ".join(
                f"{side}/: {c['cases']} cases, {c['benign']} benign / {c['malignant']} malignant ROIs"
                for side, c in sides.items()
            )
            if split.get("method") == "given"
            else ""
        )
        console.print(
            f"split: {split['description']}" + (f" ({counts})" if counts else ""), highlight=False, markup=False
        )
    classes = (data.get("options") or {}).get("classes")
    if classes:
        console.print(
            "class folders: " + ", ".join(f"{k}/ = {v}" for k, v in classes.items()), highlight=False, markup=False
        )
    console.print(
        f"labels: {data.get('label_rule')} rule ({data.get('format')} data at {data.get('root')}, "
        f"fingerprint {str(data.get('fingerprint', ''))[:12]}…); level: {report.get('level')}",
        highlight=False,
        markup=False,
    )
    if data.get("label_rule") in ("tirads", "mccnn"):
        console.print(
            "DDTI labels are a TI-RADS proxy, not pathology: every number above is agreement with the "
            "radiologists' TI-RADS category",
            highlight=False,
            markup=False,
        )
    for lim in report.get("limitations") or []:
        console.print(f"[dim]limitation:[/dim] {lim}", highlight=False)
    for msg in report.get("skipped") or []:
        console.print(f"[yellow]skipped:[/yellow] {msg}", highlight=False)
