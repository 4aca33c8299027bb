"""``hfcn-bench train``: train any registered system (HFCN by default) on a case-level split or
k-fold cross-validation, score its held-out cases and write the run folder.

One code path for every system (:func:`hfcn_bench.runs.train_run`). A system's settings come
from its preset (``--preset``) and ``--set KEY=VALUE`` (any field of its config dataclass);
HFCN's fields also have their own flags (``--crop bfc``, ``--alpha 0.6``...), generated from
the fields of :class:`hfcn_bench.train.TrainConfig`, so no option is declared twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import typing
from pathlib import Path

from ..errors import HfcnError
from .common import add_near_duplicate_flag, load_data, print_report, progress_bars

__all__ = ["register", "hfcn_flags", "config_from_args"]

# Flags every system shares (applied to the systems whose config has the field).
_SHARED = ("seed", "threads", "weights")


def _choices(meta: dict):
    c = meta.get("choices")
    if c == "backbones":
        from ..models import available_backbones

        return tuple(available_backbones())
    return c


def hfcn_flags() -> list[dataclasses.Field]:
    """The fields of HFCN's config that get a flag of their own (all but the preset name and
    the flags every system shares)."""
    from ..systems.hfcn_training import TrainConfig

    return [f for f in dataclasses.fields(TrainConfig) if f.name not in ("preset",) + _SHARED]


def _add_field_flag(group, f: dataclasses.Field, tp) -> None:
    meta = dict(f.metadata)
    flag = "--" + f.name.replace("_", "-")
    kw = {"dest": f"field_{f.name}", "default": None, "help": meta.get("help")}
    base = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    kind = base[0]
    if kind is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        return
    if kind in (int, float):
        kw["type"] = kind
    choices = _choices(meta)
    if choices:
        kw["choices"] = choices
    else:
        kw["metavar"] = f.name.upper()
    group.add_argument(flag, **kw)


def register(sub) -> None:
    from ..systems import available_systems
    from ..systems.hfcn_training import TrainConfig

    t = sub.add_parser(
        "train",
        help="train HFCN or a comparator system on a case-level split (or k-fold CV) and score the test side",
        description="Train on the training cases (a validation part of them picks the epoch and the decision "
        "threshold), then score the held-out cases: accuracy, precision, recall, F1 (paper eqs. 9-12), "
        "specificity, ROC-AUC, PR-AUC, sensitivity at 90% specificity, case-bootstrap 95% intervals, "
        "calibration and the majority-class baseline. DDTI labels are a TI-RADS proxy, not pathology.",
    )
    t.add_argument(
        "--system",
        default="hfcn",
        metavar="NAME",
        help=f"what to train: {', '.join(available_systems())} (default: hfcn)",
    )
    t.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset: DDTI raw/ (xml/ + raw_jpg/), a flat DDTI folder, or benign/ + malignant/ folders "
        "(default: the embedded synthetic phantoms in data/synthetic, generated when missing), or the "
        "same class folders under train/ and test/ (a dataset's own split, see --split)",
    )
    t.add_argument(
        "--classes",
        default=None,
        metavar="FOLDER=CLASS,...",
        help="folder format: which folders hold which class, e.g. benin=benign,malin=malignant "
        "(default: benign/ and malignant/); recorded in the run folder",
    )
    t.add_argument(
        "--label-rule",
        choices=("tirads", "mccnn"),
        default="tirads",
        help="DDTI labels are TI-RADS proxies: tirads = 2-3 benign, 4a-5 malignant (default); mccnn = 2-3 vs 4c-5",
    )
    t.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="ROI margin, fraction of the nodule box per side (default 0: the paper's tight box)",
    )
    t.add_argument("--out", type=Path, required=True, help="run folder (runs/NAME)")
    t.add_argument(
        "--preset",
        default="default",
        help="the system's named settings: HFCN has paper (the paper's SGD at 224 px; long), cpu (224 px, "
        "12 epochs), default (64 px, 15 epochs), quick (48 px, 8 epochs), smoke (seconds), pretrained (the "
        "recipe for an ImageNet EfficientNet-Lite0: pooled head, slower trunk, strong augmentation, 32 px "
        "context, descriptor heads, flip TTA; 224 px, 12 epochs); every "
        "comparator has default, quick (its CPU-minutes setting) and smoke",
    )
    t.add_argument(
        "--set",
        dest="system_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field of the system's config, e.g. --set n_estimators=500 --set "
        "frame_size=128,192 (fields: hfcn_bench.systems.SYSTEMS[name].config_cls)",
    )
    t.add_argument("--seed", type=int, default=None, help="seed of the system and of the split (default 0)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument(
        "--weights",
        default=None,
        metavar="PATH",
        help="pretrained weights for the system's trunk or backbone: a local state dict (.pt, e.g. "
        "torch.save(model.state_dict(), PATH)), or 'imagenet' for efficientnet_lite0 (shipped in a "
        "package); nothing is downloaded",
    )
    g = t.add_argument_group("HFCN (the fields of its config; for other systems use --set)")
    types = typing.get_type_hints(TrainConfig)
    for f in hfcn_flags():
        _add_field_flag(g, f, types[f.name])
    e = t.add_argument_group("protocol")
    e.add_argument(
        "--split",
        choices=("cases", "given"),
        default="cases",
        help="cases: a case-level split (or --folds K) of all images, both sides of a train/ + test/ "
        "dataset pooled (default); given: train on exactly the dataset's train/ and score exactly its "
        "test/ (the validation cases are carved out of train/ by case)",
    )
    e.add_argument("--test-fraction", type=float, default=0.25, help="test cases per class (default 0.25: 3:1)")
    e.add_argument(
        "--folds",
        type=int,
        default=None,
        metavar="K",
        help="k-fold case-level cross-validation instead of one train/test split",
    )
    e.add_argument(
        "--per-case",
        choices=("mean", "max"),
        default=None,
        help="score per case (mean or max of its ROIs' probabilities) instead of per ROI",
    )
    e.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of cases (default 1000)")
    add_near_duplicate_flag(e, " (recorded in split.json)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out from its checkpoints (only epochs, threads, device "
        "and eval_batch_size may change)",
    )
    t.add_argument("--force", action="store_true", help="train into an --out that already holds a run")
    t.add_argument("--json", action="store_true", help="print the metrics as JSON instead of tables")
    t.set_defaults(handler=run_train)


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise HfcnError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = raw
    return out


def config_from_args(system, preset: str, args, base: dict | None = None):
    """The config of ``system`` from ``preset`` (or the ``base`` field values of a run being
    resumed), the HFCN flags, ``--set`` and the shared flags. A flag for a field the system does
    not have is an error naming it."""
    from ..systems.base import field_types, make_config

    fields = field_types(system.config_cls)
    values = _parse_set(args.system_set)
    for key in values:
        if key not in fields:
            raise HfcnError(
                f"--set {key}=...: {system.name} has no field {key!r}", hint=f"its fields: {', '.join(sorted(fields))}"
            )
    for f in hfcn_flags():
        v = getattr(args, f"field_{f.name}", None)
        if v is None:
            continue
        if system.name != "hfcn":
            raise HfcnError(
                f"--{f.name.replace('_', '-')} sets HFCN's training, not {system.name}'s",
                hint=f"override the system's config with --set KEY=VALUE (its fields: {', '.join(sorted(fields))})",
            )
        if f.name in values:
            raise HfcnError(f"--{f.name.replace('_', '-')} and --set {f.name}=... both given; keep one")
        values[f.name] = v
    for name in _SHARED:
        v = getattr(args, name, None)
        if v is None:
            continue
        if name not in fields:
            if name == "weights":
                from ..systems import SYSTEMS

                have = sorted(n for n, s in SYSTEMS.items() if "weights" in field_types(s.config_cls))
                raise HfcnError(
                    f"--weights: {system.name} has no pretrained trunk to load weights into",
                    hint="systems with a trunk: " + ", ".join(have),
                )
            continue
        if name in values:
            raise HfcnError(f"--{name} and --set {name}=... both given; keep one")
        values[name] = v
    if base is not None:
        return make_config(system.config_cls, {**base, **values})
    return system.configure(preset, values)


def _resume_config(system, run, args):
    from ..engine import RESUMABLE
    from ..systems.base import config_from_dict, config_to_dict

    saved = config_from_dict(system.config_cls, run.config)
    cfg = config_from_args(system, "default", args, base=config_to_dict(saved))
    changed = sorted(
        k for k, v in config_to_dict(cfg).items() if k not in RESUMABLE and v != config_to_dict(saved).get(k)
    )
    if changed:
        raise HfcnError(
            f"--resume keeps the run's settings; these options differ: {', '.join(changed)}",
            hint=f"only {', '.join(RESUMABLE)} may change on resume",
        )
    return cfg


def run_train(args, console) -> int:
    from ..data import given_split, kfold, read_manifest, split_train_test, verify_manifest
    from ..engine import device_of
    from ..protocol import check_reusable, read_run
    from ..protocol.checks import check_folds, check_fraction, check_n_boot, check_seed
    from ..runs import train_run
    from ..systems import get_system

    out: Path = args.out
    quiet = args.json
    check_reusable(out, force=args.force, resume=args.resume)
    # every option before any work (the data's case count checks --folds once it is loaded)
    check_n_boot(args.n_boot)
    check_fraction(args.test_fraction, "--test-fraction")
    if args.seed is not None:
        check_seed(args.seed)
    if args.folds is not None and args.folds < 2:
        raise HfcnError(f"--folds must be at least 2, got {args.folds}", hint="drop --folds for one 3:1 split")
    if args.split == "given" and args.folds is not None:
        raise HfcnError(
            "--split given trains on the dataset's own train/ and scores its test/: --folds does not apply",
            hint="drop --folds, or drop --split given for k-fold CV over all images",
        )
    if args.resume:
        if not (out / "config.json").is_file():
            raise HfcnError(f"nothing to resume in {out} (no config.json)", hint="start it without --resume")
        run = read_run(out)
        if args.system not in ("hfcn", run.system):
            raise HfcnError(f"{out} holds a {run.system} run, not {args.system}")
        system = get_system(run.system)
        config = _resume_config(system, run, args)
        from ..protocol.portable import recorded_root

        data = args.data if args.data is not None else recorded_root(run.manifest.data)
        if data is None:
            raise HfcnError(f"{out}: its manifest records no data folder (a portable record)", hint="pass --data DIR")
        opts = run.manifest.data.get("options") or {}
        classes = args.classes if args.classes is not None else opts.get("classes")
        # linked as the run was (split.json is written again from this load)
        linked = run.manifest.near_duplicates is not None
        ds = load_data(console, data, run.manifest.label_rule, float(opts.get("margin", 0.0)), quiet, classes, linked)
        manifest = read_manifest(out / "split.json")
        verify_manifest(manifest, ds)
        splits = manifest.splits
        protocol = run.header.get("protocol", {})
        aggregate, n_boot = protocol.get("aggregate"), int(protocol.get("n_boot", args.n_boot))
        preset = run.header.get("preset", "default")
        if not quiet:
            console.print(f"resuming {out}", highlight=False)
    else:
        system = get_system(args.system)
        preset = args.preset
        config = config_from_args(system, preset, args)
        check_seed(getattr(config, "seed", 0), "seed")
        if hasattr(config, "device"):
            device_of(config.device)  # before anything is written: a run that cannot start leaves nothing
        ds = load_data(console, args.data, args.label_rule, args.margin, quiet, args.classes, args.near_duplicate_links)
        aggregate, n_boot = args.per_case, args.n_boot
        seed = int(getattr(config, "seed", 0))
        if args.split == "given":
            splits = [given_split(ds, seed=seed)]
        elif args.folds:
            splits = kfold(ds, k=check_folds(args.folds, ds), seed=seed)
        else:
            splits = [split_train_test(ds, test_fraction=args.test_fraction, seed=seed)]
    if not quiet:
        counts = ds.class_counts()
        what = (
            f"model {config.backbone}+{config.crop}, {config.image_size} px, {config.epochs} epochs"
            if system.name == "hfcn"
            else f"system {system.name}"
        )
        console.print(
            f"{len(ds)} ROIs from {len(ds.case_labels())} cases ({counts['benign']} benign / "
            f"{counts['malignant']} malignant ROIs, {ds.label_rule} rule); {what}, preset {preset}",
            highlight=False,
        )
    start = time.perf_counter()
    with progress_bars(console, enabled=not quiet) as progress:
        report = train_run(
            system,
            config,
            ds,
            splits,
            out_dir=out,
            n_boot=n_boot,
            aggregate=aggregate,
            progress=progress,
            resume=args.resume,
            header={"preset": preset},
        )
    wall = time.perf_counter() - start
    if args.json:
        console.print_json(json.dumps(report))
        return 0
    title = (f"{config.backbone}+{config.crop}" if system.name == "hfcn" else system.name) + " on held-out cases"
    print_report(console, report, title)
    console.print(
        f"run folder: [bold]{out}[/bold] (config.json, split.json, fitted models, metrics.json, "
        f"predictions.csv); wall time {wall:.1f} s",
        highlight=False,
    )
    console.print(
        f"next: hfcn-bench eval --run {out}   (or --data OTHER for external validation)", highlight=False, markup=False
    )
    return 0
