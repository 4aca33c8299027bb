"""``hfcn-bench reproduce``: the paper's Tables 3 and 4 (and Table 5, feature vs image cropping) as
a grid of cached cells, on Ray or in this process, with a live view of the cells done, running, failed and queued."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.live import Live
from rich.table import Table

from ..errors import HfcnError
from ..reproduce.engines import DEFAULT_RETRIES, terminate_as_interrupt
from ..reproduce.runner import PRESETS
from .common import fmt

__all__ = ["register"]


def _ints(text):
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise HfcnError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text):
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise HfcnError(f"expected comma-separated numbers, got {text!r}") from None


def register(sub) -> None:
    r = sub.add_parser(
        "reproduce",
        help="the paper's Tables 3 and 4 (and 5: feature vs image cropping) under "
        "case-level CV: a grid of cached cells on Ray (or in-process), with the report beside the paper's figures",
        description="Builds the grid backbone x architecture x alpha x fold; each cell is a run folder "
        "under OUT/cells/<key>/. Finished cells are skipped, interrupted ones resume, a failing one "
        "becomes an error row pointing at its log. Writes OUT/report.md, report.json and figures.",
    )
    r.add_argument("--table", choices=("3", "4", "5", "all"), default="all")
    r.add_argument("--data", default=None, help="dataset folder (default: the embedded phantoms)")
    r.add_argument("--label-rule", choices=("tirads", "mccnn"), default="tirads")
    r.add_argument("--folds", type=int, default=5, help="k of the case-level k-fold CV (default 5)")
    r.add_argument(
        "--backbones",
        default=None,
        help="comma-separated (default: paper for Table 3; paper and efficientnet_lite0 (ImageNet) for Table 4)",
    )
    r.add_argument("--alphas", default=None, help="Table 3's alphas (default 0.5,0.6,0.7,0.8,0.9; 1.0 = Global)")
    r.add_argument(
        "--preset",
        choices=PRESETS,
        default="cpu",
        help="HFCN training preset of every cell: paper (SGD lr 1e-5, 100 epochs at 224 px: GPU), cpu "
        "(224 px, 12 epochs, AdamW), quick (48 px, 8 epochs: engine benchmarks), smoke (seconds), pretrained (the "
        "recipe for ImageNet trunks: pooled head, slower trunk, strong augmentation, 32 px context, descriptor "
        "heads, flip TTA; EfficientNet rows only) (default cpu)",
    )
    r.add_argument(
        "--engine",
        choices=("ray", "local"),
        default="ray",
        help="ray (default: a local Ray instance, or --address) or local (in this process, no Ray)",
    )
    r.add_argument("--workers", type=int, default=None, help="cells at a time (default: CPUs / threads)")
    r.add_argument("--threads", type=int, default=1, help="torch threads per cell (default 1)")
    r.add_argument("--address", default=None, help="join a running Ray cluster: auto or HOST:PORT")
    r.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help=f"times a cell lost with its Ray worker or node is submitted again in the same run "
        f"(default {DEFAULT_RETRIES})",
    )
    r.add_argument("--device", default="cpu", help="cpu or cuda (each cell then asks Ray for a GPU fraction)")
    r.add_argument("--gpus-per-cell", type=float, default=None, help="GPU fraction per cell (default 1/workers)")
    r.add_argument("--seed", type=int, default=0, help="seed of the folds and of every cell's training (default 0)")
    r.add_argument(
        "--seeds",
        default=None,
        help="comma-separated extra training seeds: the cells are repeated with "
        "each on the same folds (keys end in -s<seed>), and the report gives every row's and every paired "
        "difference's spread over seeds (e.g. 0,1,2)",
    )
    r.add_argument(
        "--seed-architectures",
        default=None,
        help="which architectures --seeds repeats: comma-separated "
        "of none (Global), rfc, bfc, image (default: all of the table)",
    )
    r.add_argument("--n-boot", type=int, default=1000)
    r.add_argument("--out", type=Path, required=True, help="grid folder (cells/, report.md, report.json)")
    r.add_argument(
        "--report-only",
        action="store_true",
        help="write OUT/report.md, report.json and the figures from the finished cells; run nothing (e.g. "
        "while other machines run the rest)",
    )
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="print the grid with a cost estimate per cell from a short measured step time; run nothing",
    )
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.set_defaults(handler=run_reproduce)


class _View:
    """Counts of cells done, running, failed and queued, with an ETA from the mean cell time."""

    def __init__(self, total: int, workers: int):
        self.total, self.workers = total, workers
        self.done = self.cached = self.failed = 0
        self.running: dict[str, float] = {}
        self.walls: list[float] = []
        self.t0 = time.perf_counter()
        self.last: list[str] = []

    def event(self, kind, spec, res):
        if kind == "cached":
            self.cached += 1
        elif kind == "start":
            self.running[spec["key"]] = time.perf_counter()
        elif kind == "result":
            self.running.pop(spec["key"], None)
            if res["status"] == "error":
                self.failed += 1
                self.last.append(f"[red]failed[/red] {spec['key']}: {res.get('error')} (log {res.get('log')})")
            else:
                self.done += 1
                if res["status"] == "done" and res.get("cell_s"):
                    # A cell's whole time, a resumed one's earlier runs included: the ETA is for
                    # cells that start afresh.
                    self.walls.append(res["cell_s"])
                self.last.append(f"{spec['key']}: ROC-AUC {fmt(res.get('auc'))}, {res.get('wall_s', 0):.0f} s")
            self.last = self.last[-6:]

    def render(self) -> Table:
        queued = self.total - self.done - self.cached - self.failed - len(self.running)
        left = queued + len(self.running)
        eta = (sum(self.walls) / len(self.walls)) * left / max(1, self.workers) if self.walls else None
        t = Table(title=f"reproduce: {self.total} cells", title_justify="left", show_header=True)
        for c in ("done", "cached", "running", "failed", "queued", "elapsed", "ETA"):
            t.add_column(c, justify="right")
        t.add_row(
            str(self.done),
            str(self.cached),
            str(len(self.running)),
            str(self.failed),
            str(queued),
            f"{time.perf_counter() - self.t0:.0f} s",
            "—" if eta is None else f"{eta / 60:.1f} min",
        )
        for line in self.last:
            t.add_row(line, "", "", "", "", "", "")
        return t


def run_reproduce(args, console) -> int:
    from ..reproduce import ReproduceOptions, reproduce

    opts = ReproduceOptions(
        table=args.table,
        data=args.data,
        folds=args.folds,
        backbones=tuple(b.strip() for b in args.backbones.split(",") if b.strip()) if args.backbones else None,
        alphas=_floats(args.alphas) if args.alphas else None,
        preset=args.preset,
        workers=args.workers,
        threads=args.threads,
        engine=args.engine,
        address=args.address,
        retries=args.retries,
        device=args.device,
        out=str(args.out),
        seed=args.seed,
        n_boot=args.n_boot,
        label_rule=args.label_rule,
        dry_run=args.dry_run,
        report_only=args.report_only,
        gpus_per_cell=args.gpus_per_cell,
        seeds=_ints(args.seeds) if args.seeds else (),
        seed_architectures=tuple(a.strip() for a in args.seed_architectures.split(",") if a.strip())
        if args.seed_architectures
        else None,
    )
    opts.check()  # every option before the grid is built or anything runs
    if args.dry_run:
        with console.status("measuring a training step of each model..."):
            plan = reproduce(opts)
        if args.json:
            console.print_json(json.dumps(plan))
            return 0
        t = Table(title=f"grid: {len(plan['cells'])} cells, preset {plan['preset']}", title_justify="left")
        for c in ("cell", "done", "step s", "batches/epoch", "epochs", "input pipeline", "estimate"):
            t.add_column(c, justify="left" if c == "cell" else "right")
        for c in plan["cells"]:
            t.add_row(
                c["key"],
                "yes" if c["done"] else "",
                f"{c['step_s']:.2f}",
                str(c["batches_per_epoch"]),
                str(c["epochs"]),
                f"{c['data_s'] / 60:.1f} min",
                f"{c['estimate_s'] / 60:.1f} min",
            )
        console.print(t)
        console.print(
            f"estimate: {plan['total_s'] / 3600:.2f} h of cell time in all, {plan['remaining_s'] / 3600:.2f} h "
            f"left; {plan['remaining_wall_s'] / 3600:.2f} h wall with {plan['workers']} worker(s) x "
            f"{plan['threads']} thread(s)",
            highlight=False,
        )
        return 0
    import os

    from ..reproduce import build_cells, build_configs

    total = len(
        build_cells(
            build_configs(opts.table, opts.backbones, opts.alphas),
            opts.folds,
            opts.seeds,
            opts.seed,
            opts.seed_architectures,
        )
    )
    view = _View(total, opts.workers or max(1, (os.cpu_count() or 1) // opts.threads))
    interrupted = False
    try:
        with terminate_as_interrupt():
            if args.json:
                report = reproduce(opts)
            else:
                with Live(view.render(), console=console, refresh_per_second=2, transient=False) as live:

                    def progress(kind, spec, res):
                        view.event(kind, spec, res)
                        live.update(view.render())

                    report = reproduce(opts, progress=progress)
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:
        console.print(
            f"[yellow]interrupted[/yellow]: finished cells are kept and the report in {args.out} covers "
            "them; run the same command again to go on",
            highlight=False,
        )
        return 130
    s = report["summary"]
    bad = s["failed"] or s.get("damaged")
    if args.json:
        console.print_json(json.dumps(report))
        return 1 if bad else 0
    console.print(
        f"cells: {s['done']}/{s['cells']} done, {s['failed']} failed, {s.get('damaged', 0)} damaged"
        + (f", {report['run']['retries']} retried after a lost node or worker" if report["run"].get("retries") else "")
        + f"; report: {args.out / 'report.md'}",
        highlight=False,
    )
    for r in report["cells"]:
        if r["status"] == "error":
            console.print(
                f"[bold red]error:[/bold red] cell {r['key']}: {r.get('error')} (log: {args.out / r['log']})",
                highlight=False,
            )
        elif r["status"] == "damaged":
            console.print(
                f"[bold red]damaged:[/bold red] cell {r['key']}: {args.out / 'cells' / r['key'] / r['problem']} "
                "(left out of the report; the next run recomputes it)",
                highlight=False,
            )
    return 1 if bad else 0
