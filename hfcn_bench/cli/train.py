"""``hfcn-bench train | eval | predict``: train on a case-level split or k-fold CV, re-evaluate a
run folder, classify new ROIs with a picture of where the model looked."""

from __future__ import annotations

import argparse
import json
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import HfcnError

__all__ = ["register", "metrics_tables"]

_CHOICE_FIELDS = {  # CLI flag -> TrainConfig field, for flags that only override when given
    "backbone": "backbone", "crop": "crop", "alpha": "alpha", "branch_weight": "branch_weight",
    "crop_impl": "crop_impl", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "momentum": "momentum",
    "weight_decay": "weight_decay", "optimizer": "optimizer", "schedule": "schedule", "grad_clip": "grad_clip",
    "w_malignant": "w_malignant", "w_benign": "w_benign", "image_size": "image_size", "augment": "augment",
    "seed": "seed", "device": "device", "threads": "threads", "val_fraction": "val_fraction",
    "threshold_rule": "threshold_rule",
}
# What --resume may change; everything else comes from the run's config.json.
_RESUME_FIELDS = ("epochs", "threads", "device")


def register(sub) -> None:
    from ..models import CROP_IMPLS, CROP_MODES, available_backbones
    from ..train import OPTIMIZERS, PRESETS, SCHEDULES, THRESHOLD_RULES

    t = sub.add_parser("train", help="train an HFCN on a case-level split (or k-fold CV) and score the test side",
                       description="Train on the training cases (a validation part of them picks the epoch and the "
                       "decision threshold), then score the held-out cases: accuracy, precision, recall, F1 "
                       "(paper eqs. 9-12), specificity, ROC-AUC, PR-AUC, sensitivity at 90% specificity, "
                       "case-bootstrap 95% intervals and the majority-class baseline.")
    t.add_argument("--data", type=Path, default=None,
                   help="dataset: DDTI raw/ (xml/ + raw_jpg/), a flat DDTI folder, or benign/ + malignant/ folders "
                   "(default: the embedded synthetic phantoms in data/synthetic, generated when missing)")
    t.add_argument("--label-rule", choices=("tirads", "mccnn"), default="tirads",
                   help="DDTI labels are TI-RADS proxies: tirads = 2-3 benign, 4a-5 malignant (default); "
                   "mccnn = 2-3 vs 4c-5")
    t.add_argument("--margin", type=float, default=0.0, help="ROI margin, fraction of the nodule box per side "
                   "(default 0: the paper's tight box)")
    t.add_argument("--out", type=Path, required=True, help="run folder (runs/NAME)")
    t.add_argument("--preset", choices=tuple(PRESETS), default="default",
                   help="paper: the paper's SGD settings at 224 px (hours on a CPU); default: converges on DDTI on "
                   "a CPU in minutes (AdamW, 64 px); quick: 48 px, 8 epochs (default: default)")
    g = t.add_argument_group("model and optimisation (override the preset)")
    g.add_argument("--backbone", choices=available_backbones())
    g.add_argument("--crop", choices=CROP_MODES, help="none (global only), bfc, rfc, image (image multi-crop)")
    g.add_argument("--alpha", type=float, help="crop window side as a fraction of the feature map")
    g.add_argument("--branch-weight", type=float, help="ω of eq. 1: weight of the global branch")
    g.add_argument("--crop-impl", choices=CROP_IMPLS)
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--grad-clip", type=float)
    g.add_argument("--w-malignant", type=float, help="loss weight of malignant samples (paper: 3)")
    g.add_argument("--w-benign", type=float, help="loss weight of benign samples (paper: 2)")
    g.add_argument("--image-size", type=int, help="ROI side in pixels")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="flip/shift/brightness augmentation")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--val-fraction", type=float, help="fraction of training cases held out for validation")
    g.add_argument("--threshold-rule", choices=THRESHOLD_RULES,
                   help="how the decision threshold is chosen on validation predictions")
    e = t.add_argument_group("protocol")
    e.add_argument("--test-fraction", type=float, default=0.25, help="test cases per class (default 0.25: 3:1)")
    e.add_argument("--folds", type=int, default=None, metavar="K",
                   help="k-fold case-level cross-validation instead of one train/test split")
    e.add_argument("--per-case", choices=("mean", "max"), default=None,
                   help="score per case (mean or max of its ROIs' probabilities) instead of per ROI")
    e.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of cases (default 1000)")
    c = t.add_argument_group("comparator systems (PAPERS.md sections 2-4) instead of HFCN")
    c.add_argument("--system", default=None, metavar="NAME",
                   help="train and score a comparator on the same case-level split / folds: mccnn_cascade, "
                   "mccnn_spp, shape_rf, transfer_svm, transfer_rf, transfer_softmax, two_stage (--preset quick "
                   "takes its CPU-minutes setting, any other preset its defaults)")
    c.add_argument("--set", dest="system_set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field of the system's config (VALUE is JSON, else a string), e.g. "
                   "--set det_epochs=20 --set frame_size=[128,192]; --seed and --threads apply too")
    c.add_argument("--weights", type=Path, default=None, metavar="PATH",
                   help="local pretrained state dict (torchvision layout) for the system's trunk, e.g. ImageNet "
                   "ResNet-50 weights saved with torch.save(model.state_dict(), PATH); without it the trunk is "
                   "randomly initialised (nothing is downloaded), and the report says so")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out from its last.pt (only --epochs, --threads, --device "
                   "may change)")
    t.add_argument("--force", action="store_true", help="train into an --out that already holds a run")
    t.add_argument("--json", action="store_true", help="print the metrics as JSON instead of tables")
    t.set_defaults(handler=run_train)

    v = sub.add_parser("eval", help="recompute a run's test metrics from its checkpoints")
    v.add_argument("--run", type=Path, required=True, help="run folder written by `hfcn-bench train`")
    v.add_argument("--data", type=Path, default=None, help="dataset folder (default: the one in the manifest); "
                   "must have the manifest's fingerprint")
    v.add_argument("--checkpoint", choices=("best", "last"), default="best")
    v.add_argument("--per-case", choices=("none", "mean", "max"), default=None,
                   help="ROI-level (none) or per-case scoring (default: as the run was trained)")
    v.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default: the run's)")
    v.add_argument("--device", default="cpu")
    v.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    v.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    v.set_defaults(handler=run_eval)

    p = sub.add_parser("predict", help="P(malignant) per ROI of DDTI case XMLs or images, with a picture of "
                       "the crop windows' probabilities and Grad-CAM")
    p.add_argument("--run", type=Path, required=True, help="run folder written by `hfcn-bench train`")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_XML",
                   help="DDTI case XMLs (every outline; images beside the XML or in ../raw_jpg) or image files "
                   "(the whole image is the ROI)")
    p.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: RUN/predictions)")
    p.add_argument("--fold", type=int, default=None, help="which fold's model, for k-fold runs")
    p.add_argument("--checkpoint", default="best", help="best, last or a checkpoint path (default: best)")
    p.add_argument("--margin", type=float, default=None, help="ROI margin (default: the run's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-png", action="store_true", help="skip the pictures")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(handler=run_predict)


# ---------------------------------------------------------------------------------------------
# rendering


def _fmt(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _ci(report: dict, name: str) -> str:
    c = (report.get("ci") or {}).get(name)
    return "—" if not c else f"[{c['low']:.3f}, {c['high']:.3f}]"


def metrics_tables(report: dict, title: str = "test metrics") -> list[Table]:
    """Rich tables for a :func:`metrics.evaluate`-style report: the metrics with their 95 %
    case-bootstrap intervals beside the majority-class baseline, and the confusion matrix."""
    m = report["metrics"]
    base = report.get("majority_baseline") or {}
    level = report.get("level", "roi")
    size = (f"{report['n_cases']} cases" if level.startswith("case")
            else f"{report['n_samples']} ROIs of {report['n_cases']} cases")
    t = Table(title=f"{title} ({size}; malignant = positive)", title_justify="left")
    t.add_column("metric")
    t.add_column("model", justify="right")
    t.add_column(f"{int(round(100 * report.get('ci_level', 0.95)))}% CI (case bootstrap)", justify="right")
    maj = base.get("majority_class")
    t.add_column("majority baseline" + ("" if maj is None else f" (always {('benign', 'malignant')[maj]})"),
                 justify="right")
    sens = report.get("sens_at_spec") or {}
    rows = [
        ("ROC-AUC", report.get("auc"), _ci(report, "auc"), base.get("auc")),
        ("PR-AUC", report.get("pr_auc"), "", base.get("pr_auc")),
        ("accuracy (eq. 9)", m["accuracy"], _ci(report, "accuracy"), base.get("accuracy")),
        ("precision (eq. 10)", m["precision"], "", base.get("precision")),
        ("recall = sensitivity (eq. 11)", m["recall"], "", base.get("recall")),
        ("F1 (eq. 12)", m["f1"], _ci(report, "f1"), base.get("f1")),
        ("specificity", m["specificity"], "", base.get("specificity")),
        (f"sensitivity at specificity {sens.get('specificity', 0.9):g}", sens.get("sensitivity"), "", None),
    ]
    for name, val, ci, b in rows:
        t.add_row(name, _fmt(val), ci, _fmt(b))
    src = report.get("threshold_source", "")
    t.add_row("decision threshold", _fmt(report["threshold"], 4),
              f"{report.get('threshold_rule', '')} on {src}" if src else report.get("scores", ""), "")
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
        t.add_row(str(f["fold"]), str(f["n_cases"]), _fmt(f["auc"]), _fmt(f["metrics"]["f1"]),
                  _fmt(f["threshold"], 4), str(tr.get("best_epoch", "—")),
                  _fmt((f.get("timings") or {}).get("train_s"), 1))
    s = report["fold_summary"]
    t.add_row("mean ± sd", "", f"{_fmt(s['auc']['mean'])} ± {_fmt(s['auc']['sd'])}",
              f"{_fmt(s['f1']['mean'])} ± {_fmt(s['f1']['sd'])}", "", "", "")
    return t


def _print_report(console, report: dict, title: str) -> None:
    if report.get("kind") == "kfold":
        console.print(_fold_table(report))
        title = f"{title}, pooled out-of-fold"
    for table in metrics_tables(report, title):
        console.print(table)
    data = report.get("data") or {}
    console.print(f"labels: {data.get('label_rule')} rule ({data.get('format')} data at {data.get('root')}, "
                  f"fingerprint {str(data.get('fingerprint', ''))[:12]}…); level: {report.get('level')}",
                  highlight=False, markup=False)
    for msg in report.get("skipped") or []:
        console.print(f"[yellow]skipped:[/yellow] {msg}", highlight=False)


@contextmanager
def _bars(console, enabled: bool = True):
    """Rich progress bars fed by the library's ``progress(kind, done, total, info)`` callback;
    one line per finished epoch."""
    if not enabled:
        yield None
        return
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn())
    with Progress(*cols, console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def task(kind: str, desc: str, total: int) -> int:
            if kind not in tasks:
                tasks[kind] = bar.add_task(desc, total=total)
            return tasks[kind]

        def update(kind: str, done: int, total: int, info: dict) -> None:
            if kind == "load":
                tid = task("load", f"decoding {info.get('what', 'ROIs')}", total)
                bar.update(tid, completed=done, total=total, description=f"decoding {info.get('what', 'ROIs')}")
                if done == total:
                    bar.update(tid, visible=False)
                    tasks.pop("load")
            elif kind == "batch":
                tid = task("batch", "batches", total)
                if done == 1:
                    bar.reset(tid, total=total)
                bar.update(tid, completed=done, description=f"epoch {info.get('epoch')} loss {info.get('loss', 0):.3f}")
            elif kind == "epoch":
                tid = task("epoch", "epochs", total)
                bar.update(tid, completed=done, total=total)
                val = (f"  val loss {info['val_loss']:.4f}  val AUC {_fmt(info.get('val_auc'))}"
                       if "val_loss" in info else "")
                star = "  [green]* best[/green]" if info.get("best") and "val_loss" in info else ""
                bar.console.print(f"epoch {done}/{total}  loss {info['train_loss']:.4f}{val}  "
                                  f"lr {info['lr']:.2e}  {info['seconds']:.1f} s{star}", highlight=False)
                if done == total:
                    bar.reset(tid)
            elif kind == "fold":
                tid = task("fold", "folds", total)
                bar.update(tid, completed=done, total=total)
                bar.console.print(f"[bold]fold {info['fold']}[/bold]: test ROC-AUC {_fmt(info.get('auc'))}, "
                                  f"F1 {_fmt(info.get('f1'))}", highlight=False)
            elif kind == "predict":
                tid = task("predict", "predicting", total)
                bar.update(tid, completed=done, total=total)
                if done == total:
                    bar.update(tid, visible=False)
                    tasks.pop("predict")

        yield update


# ---------------------------------------------------------------------------------------------
# handlers


def _load_data(console, path, label_rule, margin, quiet):
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
        ds = load_dataset(path, label_rule=label_rule, margin=margin)
    if not quiet:
        for w in caught:
            console.print(f"[yellow]warning:[/yellow] {w.message}", highlight=False)
    if len(ds) == 0:
        raise HfcnError(f"no labelled ROI in {path} under rule {label_rule!r}",
                        hint="check the folder with `hfcn-bench data check`")
    return ds


def _overrides(args) -> dict:
    return {field: getattr(args, flag) for flag, field in _CHOICE_FIELDS.items() if getattr(args, flag) is not None}


def run_train(args, console) -> int:
    from ..data import read_manifest, split_train_test, verify_manifest
    from ..evaluate import read_run
    from ..train import TrainConfig, cross_validate, preset_config, train_and_evaluate

    out: Path = args.out
    has_run = (out / "config.json").exists()
    quiet = args.json
    if args.system is not None:
        return run_system_train(args, console, has_run)
    if args.system_set or args.weights is not None:
        raise HfcnError(f"{'--set' if args.system_set else '--weights'} sets a comparator's config and needs "
                        "--system NAME",
                        hint="HFCN's settings have their own flags (see hfcn-bench train --help)")
    if args.resume:
        if not has_run:
            raise HfcnError(f"nothing to resume in {out} (no config.json)", hint="start it without --resume")
        info = read_run(out)
        extra = _overrides(args)
        changed = sorted(k for k in extra if k not in _RESUME_FIELDS and extra[k] != getattr(info.config, k))
        if changed:
            raise HfcnError(f"--resume keeps the run's settings; these options differ: {', '.join(changed)}",
                            hint="only --epochs, --threads and --device may change on resume")
        config = TrainConfig.from_dict({**info.config.to_dict(), **{k: extra[k] for k in _RESUME_FIELDS
                                                                      if k in extra}})
        data = args.data if args.data is not None else Path(info.manifest.data["root"])
        opts = info.manifest.data.get("options") or {}
        ds = _load_data(console, data, info.manifest.label_rule, float(opts.get("margin", 0.0)), quiet)
        manifest = read_manifest(out / "split.json")
        verify_manifest(manifest, ds)
        aggregate = info.header.get("aggregate")
        n_boot = int(info.header.get("n_boot", args.n_boot))
        folds = manifest.params.get("k") if manifest.method == "kfold" else None
        split = manifest.splits[0]
        if not quiet:
            console.print(f"resuming {out}", highlight=False)
    else:
        if has_run and not args.force:
            raise HfcnError(f"{out} already holds a run", hint="--resume to continue it, --force to train over it, "
                            "or choose another --out")
        config = preset_config(args.preset, **_overrides(args))
        ds = _load_data(console, args.data, args.label_rule, args.margin, quiet)
        aggregate, n_boot, folds = args.per_case, args.n_boot, args.folds
        split = None if folds else split_train_test(ds, test_fraction=args.test_fraction, seed=config.seed)
    if not quiet:
        console.print(f"{len(ds)} ROIs from {len(ds.case_labels())} cases ({ds.class_counts()['benign']} benign / "
                      f"{ds.class_counts()['malignant']} malignant ROIs, {ds.label_rule} rule); model "
                      f"{config.backbone}+{config.crop}, preset {config.preset}, {config.image_size} px, "
                      f"{config.epochs} epochs", highlight=False)
    start = time.perf_counter()
    with _bars(console, enabled=not quiet) as progress:
        if folds:
            report = cross_validate(ds, int(folds), config, out_dir=out, progress=progress, resume=args.resume,
                                    n_boot=n_boot, aggregate=aggregate)
        else:
            report = train_and_evaluate(ds, split, config, out_dir=out, progress=progress, resume=args.resume,
                                        n_boot=n_boot, aggregate=aggregate)
    wall = time.perf_counter() - start
    if args.json:
        console.print_json(json.dumps(report))
        return 0
    _print_report(console, report, f"{config.backbone}+{config.crop} on held-out cases")
    ckpts = "fold*/ (best.pt, last.pt, history.json)" if folds else "best.pt, last.pt, history.json"
    console.print(f"run folder: [bold]{out}[/bold] (config.json, split.json, {ckpts}, metrics.json, "
                  f"predictions.csv); wall time {wall:.1f} s", highlight=False)
    console.print(f"next: hfcn-bench eval --run {out}", highlight=False, markup=False)
    return 0


def _system_overrides(args, fields) -> dict:
    """``--set`` pairs, plus ``--threads``/``--seed`` for systems that have those fields and
    ``--weights`` for systems with a pretrained trunk (refused for the others)."""
    out = {}
    for item in args.system_set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise HfcnError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    if args.threads is not None and "threads" in fields:
        out.setdefault("threads", args.threads)
    if args.seed is not None:
        out.setdefault("seed", args.seed)
    if args.weights is not None:
        if "weights" not in fields:
            raise HfcnError(f"--weights: {args.system} has no pretrained trunk to load weights into",
                            hint="systems with a trunk: " + ", ".join(_systems_with("weights")))
        if "weights" in out:
            raise HfcnError("--weights and --set weights=... both given; keep one")
        out["weights"] = str(args.weights)
    return out


def _systems_with(field: str) -> list[str]:
    from ..systems import SYSTEMS

    return sorted(name for name, spec in SYSTEMS.items() if field in spec.config_cls.__dataclass_fields__)


def _system_progress(update, console):
    """``_bars``' callback for a comparator, whose epochs carry other fields than HFCN's:
    ``det_epoch`` (detector AP), ``seg_epoch`` (segmentation Dice), ``epoch`` (classifier AUC):
    one transient bar per stage and one printed line per epoch."""
    stages = {"det_epoch": "detector", "seg_epoch": "segmenter", "epoch": "classifier"}

    def progress(kind, done, total, info):
        if kind not in stages:
            update(kind, done, total, info)
            return
        update("predict", done, total, {})
        items = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()
                          if k != "epoch")
        console.print(f"{stages[kind]} epoch {done}/{total}  {items}", highlight=False)

    return progress


def run_system_train(args, console, has_run: bool) -> int:
    """``hfcn-bench train --system NAME``: a comparator on the split (or folds) HFCN would get."""
    from ..atomic import write_json_atomic
    from ..data import split_train_test, write_manifest
    from ..data.splits import kfold
    from ..systems import SYSTEMS, cross_validate_system, evaluate_system

    if args.system not in SYSTEMS:
        raise HfcnError(f"unknown system {args.system!r}; known systems: {', '.join(sorted(SYSTEMS))}")
    if args.resume:
        raise HfcnError("--resume is for HFCN runs; a comparator run is retrained from the start",
                        hint="drop --resume (add --force to train over the folder)")
    if has_run and not args.force:
        raise HfcnError(f"{args.out} already holds a run", hint="--force to train over it, or choose another --out")
    ignored = sorted(flag for flag in _CHOICE_FIELDS if flag not in ("seed", "threads")
                     and getattr(args, flag) is not None)
    if ignored:
        raise HfcnError(f"--{ignored[0].replace('_', '-')} sets HFCN's training, not {args.system}'s",
                        hint=f"override the system's config with --set KEY=VALUE (its fields: "
                        f"{', '.join(f for f in SYSTEMS[args.system].config_cls.__dataclass_fields__)})")
    quiet = args.json
    seed = args.seed if args.seed is not None else 0
    spec = SYSTEMS[args.system]
    overrides = _system_overrides(args, spec.config_cls.__dataclass_fields__)
    config = {**spec.quick(), **overrides} if args.preset == "quick" else overrides
    ds = _load_data(console, args.data, args.label_rule, args.margin, quiet)
    out: Path = args.out
    if not quiet:
        console.print(f"{len(ds)} ROIs from {len(ds.case_labels())} cases ({ds.class_counts()['benign']} benign / "
                      f"{ds.class_counts()['malignant']} malignant ROIs, {ds.label_rule} rule); system "
                      f"{args.system} ({'quick' if args.preset == 'quick' else 'default'} settings"
                      f"{', ' + ', '.join(f'{k}={v}' for k, v in overrides.items()) if overrides else ''})",
                      highlight=False)
    start = time.perf_counter()
    with _bars(console, enabled=not quiet) as update:
        progress = None if update is None else _system_progress(update, console)
        if args.folds:
            write_manifest(out / "split.json", ds, kfold(ds, k=int(args.folds), seed=seed))
            report = cross_validate_system(args.system, ds, int(args.folds), config=config, n_boot=args.n_boot,
                                           seed=seed, progress=progress)
        else:
            split = split_train_test(ds, test_fraction=args.test_fraction, seed=seed)
            write_manifest(out / "split.json", ds, split)
            report = evaluate_system(args.system, ds, split, config=config, n_boot=args.n_boot, seed=seed,
                                     progress=progress)
    wall = time.perf_counter() - start
    write_json_atomic(out / "config.json", {"system": args.system, "system_config": report["system_config"],
                                            "folds": args.folds, "seed": seed, "n_boot": args.n_boot,
                                            "data": ds.describe()})
    write_json_atomic(out / "metrics.json", report)
    if args.json:
        console.print_json(json.dumps(report))
        return 0
    _print_report(console, report, f"{args.system} on held-out cases")
    for name, v in (report.get("variants") or {}).items():
        for table in metrics_tables(v, f"variant {name}: {v.get('description', '')}")[:1]:
            console.print(table)
    for key in ("detection", "segmentation", "pairing"):
        if isinstance(report.get(key), dict):
            vals = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in report[key].items() if k != "per_fold")
            console.print(f"{key}: {vals}", highlight=False)
    for lim in report.get("limitations") or []:
        console.print(f"[dim]limitation:[/dim] {lim}", highlight=False)
    console.print(f"run folder: [bold]{out}[/bold] (config.json, split.json, metrics.json); wall time {wall:.1f} s",
                  highlight=False)
    return 0


def run_eval(args, console) -> int:
    from ..atomic import write_json_atomic
    from ..evaluate import evaluate_run

    aggregate = "run" if args.per_case is None else (None if args.per_case == "none" else args.per_case)
    with _bars(console, enabled=not args.json) as progress:
        report = evaluate_run(args.run, data=args.data, checkpoint=args.checkpoint, aggregate=aggregate,
                              n_boot=args.n_boot, device=args.device, progress=progress)
    if args.out is not None:
        write_json_atomic(args.out, report)
    if args.json:
        console.print_json(json.dumps(report))
        return 0
    cfg = report["config"]
    _print_report(console, report, f"{cfg['backbone']}+{cfg['crop']} ({args.checkpoint}.pt) on held-out cases")
    stored = report.get("stored_threshold")
    if stored is not None and not isinstance(stored, list) and report.get("level") == "roi" \
            and abs(stored - report["threshold"]) > 1e-6:
        console.print(f"[yellow]note:[/yellow] threshold {report['threshold']:.4f} differs from the one stored at "
                      f"training ({stored:.4f})", highlight=False)
    return 0


def run_predict(args, console) -> int:
    from ..evaluate import predict_files

    ck = args.checkpoint if args.checkpoint in ("best", "last") else Path(args.checkpoint)
    with console.status("predicting..."):
        rows, errors = predict_files(args.run, args.inputs, out_dir=args.out, checkpoint=ck, fold=args.fold,
                                     margin=args.margin, device=args.device, draw=not args.no_png)
    if args.json:
        console.print_json(json.dumps({"rows": rows, "errors": errors}))
    else:
        t = Table(title=f"P(malignant) per ROI (run {args.run})", title_justify="left")
        for c in ("input", "frame", "ROI", "P(mal.)", "global", "crops", "call", "TI-RADS", "picture"):
            t.add_column(c, justify="right" if c in ("frame", "ROI", "P(mal.)", "global", "crops") else "left",
                         overflow="fold")
        for r in rows:
            t.add_row(Path(r["input"]).name, str(r["frame"]), str(r["region"]) + ("" if r["kind"] == "outline"
                                                                                 else f" ({r['kind']})"),
                      f"{r['prob']:.3f}", f"{r['global_prob']:.3f}", _fmt(r["crop_prob"]),
                      f"[red]{r['pred']}[/red]" if r["pred"] == "malignant" else f"[green]{r['pred']}[/green]",
                      r["tirads"] or "", Path(r["png"]).name if r["png"] else "")
        console.print(t)
        if rows:
            pngs = {str(Path(r["png"]).parent) for r in rows if r["png"]}
            console.print(f"decision threshold {rows[0]['threshold']:.4f} (chosen on the run's validation cases)"
                          + (f"; pictures in {', '.join(sorted(pngs))}" if pngs else ""), highlight=False)
        for e in errors:
            console.print(f"[bold red]error:[/bold red] {e}", highlight=False)
    if errors:
        return 1
    if not rows:
        raise HfcnError("no ROI to predict")
    return 0
