"""``hfcn-bench recipe``: the ablation of the pretrained-trunk recipe (issue 22), one element at a
time on the same k folds, with the ranked table of paired differences and descriptor-head AUCs
(:mod:`hfcn_bench.reproduce.recipe`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["register"]


def register(sub) -> None:
    from ..reproduce.recipe import FINAL, STEPS

    r = sub.add_parser(
        "recipe",
        help="the recipe ablation: EfficientNet-Lite0 Global plus one element at a time (pooled head and "
        "trunk LR, augmentation, context, descriptor heads, Lite1/Lite2, TTA) on the same folds",
        description="Each step is a k-fold run folder under --work (finished ones are reused, interrupted "
        "ones resume, a failing one is recorded and the rest go on); each finished step's small files go "
        "to --docs/<step>/ (no absolute paths), with the ranked table in --docs/README.md and recipe.json: "
        "pooled out-of-fold ROC-AUC, the paired ΔAUC against the step it extends, the descriptor heads' "
        "AUCs. Steps: " + ", ".join(f"{s.key} ({s.label})" for s in (*STEPS, FINAL)),
    )
    r.add_argument("--data", type=Path, default=None, help="dataset folder (default: HFCN_DDTI_DIR)")
    r.add_argument("--work", type=Path, required=True, help="folder of the steps' run folders (checkpoints)")
    r.add_argument("--docs", type=Path, required=True, help="folder of the small files and the table")
    r.add_argument("--steps", default=None, help="comma-separated step keys to run (default: every step but final)")
    r.add_argument("--final", action="store_true", help="also run the final step: the pretrained preset at its 224 px")
    r.add_argument(
        "--holdout",
        type=Path,
        default=None,
        help="a `data holdout` folder: the final step trains on its development/ cases (k-fold CV) and is "
        "scored on its holdout/ cases",
    )
    r.add_argument("--image-size", type=int, default=160, help="ROI side of the steps (default 160)")
    r.add_argument(
        "--final-size", type=int, default=None, help="ROI side of the final step (default: the preset's 224)"
    )
    r.add_argument("--final-epochs", type=int, default=None, help="epochs of the final step (default: the preset's 12)")
    r.add_argument("--epochs", type=int, default=None, help="epochs of every step (default: the cpu preset's 12)")
    r.add_argument("--folds", type=int, default=5)
    r.add_argument("--seed", type=int, default=0, help="seed of the folds and of every step's training")
    r.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    r.add_argument("--label-rule", choices=("tirads", "mccnn"), default="tirads")
    r.add_argument("--n-boot", type=int, default=1000)
    r.add_argument("--report-only", action="store_true", help="rebuild the table from --docs; run nothing")
    r.add_argument("--json", action="store_true", help="print the table as JSON")
    r.set_defaults(handler=run_recipe_cmd)


def run_recipe_cmd(args, console) -> int:
    import os

    from ..errors import HfcnError
    from ..reproduce.recipe import render_table, run_recipe

    data = args.data
    if data is None and not args.report_only:
        env = os.environ.get("HFCN_DDTI_DIR")
        if not env:
            raise HfcnError("no dataset given", hint="--data DIR, or set HFCN_DDTI_DIR")
        data = Path(env)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        if not args.json:
            console.print(f"[dim]{time.perf_counter() - t0:7.0f} s[/dim] {msg}", highlight=False)

    steps = tuple(s.strip() for s in args.steps.split(",") if s.strip()) if args.steps else None
    table = run_recipe(
        data,
        args.work,
        args.docs,
        steps=steps,
        final=args.final,
        holdout=args.holdout,
        image_size=args.image_size,
        epochs=args.epochs,
        folds=args.folds,
        seed=args.seed,
        threads=args.threads,
        n_boot=args.n_boot,
        label_rule=args.label_rule,
        report_only=args.report_only,
        final_size=args.final_size,
        final_epochs=args.final_epochs,
        log=log,
    )
    if args.json:
        console.print_json(json.dumps(table))
    else:
        console.print(render_table(table), markup=False, highlight=False)
        console.print(f"table: {args.docs / 'README.md'}", highlight=False)
    failed = [k for k, v in (table.get("this_run") or {}).items() if v.get("status") == "error"]
    return 1 if failed else 0
