"""The recipe ablation (issue 22): from EfficientNet-Lite0 Global as the paper trains it, add one
element of the pretrained-trunk recipe at a time, each step at k-fold case-level CV on the
same folds, and rank the steps with each one's paired difference to the step it extends.

Each step is an ordinary HFCN run folder under the work folder (``WORK/<key>/``): a finished
step is reused, an interrupted one resumes from its checkpoints, a failing one is recorded and
the others go on. Each finished step's small files (``config.json``, ``split.json``,
``metrics.json``, ``predictions.csv``; data paths replaced by ``<data>``) are copied to the
results folder (``DOCS/<key>/``), and ``DOCS/README.md`` / ``recipe.json`` hold the ranked
table: pooled out-of-fold ROC-AUC with its case-bootstrap interval, the paired ΔAUC against
the parent step on the same ROIs (paired case bootstrap, DeLong's p), the descriptor heads'
AUCs, and each step's wall time.

The steps run at a size the CPU affords (``image_size``, default 160 px); the ``final`` step
is the ``pretrained`` preset as it stands (224 px, Global), and with a ``holdout`` folder
(``hfcn-bench data holdout``) it is trained on its development part and scored on the
held-back part: internal CV beside external.
"""

from __future__ import annotations

import io
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write, write_json_atomic
from ..errors import HfcnError
from ..protocol.paired import run_scores
from ..protocol.runfolder import read_run
from .runner import check_record, load_trainable

__all__ = ["Step", "STEPS", "FINAL", "step_config", "run_recipe", "recipe_table", "render_table", "export_run"]


@dataclass(frozen=True)
class Step:
    """One configuration of the ablation: ``sets`` are the HFCN fields it changes on top of its
    ``parent`` step (the base step's on top of the ``cpu`` preset)."""

    key: str
    label: str
    parent: str | None
    sets: dict = field(default_factory=dict)


# Table 4's EfficientNet-Lite0 Global row is the start: the paper's flatten head on a pretrained
# trunk, trained as the cpu preset trains every grid cell.
STEPS: tuple[Step, ...] = (
    Step(
        "base",
        "EfficientNet-Lite0 (ImageNet) Global, flatten head (preset cpu: Table 4's row)",
        None,
        {"backbone": "efficientnet_lite0", "weights": "imagenet", "crop": "none"},
    ),
    Step(
        "pooled",
        "+ pooled head, trunk at 0.1 x lr (head lr 1e-3), 1-epoch warmup",
        "base",
        {"head": "pooled", "lr": 1e-3, "trunk_lr_scale": 0.1, "warmup_epochs": 1.0},
    ),
    Step("augment", "+ strong augmentation (rotation, scale, contrast)", "pooled", {"augment_policy": "strong"}),
    Step("context-10", "+ 10% context around the box", "augment", {"roi_context": "10%"}),
    Step("context-20", "+ 20% context around the box", "augment", {"roi_context": "20%"}),
    Step("context-32px", "+ 32 px context around the box (Buda et al.)", "augment", {"roi_context": "32px"}),
    Step("descriptors", "+ TI-RADS descriptor heads (weight 0.5)", "context-32px", {"aux_descriptors": 0.5}),
    Step("lite1", "EfficientNet-Lite1 trunk", "descriptors", {"backbone": "efficientnet_lite1"}),
    Step("lite2", "EfficientNet-Lite2 trunk", "descriptors", {"backbone": "efficientnet_lite2"}),
    Step("tta", "+ flip test-time augmentation", "descriptors", {"tta_flip": True}),
)
FINAL = Step("final", "the pretrained preset (224 px unless --final-size), Global", None, {"crop": "none"})
_BY_KEY = {s.key: s for s in STEPS}


def _chain(step: Step) -> list[Step]:
    out = []
    while step is not None:
        out.append(step)
        step = _BY_KEY.get(step.parent) if step.parent else None
    return out[::-1]


def step_config(
    step: Step,
    *,
    image_size: int,
    epochs: int | None,
    threads: int,
    seed: int,
    final_size: int | None = None,
    final_epochs: int | None = None,
):
    """The HFCN config of ``step``: the ``cpu`` preset, the sets of every step from the base to
    this one, then the ablation's size, epochs and threads (``final``: the ``pretrained``
    preset, Global, at its own size and epochs unless ``final_size``/``final_epochs``)."""
    from ..systems import get_system

    system = get_system("hfcn")
    if step.key == FINAL.key:
        values = {**FINAL.sets, "threads": threads}
        if final_size is not None:
            values["image_size"] = final_size
        if final_epochs is not None:
            values["epochs"] = final_epochs
        return system.configure("pretrained", values, seed=seed)
    values: dict = {}
    for s in _chain(step):
        values.update(s.sets)
    values.update({"image_size": image_size, "threads": threads})
    if epochs is not None:
        values["epochs"] = epochs
    return system.configure("cpu", values, seed=seed)


def _select(keys: tuple[str, ...] | None, final: bool) -> list[Step]:
    if keys is None:
        steps = list(STEPS)
    else:
        unknown = [k for k in keys if k not in _BY_KEY and k != FINAL.key]
        if unknown:
            raise HfcnError(
                f"unknown recipe step(s) {', '.join(unknown)}",
                hint=f"steps: {', '.join([s.key for s in STEPS] + [FINAL.key])}",
            )
        steps = [s for s in STEPS if s.key in keys]
        final = final or FINAL.key in keys
    return steps + ([FINAL] if final else [])


# ---------------------------------------------------------------------------------------------
# small files


_SMALL = ("config.json", "split.json", "metrics.json", "predictions.csv")


def export_run(run_dir: Path, dest: Path, data_root: Path, extra: dict[str, Path] | None = None) -> list[Path]:
    """Copy a run's small files to ``dest`` with the data folder written ``<data>`` and the run
    folder ``<run>``: results kept in the repository hold no absolute path. ``extra`` maps a
    destination name to another file to copy the same way (an external report)."""
    dest.mkdir(parents=True, exist_ok=True)
    roots = [(str(Path(data_root).resolve()), "<data>"), (str(Path(data_root)), "<data>")]
    roots += [(str(Path(run_dir).resolve()), "<run>"), (str(Path(run_dir)), "<run>")]
    files = {name: Path(run_dir) / name for name in _SMALL}
    files.update(extra or {})
    out = []
    for name, src in files.items():
        if not src.is_file():
            continue
        text = src.read_text(encoding="utf-8")
        for root, alias in sorted(roots, key=lambda r: -len(r[0])):
            text = text.replace(root, alias)
        data = text.encode("utf-8")
        atomic_write(dest / name, lambda fh, data=data: fh.write(data))
        out.append(dest / name)
    return out


# ---------------------------------------------------------------------------------------------
# running


def _record(ds, folds: int, seed: int, image_size: int, epochs: int | None, label_rule: str) -> dict:
    return {
        "format": "hfcn-bench/recipe",
        "version": 1,
        "data_fingerprint": ds.fingerprint,
        "label_rule": label_rule,
        "folds": int(folds),
        "seed": int(seed),
        "image_size": int(image_size),
        "epochs": epochs,
    }


def _step_done(run_dir: Path) -> bool:
    """Whether a step's run folder holds a finished run. A step is a k-fold run folder, not a
    grid cell (no cell record): its header, split and fitted records are checked by
    :func:`read_run` (a damaged or edited one is an error naming the file, never retrained
    over in silence)."""
    try:
        header = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # never started, or cut off before its header was whole: train (or resume) it
    if not isinstance(header, dict) or header.get("status") != "finished":
        return False
    return read_run(run_dir).finished and (run_dir / "metrics.json").is_file()


def _run_step(step: Step, cfg, ds, splits, run_dir: Path, n_boot: int, log: Callable[[str], None]) -> dict:
    from ..runs import train_run
    from ..systems import get_system

    if _step_done(run_dir):
        return {"status": "cached", "wall_s": 0.0}
    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = any(run_dir.glob("**/*.pt"))
    log(f"{step.key}: {'resuming' if resume else 'starting'} ({step.label})")

    def progress(kind, done, total, info):
        if kind == "epoch":
            log(f"{step.key}: epoch {done}/{total} loss {info.get('train_loss', 0):.4f} val_auc {info.get('val_auc')}")
        elif kind == "fold":
            log(f"{step.key}: fold {done}/{total} ROC-AUC {info.get('auc')}")

    train_run(
        get_system("hfcn"),
        cfg,
        ds,
        splits,
        out_dir=run_dir,
        n_boot=n_boot,
        progress=progress,
        resume=resume,
        keep_last=False,
        header={"preset": cfg.preset, "recipe": {"step": step.key, "parent": step.parent, "label": step.label}},
    )
    return {"status": "done", "wall_s": time.perf_counter() - t0}


def run_recipe(
    data: str | Path,
    work: str | Path,
    docs: str | Path,
    *,
    steps: tuple[str, ...] | None = None,
    final: bool = False,
    holdout: str | Path | None = None,
    image_size: int = 160,
    epochs: int | None = None,
    folds: int = 5,
    seed: int = 0,
    threads: int = 1,
    n_boot: int = 1000,
    label_rule: str = "tirads",
    report_only: bool = False,
    final_size: int | None = None,
    final_epochs: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run (or reuse) the selected steps and write the ranked table; returns it (see the module
    docstring). ``holdout``: a ``data holdout`` folder (``development/`` + ``holdout/``) for the
    final step's external check. ``report_only``: run nothing, rebuild the table from ``docs``."""
    log = log or (lambda msg: None)
    work, docs = Path(work), Path(docs)
    if folds < 2:
        raise HfcnError(f"--folds must be at least 2, got {folds}")
    if image_size < 32:
        raise HfcnError(f"--image-size must be at least 32, got {image_size}")
    chosen = _select(steps, final)
    results: dict[str, dict] = {}
    if not report_only:
        ds = load_trainable(Path(data), label_rule)
        from ..data import kfold

        record = _record(ds, folds, seed, image_size, epochs, label_rule)
        keys = ("data_fingerprint", "label_rule", "folds", "seed", "image_size", "epochs")
        check_record(docs / "recipe-protocol.json", record, keys, "an ablation", "--docs")
        splits = kfold(ds, k=folds, seed=seed)
        docs.mkdir(parents=True, exist_ok=True)
        write_json_atomic(docs / "recipe-protocol.json", record)
        for step in chosen:
            if step.key == FINAL.key:
                continue
            results[step.key] = _guarded(
                step, ds, splits, work, docs, Path(data), n_boot, log, image_size, epochs, threads, seed
            )
        if any(s.key == FINAL.key for s in chosen):
            cfg = step_config(
                FINAL,
                image_size=image_size,
                epochs=epochs,
                threads=threads,
                seed=seed,
                final_size=final_size,
                final_epochs=final_epochs,
            )
            results[FINAL.key] = _run_final(Path(data), holdout, work, docs, cfg, folds, seed, n_boot, label_rule, log)
    table = recipe_table(docs, n_boot=n_boot, seed=seed)
    table["this_run"] = results
    write_json_atomic(docs / "recipe.json", table)
    atomic_write(docs / "README.md", lambda fh: fh.write(render_table(table).encode("utf-8")))
    return table


def _guarded(step, ds, splits, work, docs, data, n_boot, log, image_size, epochs, threads, seed) -> dict:
    """One step, its failure recorded (``DOCS/<key>/error.json`` and the log) instead of ending
    the ablation."""
    try:
        cfg = step_config(step, image_size=image_size, epochs=epochs, threads=threads, seed=seed)
        res = _run_step(step, cfg, ds, splits, work / step.key, n_boot, log)
        export_run(work / step.key, docs / step.key, data)
        (docs / step.key / "error.json").unlink(missing_ok=True)
        return res
    except KeyboardInterrupt:
        log(f"{step.key}: interrupted; the next run resumes it from its checkpoints")
        raise
    except Exception as exc:  # noqa: BLE001 - one failing step is recorded, the ablation goes on
        msg = f"{type(exc).__name__}: {exc}"
        log(f"{step.key}: failed: {msg}\n{traceback.format_exc()}")
        write_json_atomic(docs / step.key / "error.json", {"step": step.key, "error": msg})
        return {"status": "error", "error": msg}


def _run_final(data, holdout, work, docs, cfg, folds, seed, n_boot, label_rule, log) -> dict:
    """The pretrained preset at its own size: on ``holdout/development`` with k-fold CV and then
    scored on ``holdout/holdout`` when a holdout folder is given, else on ``data``."""
    from ..bench.report import write_eval_report
    from ..data import kfold
    from ..runs import evaluate_run

    step = FINAL
    try:
        dev = Path(holdout) / "development" if holdout is not None else Path(data)
        held = Path(holdout) / "holdout" if holdout is not None else None
        for p in (dev, held):
            if p is not None and not p.is_dir():
                raise HfcnError(f"{p} does not exist", hint="write it with `hfcn-bench data holdout DATA --out DIR`")
        ds = load_trainable(dev, label_rule)
        run_dir = work / step.key
        res = _run_step(step, cfg, ds, kfold(ds, k=folds, seed=seed), run_dir, n_boot, log)
        extra = {}
        if held is not None:
            ext = run_dir / "external-holdout"
            if not (ext / "eval_report.json").is_file():
                log("final: scoring the held-back cases")
                write_eval_report(evaluate_run(run_dir, data=held, n_boot=n_boot), ext)
            extra = {"eval_report.json": ext / "eval_report.json"}
        export_run(run_dir, docs / step.key, dev, extra)
        if held is not None:
            # the external report names the held-back folder: written <holdout>
            path = docs / step.key / "eval_report.json"
            text = path.read_text(encoding="utf-8")
            for root in (str(held.resolve()), str(held)):
                text = text.replace(root, "<holdout>")
            path.write_text(text, encoding="utf-8")
        (docs / step.key / "error.json").unlink(missing_ok=True)
        return res
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded, as a failing step
        msg = f"{type(exc).__name__}: {exc}"
        log(f"final: failed: {msg}\n{traceback.format_exc()}")
        write_json_atomic(docs / step.key / "error.json", {"step": step.key, "error": msg})
        return {"status": "error", "error": msg}


# ---------------------------------------------------------------------------------------------
# the table


def _head_aucs(metrics: dict) -> dict:
    desc = metrics.get("descriptors") or {}
    out = {name: h.get("auc") for name, h in desc.items()}
    micro = ((desc.get("calcifications") or {}).get("per_class") or {}).get("micro")
    if micro is not None:
        out["micro"] = {k: micro.get(k) for k in ("auc", "low", "high")}
    return out


def recipe_table(docs: str | Path, n_boot: int = 1000, seed: int = 0) -> dict:
    """The ranked table over the steps finished in ``docs`` (their exported small files)."""
    from .report import _paired

    docs = Path(docs)
    rows = []
    paired: dict[str, dict] = {}
    for step in (*STEPS, FINAL):
        d = docs / step.key
        row = {"key": step.key, "label": step.label, "parent": step.parent, "done": False}
        if (d / "error.json").is_file():
            row["error"] = json.loads((d / "error.json").read_text(encoding="utf-8")).get("error")
        if not (d / "metrics.json").is_file():
            rows.append(row)
            continue
        m = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
        cfg = m.get("config") or {}
        ci = (m.get("ci") or {}).get("auc") or {}
        row.update(
            {
                "done": True,
                "auc": m.get("auc"),
                "auc_low": ci.get("low"),
                "auc_high": ci.get("high"),
                "f1": (m.get("metrics") or {}).get("f1"),
                "n_rois": m.get("n_samples"),
                "n_cases": m.get("n_cases"),
                "image_size": cfg.get("image_size"),
                "epochs": cfg.get("epochs"),
                "backbone": cfg.get("backbone"),
                "wall_s": (m.get("timings") or {}).get("total_s"),
                "heads": _head_aucs(m),
                "differences": m.get("limitations") or [],
            }
        )
        try:
            paired[step.key] = {"_paired": run_scores(d)}
        except HfcnError as exc:  # ranked, but not paired with its parent or children
            row["paired_note"] = str(exc)
        ext = d / "eval_report.json"
        if ext.is_file():
            e = json.loads(ext.read_text(encoding="utf-8"))
            eci = (e.get("ci") or {}).get("auc") or {}
            row["external"] = {"auc": e.get("auc"), "low": eci.get("low"), "high": eci.get("high")}
        rows.append(row)
    for row in rows:
        if row["done"] and row["parent"] in paired:
            row["delta"] = _paired(paired[row["key"]], paired[row["parent"]], n_boot, seed)
    ranked = sorted((r for r in rows if r["done"]), key=lambda r: -(r["auc"] if r["auc"] is not None else -1))
    for i, r in enumerate(ranked, start=1):
        r["rank"] = i
    protocol = docs / "recipe-protocol.json"
    return {
        "format": "hfcn-bench/recipe-table",
        "version": 1,
        "protocol": json.loads(protocol.read_text(encoding="utf-8")) if protocol.is_file() else None,
        "rows": rows,
    }


def _f(v, d=3) -> str:
    return "—" if v is None else f"{v:.{d}f}"


def render_table(table: dict) -> str:
    """The table as Markdown, ranked by pooled out-of-fold ROC-AUC; pending steps listed after."""
    p = table.get("protocol") or {}
    o = io.StringIO()
    o.write("# The recipe ablation on DDTI (hfcn-bench recipe)\n\n")
    o.write(
        f"Labels: `{p.get('label_rule', '?')}` rule, a TI-RADS proxy, not pathology. Protocol: "
        f"{p.get('folds', '?')}-fold case-level CV, the same folds for every step (seed {p.get('seed', '?')}), "
        "pooled out of fold, scored per ROI, 95% intervals resampled by case. Steps at "
        f"{p.get('image_size', '?')} px"
        + (f", {p['epochs']} epochs" if p.get("epochs") else ", the cpu preset's 12 epochs")
        + "; `final` is the `pretrained` preset at its own 224 px. Each ΔAUC is the step minus its parent on "
        "the same ROIs (paired case bootstrap; DeLong's p). Heads: the descriptor heads' mean one-vs-rest "
        "AUC on held-out cases (calcifications: micro vs the rest, with its interval).\n\n"
    )
    o.write(
        "| rank | step | extends | ROC-AUC [95% CI] | ΔAUC vs parent [95% CI] (p) | external AUC | "
        "composition / echogenicity / margins / calcifications heads | micro AUC | size, epochs | wall |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    done = sorted((r for r in table["rows"] if r["done"]), key=lambda r: r["rank"])
    for r in done:
        d = r.get("delta")
        delta = "—" if not d else f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] (p {d['delong_p']:.2f})"
        h = r.get("heads") or {}
        heads = " / ".join(_f(h.get(n)) for n in ("composition", "echogenicity", "margins", "calcifications"))
        mi = h.get("micro") or {}
        micro = (
            "—"
            if mi.get("auc") is None
            else f"{mi['auc']:.3f}" + (f" [{mi['low']:.3f}, {mi['high']:.3f}]" if mi.get("low") is not None else "")
        )
        ext = r.get("external")
        ext_s = "—" if not ext else f"{_f(ext['auc'])} [{_f(ext['low'])}, {_f(ext['high'])}]"
        w = r["wall_s"]
        wall = "—" if w is None else f"{w:.0f} s" if w < 120 else f"{w / 60:.0f} min"
        o.write(
            f"| {r['rank']} | `{r['key']}`: {r['label']} | {r['parent'] or '—'} | {_f(r['auc'])} "
            f"[{_f(r['auc_low'])}, {_f(r['auc_high'])}] | {delta} | {ext_s} | "
            f"{heads if h else '—'} | {micro} | {r['image_size']} px, {r['epochs']} | "
            f"{wall} |\n"
        )
    pending = [r for r in table["rows"] if not r["done"]]
    if pending:
        o.write("\nNot measured yet" + (":\n\n" if pending else "\n"))
        for r in pending:
            why = f" (failed: {r['error']})" if r.get("error") else ""
            o.write(f"- `{r['key']}`: {r['label']}{why}\n")
    epochs = f" --epochs {p['epochs']}" if p.get("epochs") else ""
    o.write(
        "\nReproduce (resumes finished steps): `hfcn-bench recipe --data $HFCN_DDTI_DIR --work runs/ddti-recipe "
        f"--docs docs/results/ddti-recipe --image-size {p.get('image_size', 160)}{epochs}`; add "
        "`--final --holdout DIR` (from `hfcn-bench data holdout`) for the final step and its external check.\n"
    )
    return o.getvalue()
