"""``hfcn-bench compare``: op speed, model cost and paper metrics in one report directory."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import HfcnError

DEFAULT_OUT = "reports"


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise HfcnError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise HfcnError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="benchmark report: fused op speed, model cost, paper metrics (embedded synthetic data by default)",
        description="Runs the op speed, model cost and paper-metrics sections and writes "
        "report.json, report.md, CSVs and PNG figures into --out (default reports/<timestamp>/).",
    )
    p.add_argument("--data", help="DDTI folder (raw/ or flat) or folder format; default: embedded synthetic phantoms")
    p.add_argument(
        "--preset",
        default="quick",
        help="quick (default, ~5 min on 2 cores), paper (paper settings; long) or smoke (seconds; checks an install)",
    )
    p.add_argument("--folds", type=int, default=0, help="k-fold case-level cross-validation (default: one 3:1 split)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", default="1,2", help="thread counts to time, comma-separated (default 1,2)")
    p.add_argument("--only", default="speed,model,metrics", help="sections: speed, model, metrics")
    p.add_argument("--backbones", default="paper", help="backbones for the metrics section (e.g. paper,resnet50)")
    p.add_argument(
        "--crops",
        default="none,rfc,bfc,image",
        help="crop modes for the metrics section (image: the image-level multi-crop, 6 backbone passes)",
    )
    p.add_argument(
        "--systems",
        default="",
        help="comparator systems scored on the same split, e.g. "
        "shape_rf,transfer_svm, or all (every registered system)",
    )
    p.add_argument("--alphas", default="", help="alpha sweep of BFC like the paper's Table 3, e.g. 0.5,0.6,0.7")
    p.add_argument("--label-rule", default="tirads", help="tirads (default) or mccnn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=1000, help="case-bootstrap resamples for the 95%% intervals")
    p.add_argument("--out", help="report directory (default reports/<timestamp>/)")
    p.add_argument("--against", help="an earlier report.json (or its directory): print new/old ratios")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.set_defaults(handler=run)


def _figures(report: dict, out: Path) -> list[str]:
    from ..bench import figures

    made = []
    speed = (report.get("op_speed") or {}).get("rows") or []
    ok = [r for r in speed if r.get("status") == "ok" and r.get("median_s")]
    if ok:
        first_shape = ok[0]["shape"]
        threads = max(r["threads"] for r in ok if r["shape"] == first_shape)
        for direction in ("forward", "forward+backward"):
            rows = [
                {"name": r["method"], "median_s": r["median_s"], "iqr_s": r.get("iqr_s") or 0.0}
                for r in ok
                if r["shape"] == first_shape
                and r["direction"] == direction
                and r["threads"] == threads
                and r["method"] != "image-multicrop"
            ]
            if rows:
                name = "speed_forward.png" if direction == "forward" else "speed_forward_backward.png"
                made.append(
                    str(
                        figures.plot_speed_bars(
                            rows, out / name, title=f"crop+resize {direction}, {first_shape}, {threads} thread(s)"
                        )
                    )
                )
    if any(r.get("gbps") for r in ok):
        env = report.get("environment") or {}
        where = env.get("gpu") if str(env.get("device", "")).startswith("cuda") else env.get("cpu")
        peak = next((r["peak_gbps"] for r in ok if r.get("peak_gbps")), None)
        how = next((r["peak_how"] for r in ok if r.get("peak_gbps")), "")
        made.append(
            str(
                figures.plot_roofline(
                    ok,
                    report["op_speed"].get("copy") or [],
                    out / "roofline.png",
                    peak_gbps=peak,
                    peak_how=f"({how})" if how else "",
                    title=f"crop + resize: achieved GB/s against the copy bandwidth, {where}",
                )
            )
        )
    model = (report.get("model_cost") or {}).get("rows") or []
    if model:
        threads = max(r["threads"] for r in model)
        rows = [
            {"name": r["mode"], "median_s": r["train_median_s"], "iqr_s": r.get("train_iqr_s") or 0.0}
            for r in model
            if r["threads"] == threads
        ]
        made.append(
            str(
                figures.plot_speed_bars(
                    rows,
                    out / "model_train_step.png",
                    title=f"training step, batch {model[0]['batch']} at {model[0]['size']} px, {threads} thread(s)",
                )
            )
        )
    metrics = report.get("metrics") or {}
    if metrics.get("roc"):
        curves = {k: (v[0], v[1], v[2]) for k, v in metrics["roc"].items()}
        made.append(str(figures.plot_roc_curves(curves, out / "roc.png")))
    sweep = [r for r in metrics.get("rows", []) if r["crop"] == "bfc" and r.get("alpha") is not None]
    alphas = sorted({r["alpha"] for r in sweep})
    if len(alphas) > 1:
        by = {a: next(r for r in sweep if r["alpha"] == a) for a in alphas}
        values = {
            k: [by[a][k] if by[a][k] is not None else float("nan") for a in alphas] for k in ("accuracy", "f1", "auc")
        }
        made.append(str(figures.plot_alpha_sweep(alphas, values, out / "alpha_sweep.png")))
    return made


def run(args, console) -> int:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ..bench.compare import SECTIONS, CompareOptions, check_options, run_compare
    from ..bench.report import compare_reports, load_report, render_against, render_rich, write_report
    from .common import check_out_dir

    old = load_report(args.against) if args.against else None  # fail early on a bad --against
    opts = CompareOptions(
        data=args.data,
        preset=args.preset,
        folds=args.folds,
        device=args.device,
        threads=_ints(args.threads),
        only=_names(args.only),
        backbones=_names(args.backbones),
        crops=_names(args.crops),
        alphas=_floats(args.alphas),
        systems=_names(args.systems),
        label_rule=args.label_rule,
        seed=args.seed,
        n_boot=args.n_boot,
    )
    if args.data and not Path(args.data).exists():
        raise HfcnError(
            f"--data {args.data}: no such folder", hint="point it at DDTI raw/ or a benign/ + malignant/ folder"
        )
    check_options(opts)  # every argument error before any report is written
    if opts.folds and "metrics" in opts.only:
        # --folds against the data's case count, before the speed and model sections run
        import warnings

        from ..data import ensure_synthetic, load_dataset
        from ..protocol.checks import check_folds

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = load_dataset(opts.data or str(ensure_synthetic()), label_rule=opts.label_rule, warn=False)
        check_folds(opts.folds, ds)
    out = Path(args.out or Path(DEFAULT_OUT) / time.strftime("%Y%m%d-%H%M%S"))
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=args.json,
    ) as bar:
        task = bar.add_task("compare", total=len([s for s in SECTIONS if s in opts.only]))

        def progress(msg: str) -> None:
            bar.update(task, description=msg)

        def on_section(report: dict) -> None:
            write_report(report, out)
            bar.advance(task)

        report = run_compare(opts, progress=progress, on_section=on_section)

    try:
        report["figures"] = _figures(report, out)
    except Exception as exc:  # figures are a convenience: never lose the numbers for them
        report["errors"].append(f"figures: {type(exc).__name__}: {exc}")
    if old is not None:
        report["against"] = {"report": str(args.against), "rows": compare_reports(report, old)}
    files = write_report(report, out)

    if args.json:
        console.print_json(json.dumps(json.loads((out / "report.json").read_text())))
    else:
        render_rich(report, console)
        if old is not None:
            render_against(report["against"]["rows"], console)
        for note in report["notes"]:
            console.print(f"[dim]- {note}[/dim]")
        console.print(
            f"report written to [bold]{out}[/bold]: "
            + ", ".join(p.name for p in files + [Path(f) for f in report.get("figures", [])])
        )
    for err in report["errors"]:
        console.print(f"[bold red]error:[/bold red] {err}", highlight=False)
    return 1 if report["errors"] else 0
