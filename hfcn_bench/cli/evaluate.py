"""``hfcn-bench eval``: score a finished run from its saved models, on its own held-out cases
(re-evaluation) or on another labelled dataset (external validation), for any system."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import HfcnError
from ..protocol.checks import check_n_boot
from .common import check_out_dir, print_report, progress_bars

__all__ = ["register"]


def register(sub) -> None:
    v = sub.add_parser(
        "eval",
        help="score a run from its saved models: its held-out cases, or an external dataset",
        description="Without --data (or with the run's own data) the run's held-out cases are scored "
        "again from its saved models. With another labelled dataset (DDTI format or benign/ + "
        "malignant/ folders) the run is validated externally: its own threshold (never re-tuned), "
        "the mean of the fold models for k-fold runs, the same metrics and case-bootstrap intervals, "
        "the external set's majority baseline, calibration, and both prevalences.",
    )
    v.add_argument("--run", type=Path, required=True, help="run folder written by `hfcn-bench train`")
    v.add_argument("--data", type=Path, default=None, help="dataset folder (default: the run's own)")
    v.add_argument(
        "--classes",
        default=None,
        metavar="FOLDER=CLASS,...",
        help="folder format: which folders hold which class, e.g. benin=benign,malin=malignant "
        "(default: the mapping the run recorded, where its folders exist)",
    )
    v.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="which weights of per-epoch trained systems (last: the threshold is chosen again on the "
        "run's validation cases)",
    )
    v.add_argument(
        "--per-case",
        choices=("none", "mean", "max"),
        default=None,
        help="ROI-level (none) or per-case scoring (default: as the run was trained)",
    )
    v.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default: the run's)")
    v.add_argument("--device", default="cpu")
    v.add_argument(
        "--allow-overlap",
        action="store_true",
        help="score an external set even when some of its images are training images of the run",
    )
    v.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for eval_report.json, eval_report.md, eval_report.csv and reliability.png (an "
        "external validation is also recorded in RUN/external/<data fingerprint>/, or "
        "RUN/external/<data fingerprint>-last/ for --checkpoint last); an existing folder that is not "
        "empty needs --force",
    )
    v.add_argument("--force", action="store_true", help="write the report into an --out that is not empty")
    v.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    v.set_defaults(handler=run_eval)


def run_eval(args, console) -> int:
    from ..bench.report import write_eval_report
    from ..protocol.runfolder import external_record_dir
    from ..protocol.scoring import overlap_note
    from ..runs import evaluate_run

    check_out_dir(args.out)
    if args.out is not None and args.out.is_dir() and any(args.out.iterdir()) and not args.force:
        raise HfcnError(
            f"--out {args.out} is not empty (an earlier report would be overwritten)",
            hint="choose another --out, or --force to write into it",
        )
    if args.n_boot is not None:
        check_n_boot(args.n_boot)
    aggregate = "run" if args.per_case is None else (None if args.per_case == "none" else args.per_case)
    with progress_bars(console, enabled=not args.json) as progress:
        report = evaluate_run(
            args.run,
            data=args.data,
            checkpoint=args.checkpoint,
            aggregate=aggregate,
            n_boot=args.n_boot,
            device=args.device,
            allow_overlap=args.allow_overlap,
            progress=progress,
            classes=args.classes,
        )
    files = write_eval_report(report, args.out) if args.out is not None else []
    if report["external"]:
        # A run keeps a record of every external validation it went through (its model card
        # shows them), one per external set and checkpoint.
        write_eval_report(report, external_record_dir(args.run, report["data"]["fingerprint"], args.checkpoint))
    if args.json:
        console.print_json(json.dumps(report))
        return 0
    name = report["system"]["name"]
    where = "external set" if report["external"] else "held-out cases"
    print_report(console, report, f"{name} ({args.checkpoint} weights) on the {where}")
    if report["external"]:
        p = report["prevalence"]
        console.print(
            f"prevalence (malignant share of ROIs): training {p['training']:.3f} ({p['training_rois']} ROIs), "
            f"external {p['external']:.3f} ({p['external_rois']} ROIs); {report['ensemble']}",
            highlight=False,
        )
        note = overlap_note(report)
        if note:
            console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if files:
        console.print(f"wrote {', '.join(str(Path(f).name) for f in files)} to {args.out}", highlight=False)
    return 0
