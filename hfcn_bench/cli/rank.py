"""``hfcn-bench rank RUN [RUN ...]``: one ranked table over finished runs (HFCN and comparator
systems) trained on the same data and held-out cases, with a forest-plot figure."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

__all__ = ["register"]


def register(sub) -> None:
    r = sub.add_parser(
        "rank",
        help="rank finished runs of any system on the same split by ROC-AUC (with external "
        "evaluations beside their internal CV estimates)",
        description="Read the metrics.json + split.json of each run folder, check that all were "
        "scored on the same data, labels and held-out cases, and print one table ranked by "
        "ROC-AUC with 95%% case-bootstrap intervals for AUC and F1 and the majority baseline. "
        "Reports of `hfcn-bench eval --data OTHER --out DIR` (the folder or its eval_report.json) "
        "rank by their external AUC, each beside its run's internal CV estimate. Without them, "
        "each row also gets its paired ROC-AUC difference to the top row on the same out-of-fold "
        "ROIs (paired case bootstrap, DeLong p); runs of one system with different settings are "
        "named by those settings.",
    )
    r.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN_OR_EVAL",
        help="run folders of `hfcn-bench train`, or external eval reports",
    )
    r.add_argument("--out", type=Path, default=None, help="also write rank.md, rank.json and rank.png here")
    r.add_argument("--no-variants", action="store_true", help="leave out the comparators' variant rows")
    r.add_argument("--json", action="store_true", help="print the ranking as JSON")
    r.add_argument(
        "--n-boot", type=int, default=1000, metavar="N", help="bootstrap resamples of the paired differences"
    )
    r.set_defaults(handler=run_rank)


def run_rank(args, console) -> int:
    from ..atomic import write_json_atomic, write_text_atomic
    from ..bench.figures import plot_forest
    from ..bench.rank import delta_text, markdown, rank_runs, unpaired_notes
    from ..protocol.checks import check_n_boot
    from .common import check_out_dir

    check_n_boot(args.n_boot)
    check_out_dir(args.out)
    result = rank_runs(args.runs, variants=not args.no_variants, n_boot=args.n_boot)
    ext = result.get("external")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / "rank.json", result)
        write_text_atomic(args.out / "rank.md", markdown(result))
        panels = (
            (("internal_auc", "internal CV ROC-AUC"), ("auc", "external ROC-AUC"))
            if ext
            else (("auc", "ROC-AUC"), ("f1", "F1 (malignant positive)"))
        )
        # a model scored on its own training images (eval --allow-overlap) says so in the figure too
        shown = [
            {**r, "name": f"{r['name']} [{r['overlap']} training images]"} if r.get("overlap") else r
            for r in result["rows"]
        ]
        plot_forest(
            shown,
            args.out / "rank.png",
            baseline=result["baseline"],
            panels=panels,
            title="Ranked by external ROC-AUC, beside the internal CV estimate (95% case-bootstrap intervals)"
            if ext
            else "Models ranked by ROC-AUC (95% case-bootstrap intervals)",
        )
    if args.json:
        console.print_json(json.dumps(result))
        return 0

    def ci(c):
        return "" if not c else f"[{c[0]:.3f}, {c[1]:.3f}]"

    def f(v):
        return "—" if v is None else f"{v:.3f}"

    b = result["baseline"]
    if ext:
        t = Table(title=f"ranked by external ROC-AUC: {result['protocol']}", title_justify="left")
        for c in ("#", "model", "internal AUC", "95% CI", "external AUC", "95% CI ", "external F1", "note"):
            t.add_column(c, justify="left" if c in ("model", "note") else "right", overflow="fold")
        for i, row in enumerate(result["rows"], 1):
            t.add_row(
                str(i),
                row["name"],
                f(row["internal_auc"]),
                ci(row["internal_auc_ci"]),
                f(row["auc"]),
                ci(row["auc_ci"]),
                f(row["f1"]),
                row["note"] or "",
            )
        if b:
            t.add_row(
                "—",
                f"always {('benign', 'malignant')[b.get('majority_class', 1)]} (majority baseline)",
                "",
                "",
                f(b.get("auc")),
                "",
                f(b.get("f1")),
                "",
            )
    else:
        t = Table(title=f"ranked by ROC-AUC: {result['protocol']}", title_justify="left")
        for c in ("#", "model", "ROC-AUC", "95% CI", "ΔAUC vs #1 (paired)", "F1", "95% CI ", "note"):
            t.add_column(c, justify="left" if c in ("model", "note") else "right", overflow="fold")
        for i, row in enumerate(result["rows"], 1):
            t.add_row(
                str(i),
                row["name"],
                f(row["auc"]),
                ci(row["auc_ci"]),
                delta_text(row) if i > 1 else "",
                f(row["f1"]),
                ci(row["f1_ci"]),
                row["note"] or "",
            )
        if b:
            t.add_row(
                "—",
                f"always {('benign', 'malignant')[b.get('majority_class', 1)]} (majority baseline)",
                f(b.get("auc")),
                "",
                "",
                f(b.get("f1")),
                "",
                "",
            )
    for note in unpaired_notes(result):
        console.print(f"[yellow]not paired:[/yellow] {note}", highlight=False)
    console.print(t)
    if args.out is not None:
        console.print(f"wrote {args.out / 'rank.md'}, rank.json, rank.png", highlight=False)
    return 0
