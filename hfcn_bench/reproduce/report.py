"""The report of a reproduction grid: the paper's Tables 3 and 4 on the user's data beside the
paper's figures, Table 5 (feature cropping against image cropping, accuracy beside measured
cost), the paired differences BFC - Global, RFC - Global, Image - Global, BFC - Image and
RFC - Image, the spread over training seeds, figures, and what each cell cost.

Each configuration's k cells (folds) are pooled out of fold exactly as a k-fold run is
(:func:`protocol.pool_folds`: scores ``prob - fold threshold``, one case bootstrap). Paired
differences compare two configurations on the *same* ROIs of the same folds: a paired case
bootstrap of ``AUC_a - AUC_b`` (:func:`metrics.paired_auc_difference`) and DeLong's test
(:func:`metrics.delong_test`).

Training noise: cells repeated under other training seeds (``--seeds``; same folds) are pooled
per seed; each row and each paired difference then gets its per-seed values, their mean and SD,
and an interval over both sources of noise: a case bootstrap within each seed on the same case
draws, the draws of all seeds pooled (:func:`metrics.seed_pooled_auc`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .. import metrics as M
from ..atomic import write_json_atomic, write_text_atomic
from ..bench.report import PAPER_TABLE4, environment
from ..protocol import FoldResult, Predictions, pool_folds
from ..protocol.paired import aligned, paired_difference
from ..protocol.portable import DATA_PLACEHOLDER, recorded_root
from .cells import cell_log, cell_seconds
from .grid import ARCH, PAPER_TABLE3
from .record import check_cell

__all__ = ["pooled_config", "build_report", "write_report", "render_markdown"]


def _cell_predictions(cell_dir: Path) -> tuple[Predictions, list[str], float, dict, list]:
    """A finished cell's test predictions (main output), their keys, the ROI threshold, its
    report and its training-side labels (from its manifest)."""
    from ..data.splits import read_manifest

    rows = [
        r
        for r in csv.DictReader(io.StringIO((cell_dir / "predictions.csv").read_text(encoding="utf-8")))
        if r["output"] == "main"
    ]
    report = json.loads((cell_dir / "metrics.json").read_text(encoding="utf-8"))
    pred = Predictions(
        np.asarray([float(r["prob"]) for r in rows]),
        np.asarray([int(r["label"]) for r in rows]),
        np.asarray([r["case_id"] for r in rows], dtype=object),
        [],
    )
    thr = float(rows[0]["threshold"]) if rows else float(report["threshold"])
    y_train, _ = read_manifest(cell_dir / "split.json").training_labels()
    train = [SimpleNamespace(case_id=f"{cell_dir.name}:{i}", label=v) for i, v in enumerate(y_train)]
    return pred, [r["key"] for r in rows], thr, report, train


def pooled_config(cell_dirs: list[Path], seed: int, n_boot: int) -> dict | None:
    """The pooled out-of-fold report of one configuration (``None`` until every fold is done
    and its files check out against its record: a damaged cell is never pooled), plus
    ``_scores`` (key -> pooled score), ``_labels`` and ``_cases`` for paired tests."""
    if not cell_dirs or not all(check_cell(d).status == "done" for d in cell_dirs):
        return None
    folds, keys = [], []
    for i, d in enumerate(cell_dirs):
        pred, k, thr, rep, train = _cell_predictions(d)
        # A cell is a one-split run whose own report is already "pooled" (threshold 0 on its
        # margins): the fold's decision threshold is the one its predictions were held against.
        folds.append(FoldResult(i, pred, thr, train, {**rep, "threshold": thr}))
        keys.extend(k)
    rule = folds[0].report.get("threshold_rule", "youden")
    report = pool_folds(folds, seed=seed, threshold_rule=rule, n_boot=n_boot)
    scores = np.concatenate([f.test.prob - f.report["threshold"] for f in folds])
    labels = np.concatenate([f.test.labels for f in folds])
    cases = np.concatenate([f.test.case_ids for f in folds])
    report["_paired"] = {"keys": keys, "scores": scores, "labels": labels, "cases": cases}
    return report


def _paired(a: dict, b: dict, n_boot: int, seed: int) -> dict | None:
    """The paired ΔAUC of two pooled reports (:func:`pooled_config`'s ``_paired`` scores)."""
    return paired_difference(a["_paired"], b["_paired"], n_boot, seed)


def _aligned(reps: list[dict]):
    """``(labels, cases, [scores of each report])`` on the ROIs every report scored, or None."""
    return aligned([r["_paired"] for r in reps])


def _seed_spread(
    runs: list[tuple[int, dict]], n_boot: int, seed: int, versus: list[tuple[int, dict]] | None = None
) -> dict | None:
    """A row's (or with ``versus``, a paired difference's) values over training seeds with the
    seed-pooled case-bootstrap interval; None with fewer than two finished seeds."""
    if versus is not None:
        other = dict(versus)
        runs = [(s, r) for s, r in runs if s in other]
    if len(runs) < 2:
        return None
    reps = [r for _, r in runs] + ([other[s] for s, _ in runs] if versus is not None else [])
    al = _aligned(reps)
    if al is None:
        return None
    y, cases, scores = al
    n = len(runs)
    entries = list(zip(scores[:n], scores[n:])) if versus is not None else scores
    try:
        out = M.seed_pooled_auc(y, entries, cases, n_boot=n_boot, seed=seed)
    except M.UndefinedMetricError:
        return None
    return {**out, "seeds": [s for s, _ in runs], "n_rois": int(len(y))}


def _metric_row(rep: dict | None) -> dict:
    if rep is None:
        return {"done": False}
    m = rep["metrics"]
    ci = m.get("ci") or {}
    return {
        "done": True,
        "accuracy": m["accuracy"],
        "precision": m["precision"],
        "recall": m["recall"],
        "f1": m["f1"],
        "f1_ci": ci.get("f1"),
        "auc": rep.get("auc"),
        "auc_ci": ci.get("auc"),
        "specificity": m["specificity"],
        "n_rois": rep.get("n_samples"),
        "n_cases": rep.get("n_cases"),
        "majority_f1": (rep.get("majority_baseline") or {}).get("f1"),
        "brier": (rep.get("calibration") or {}).get("brier"),
    }


def _best_epoch(metrics: dict):
    """A cell's best epoch: its one split's training summary (``folds[0]``), or the top-level
    one of an older run."""
    for source in (*(metrics.get("folds") or [])[:1], metrics):
        epoch = (source.get("training") or {}).get("best_epoch")
        if epoch is not None:
            return epoch
    return None


def _comparison(cfg, versus: str) -> str:
    if cfg.crop == "image":
        return f"Image - {versus}"
    name = {"bfc": "BFC", "rfc": "RFC"}[cfg.crop] + (" alone" if cfg.branch_weight == 0 else "")
    return f"{name} (alpha {cfg.alpha:g}) - {versus}"


def build_report(out: Path, cells, results: dict, opts, run_info: dict, measure_costs: bool = True) -> dict:
    """The report dict of a grid (whatever cells are finished). Table 5's costs come from
    ``OUT/costs.json`` or are measured now (``measure_costs``)."""
    from .. import ops

    out = Path(out)
    configs, seeded = {}, {}
    for c in cells:
        if c.seed is None:
            configs.setdefault(c.config.key, (c.config, []))[1].append(out / "cells" / c.key)
        else:
            seeded.setdefault((c.config.key, c.seed), []).append(out / "cells" / c.key)
    pooled = {
        k: pooled_config(sorted(dirs, key=lambda d: d.name), opts.seed, opts.n_boot)
        for k, (cfg, dirs) in configs.items()
    }
    pooled_seeds = {
        ks: pooled_config(sorted(dirs, key=lambda d: d.name), opts.seed, opts.n_boot) for ks, dirs in seeded.items()
    }

    def runs(key: str) -> list[tuple[int, dict]]:
        """(training seed, pooled report) of every finished seed of a configuration."""
        found = [(int(opts.seed), pooled[key])] if pooled.get(key) is not None else []
        return found + sorted((s, r) for (k, s), r in pooled_seeds.items() if k == key and r is not None)

    table3, table4, table5, paired = [], [], [], []
    for key, (cfg, _) in configs.items():
        rep = pooled[key]
        if "3" in cfg.tables:
            alpha = 1.0 if cfg.crop == "none" else cfg.alpha
            paper = PAPER_TABLE3.get(round(alpha, 2)) if cfg.backbone == "paper" else None
            table3.append(
                {
                    "backbone": cfg.backbone,
                    "alpha": alpha,
                    "config": key,
                    **_metric_row(rep),
                    "paper_accuracy": paper[0] if paper else None,
                    "paper_f1": paper[1] if paper else None,
                }
            )
        if "4" in cfg.tables:
            paper = PAPER_TABLE4.get((cfg.crop, cfg.backbone))
            table4.append(
                {
                    "backbone": cfg.backbone,
                    "architecture": ARCH[cfg.crop],
                    "config": key,
                    **_metric_row(rep),
                    **({"paper": list(paper)} if paper else {"paper": None}),
                }
            )
        if "5" in cfg.tables:
            table5.append(
                {
                    "backbone": cfg.backbone,
                    "architecture": ARCH[cfg.crop],
                    "crop": cfg.crop,
                    "config": key,
                    **_metric_row(rep),
                }
            )
    table3.sort(key=lambda r: (r["backbone"], r["alpha"]))
    order = {"Global": 0, "Global + RFC": 1, "Global + BFC": 2, "Global + Image crops": 3}
    table4.sort(key=lambda r: (r["backbone"], order[r["architecture"]]))
    table5.sort(key=lambda r: (r["backbone"], order[r["architecture"]]))
    costs = {}
    if table5:
        from .costs import load_or_measure_costs

        wanted: dict[str, list[str]] = {}
        for r in table5:
            wanted.setdefault(r["backbone"], []).append(r["crop"])
        costs = load_or_measure_costs(out, wanted, opts, measure=measure_costs)
        for r in table5:
            r["cost"] = ((costs.get(r["backbone"]) or {}).get("rows") or {}).get(r["crop"])
    pairs = []  # (config a, config b): AUC_a - AUC_b
    for cfg, _ in configs.values():
        if cfg.crop != "none":
            pairs.append((cfg, configs.get(f"{cfg.backbone}-global", (None,))[0], "Global"))
    for cfg, _ in configs.values():
        if "5" in cfg.tables and cfg.crop in ("bfc", "rfc") and cfg.branch_weight > 0:
            image = next((c for c, _ in configs.values() if c.crop == "image" and c.backbone == cfg.backbone), None)
            pairs.append((cfg, image, "Image"))
    for cfg, ref, versus in pairs:
        if ref is None or pooled.get(cfg.key) is None or pooled.get(ref.key) is None:
            continue
        d = _paired(pooled[cfg.key], pooled[ref.key], opts.n_boot, opts.seed)
        if d is not None:
            spread = _seed_spread(runs(cfg.key), opts.n_boot, opts.seed, versus=runs(ref.key))
            paired.append(
                {
                    "backbone": cfg.backbone,
                    "comparison": _comparison(cfg, versus),
                    "config": cfg.key,
                    "versus": ref.key,
                    "tables": sorted(set(cfg.tables) | set(ref.tables)),
                    **d,
                    **({"seeds": spread} if spread else {}),
                }
            )
    paired.sort(key=lambda r: (r["backbone"], r["comparison"]))
    seeds = []
    for key, (cfg, _) in configs.items():
        spread = _seed_spread(runs(key), opts.n_boot, opts.seed)
        if spread is not None:
            seeds.append({"backbone": cfg.backbone, "architecture": ARCH[cfg.crop], "config": key, **spread})
    seeds.sort(key=lambda r: (r["backbone"], r["config"]))
    cell_rows = []
    for c in cells:
        d = out / "cells" / c.key
        res = results.get(c.key, {})
        # A cell whose result never reached the driver (it finished as the run was stopped) is
        # still finished on disk.
        state = check_cell(d)
        status = res.get("status") or state.status
        if status in ("done", "cached") and state.status != "done":
            status = state.status  # damaged since (or by) its run: the files decide
        row = {"key": c.key, "config": c.config.key, "fold": c.fold, "status": status}
        if status == "damaged":
            row["problem"] = state.problem or res.get("problem")
        if res.get("retries"):
            row["retries"], row["lost"] = res["retries"], res.get("lost", [])
        try:
            host = json.loads((d / "config.json").read_text(encoding="utf-8")).get("host") or {}
        except (OSError, json.JSONDecodeError):
            host = {}
        row["host"] = host.get("gpu") or (
            f"{host['cpu']} ({host['cpu_capability']} kernels)" if host.get("cpu_capability") else host.get("cpu")
        )
        if state.status == "done":
            m = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
            cell_s, resumed = cell_seconds(m)
            row.update({"auc": m.get("auc"), "cell_s": cell_s, "resumed": resumed, "best_epoch": _best_epoch(m)})
        if res.get("status") == "done":
            row["driver_s"] = res.get("driver_s")
            row["run_s"] = res.get("wall_s")
            if res.get("driver_s") is not None and res.get("wall_s"):
                row["engine_overhead_s"] = max(0.0, res["driver_s"] - res["wall_s"])
        if res.get("status") == "error" or (state.status != "done" and (d / "error.json").is_file()):
            try:
                err = res if res.get("status") == "error" else json.loads((d / "error.json").read_text("utf-8"))
            except (OSError, ValueError):
                err = {"error": "error.json unreadable"}
            row.update({"status": "error", "error": err.get("error"), "log": cell_log(c.key)})
        cell_rows.append(row)
    ran = [r for r in cell_rows if r.get("engine_overhead_s") is not None]
    overhead = {
        "mean_s": float(np.mean([r["engine_overhead_s"] for r in ran])) if ran else None,
        "mean_fraction": float(np.mean([r["engine_overhead_s"] / r["run_s"] for r in ran])) if ran else None,
        "cells": len(ran),
    }
    done = [r for r in cell_rows if r.get("cell_s")]
    data = None
    if done:
        data = json.loads((out / "cells" / done[0]["key"] / "metrics.json").read_text(encoding="utf-8"))["data"]
        if recorded_root(data) is not None:  # a cell not converted yet (another run holds the grid)
            data = {**data, "root": DATA_PLACEHOLDER}
    return {
        "format": "hfcn-bench/reproduce-report",
        "version": 1,
        "options": {
            "table": opts.table,
            "preset": opts.preset,
            "differences": _preset_differences(opts.preset),
            "folds": opts.folds,
            "seed": opts.seed,
            "n_boot": opts.n_boot,
            "label_rule": opts.label_rule,
            "data": None if opts.data is None else DATA_PLACEHOLDER,
            "backbones": list(opts.backbones) if opts.backbones else None,
            "alphas": list(opts.alphas) if opts.alphas else None,
            "seeds": sorted({int(opts.seed), *(int(v) for v in getattr(opts, "seeds", ()) or ())}),
            "seed_architectures": (
                list(opts.seed_architectures) if getattr(opts, "seed_architectures", None) else None
            ),
        },
        "data": data,
        "table3": table3,
        "table4": table4,
        "table5": table5,
        "costs": costs,
        "seeds": seeds,
        "paired": paired,
        "cells": cell_rows,
        "summary": {
            "cells": len(cell_rows),
            "done": sum(r["status"] in ("done", "cached") for r in cell_rows),
            "failed": sum(r["status"] == "error" for r in cell_rows),
            "damaged": sum(r["status"] == "damaged" for r in cell_rows),
            "pending": sum(r["status"] == "pending" for r in cell_rows),
            "retried": sum(bool(r.get("retries")) for r in cell_rows),
            "cell_s_total": float(sum(r["cell_s"] for r in done)),
            "cell_s_mean": float(np.mean([r["cell_s"] for r in done])) if done else None,
        },
        "run": {
            **run_info,
            "engine_overhead": overhead,
            # what the engine returned this run (a disk check can see other runs' cells too)
            "cells_run": sum(results.get(c.key, {}).get("status") in ("done", "error") for c in cells),
        },
        "environment": environment(ops.backend(), opts.device, [opts.threads]),
        "notes": [
            "DDTI labels (and the phantoms' TI-RADS values) are a TI-RADS proxy, not pathology.",
            "Paper columns quote Song et al., IEEE Access 8:64064-64074 (2020), Tables 3 and 4, measured on the "
            "authors' mixed public + private data with a 3:1 split: an anchor, not a number to expect here.",
            "Table 3 rows are the BFC branch alone (w = 0), as the paper's alpha = 0.6 row (95.03 %) differs from its "
            "hybrid's (96.13 %); alpha = 1.0 is the Global model.",
            "Each configuration's folds are pooled out of fold (scores = prob - fold threshold); intervals are 95 % "
            "case-bootstrap intervals; paired differences resample cases jointly for both models.",
            "Table 5's costs are measured in this report at the cells' own settings (backbone, input size, batch, "
            "threads, device) on random images: a training step (forward, loss, backward, SGD step) per image, an "
            "inference forward per ROI, and the peak memory of a training step; ratios are to Global, measured side "
            "by side in interleaved rounds.",
            "Spread over seeds: the same folds retrained with other training seeds (weights, batch order, "
            "augmentation, validation cases). The seed-pooled interval bootstraps cases within each seed on the same "
            "case draws and pools the draws of all seeds, so it covers case sampling and training noise together.",
        ],
    }


def _f(v, d=3):
    return "—" if v is None else f"{v:.{d}f}"


def _ci(c):
    return "" if not c else f" [{c[0]:.3f}, {c[1]:.3f}]"


def _pct(v):
    return "—" if v is None else f"{100 * v:.1f}"


def _preset_differences(preset: str) -> list[str]:
    """The recipe elements (issue 22) the grid's preset switches on, as its reports list them."""
    from ..systems.hfcn_training import preset_config, recipe_differences

    return recipe_differences(preset_config(preset))


def render_markdown(rep: dict) -> str:
    o = io.StringIO()
    opts = rep["options"]
    d = rep.get("data") or {}
    o.write(
        "# hfcn-bench reproduce: the paper's Tables 3 and 4 (and Table 5, feature vs image cropping) under "
        "case-level cross-validation\n\n"
    )
    root = recorded_root(d)
    o.write(
        f"Data: {d.get('format')}{f' at `{root}`' if root else ''}, {d.get('samples')} ROIs of {d.get('cases')} cases, "
        f"label rule `{opts['label_rule']}` (a TI-RADS proxy, not pathology), fingerprint "
        f"`{str(d.get('fingerprint'))[:16]}`. Protocol: {opts['folds']}-fold case-level CV (seed {opts['seed']}), "
        f"each configuration pooled out of fold; preset `{opts['preset']}`.\n\n"
    )
    if opts.get("differences"):
        o.write(
            "Differences of the preset from the paper, besides the optimiser: "
            + "; ".join(opts["differences"])
            + ".\n\n"
        )
    run = rep["run"]
    s = rep["summary"]
    ran = run.get("cells_run", 0)
    o.write(
        f"Engine: `{run.get('engine')}` ({run.get('workers')} worker(s) x {run.get('threads')} thread(s)"
        f"{', ' + str(run.get('address')) if run.get('address') else ''}); this run ran {ran} cell(s) in "
        f"{_f(run.get('wall_s'), 1)} s (the others were finished before, failed before or are pending); "
        f"cells {s['done']}/{s['cells']} done, {s['failed']} failed, {s.get('damaged', 0)} damaged, "
        f"{s['pending']} pending.\n\n"
    )
    if s.get("damaged"):
        o.write(
            f"**{s['damaged']} damaged cell(s)**: a file no longer matches the record written when the cell finished "
            "(or is cut, empty or holds a non-finite number). They are left out of the tables below (their "
            "configurations show as not finished) and recomputed by the next run.\n\n"
        )
    if run.get("retries"):
        o.write(
            f"Retries: {run['retries']} resubmission(s) of {s.get('retried', 0)} cell(s) whose Ray task was lost with "
            f"its worker or node (at most {run.get('max_retries')} per cell); each resumed from its checkpoints on "
            "a node still alive (see the cells table).\n\n"
        )
    if rep["table3"]:
        o.write("## Table 3: choice of alpha (BFC branch alone; alpha = 1.0 is Global)\n\n")
        o.write(
            "| backbone | alpha | accuracy % | precision % | recall % | F1 % | ROC-AUC [95% CI] | paper accuracy % | "
            "paper F1 % |\n|---|---|---|---|---|---|---|---|---|\n"
        )
        for r in rep["table3"]:
            if not r["done"]:
                o.write(
                    f"| {r['backbone']} | {r['alpha']:g} | (cells not finished) | | | | | "
                    f"{_f(r['paper_accuracy'], 2)} | {_f(r['paper_f1'], 2)} |\n"
                )
                continue
            o.write(
                f"| {r['backbone']} | {r['alpha']:g} | {_pct(r['accuracy'])} | {_pct(r['precision'])} | "
                f"{_pct(r['recall'])} | {_pct(r['f1'])} | {_f(r['auc'])}{_ci(r['auc_ci'])} | "
                f"{_f(r['paper_accuracy'], 2)} | {_f(r['paper_f1'], 2)} |\n"
            )
        o.write("\n![alpha curve](alpha_curve.png)\n\n")
    if rep["table4"]:
        o.write("## Table 4: architectures x feature extraction networks\n\n")
        o.write(
            "| architecture | backbone | accuracy % | precision % | recall % | F1 % | ROC-AUC [95% CI] | "
            "paper acc / prec / rec / F1 % |\n|---|---|---|---|---|---|---|---|\n"
        )
        for r in rep["table4"]:
            paper = " / ".join(f"{v:.2f}" for v in r["paper"]) if r["paper"] else "— (not in the paper)"
            if not r["done"]:
                o.write(f"| {r['architecture']} | {r['backbone']} | (cells not finished) | | | | | {paper} |\n")
                continue
            o.write(
                f"| {r['architecture']} | {r['backbone']} | {_pct(r['accuracy'])} | {_pct(r['precision'])} | "
                f"{_pct(r['recall'])} | {_pct(r['f1'])} | {_f(r['auc'])}{_ci(r['auc_ci'])} | {paper} |\n"
            )
        o.write("\n")
    if rep.get("table5"):
        _table5(o, rep)
    o.write("## Paired differences in ROC-AUC (same ROIs, same folds)\n\n")
    if rep["paired"]:
        o.write(
            "| backbone | comparison | AUC difference [95% paired case-bootstrap CI] | DeLong z | DeLong p | ROIs | "
            "over seeds: mean ± SD (n) [seed-pooled 95% interval] |\n|---|---|---|---|---|---|---|\n"
        )
        for r in rep["paired"]:
            o.write(
                f"| {r['backbone']} | {r['comparison']} | {r['diff']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | "
                f"{_f(r['delong_z'], 2)} | {_f(r['delong_p'], 3)} | {r['n_rois']} | {_spread(r.get('seeds'), True)} |\n"
            )
        o.write("\n![paired differences](paired_differences.png)\n\n")
    else:
        o.write("(no pair of finished configurations yet)\n\n")
    if rep.get("seeds"):
        o.write(
            "## Training noise: rows retrained under other seeds (same folds)\n\n"
            "| backbone | architecture | configuration | seeds | ROC-AUC per seed | mean ± SD | "
            "seed-pooled 95% interval |\n|---|---|---|---|---|---|---|\n"
        )
        for r in rep["seeds"]:
            o.write(
                f"| {r['backbone']} | {r['architecture']} | {r['config']} | {', '.join(map(str, r['seeds']))} | "
                f"{', '.join(f'{v:.3f}' for v in r['per_seed'])} | {r['mean']:.3f} ± {_f(r['sd'])} | "
                f"[{r['low']:.3f}, {r['high']:.3f}] |\n"
            )
        o.write("\n")
    o.write(
        "## Cells\n\n| cell | status | test ROC-AUC | best epoch | cell s | engine overhead s |\n"
        "|---|---|---|---|---|---|\n"
    )
    for r in rep["cells"]:
        status = r["status"] + (
            f": {r.get('error')} (log: {r.get('log')})"
            if r["status"] == "error"
            else f": {r.get('problem')}"
            if r["status"] == "damaged"
            else " (resumed)"
            if r.get("resumed")
            else ""
        )
        if r.get("retries"):
            status += f"; retried {r['retries']}x after: {'; '.join(r.get('lost') or [])}"
        o.write(
            f"| {r['key']} | {status} | {_f(r.get('auc'))} | {r.get('best_epoch', '—')} | {_f(r.get('cell_s'), 1)} | "
            f"{_f(r.get('engine_overhead_s'), 2)} |\n"
        )
    ov = run.get("engine_overhead") or {}
    resumed = sum(bool(r.get("resumed")) for r in rep["cells"])
    o.write(
        f"\nCell time: {_f(s['cell_s_total'], 0)} s in all, {_f(s['cell_s_mean'], 1)} s per cell"
        + (f" ({resumed} resumed cell(s): their last run plus the epochs earlier runs trained)" if resumed else "")
        + ". Engine overhead "
        f"(a cell's submit-to-result time minus its own run time) this run: {_f(ov.get('mean_s'), 2)} s per cell"
        + (f", {100 * ov['mean_fraction']:.1f} % of a cell" if ov.get("mean_fraction") is not None else "")
        + f" over {ov.get('cells', 0)} cell(s).\n\n"
    )
    hosts: dict = {}
    for r in rep["cells"]:
        if r["status"] in ("done", "cached"):
            h = r.get("host") or "not recorded (written before cells recorded their host)"
            hosts[h] = hosts.get(h, 0) + 1
    if hosts:
        o.write(
            "Where the finished cells ran (their last run): "
            + "; ".join(f"{h}: {n} cell(s)" for h, n in sorted(hosts.items()))
            + ".\n\n"
        )
    env = rep["environment"]
    o.write(
        f"Environment: torch {env['torch']}, extension `{env['extension_backend']}`, device {env['device']}, "
        f"CPU {env['cpu']} ({env['cpu_count']} cores), GPU {env['gpu']}, commit {env['git_commit']}.\n\n"
    )
    for n in rep["notes"]:
        o.write(f"- {n}\n")
    return o.getvalue()


def _spread(sp: dict | None, signed: bool = False) -> str:
    if not sp:
        return "—"
    f = "+.3f" if signed else ".3f"
    return (
        f"{format(sp['mean'], f)} ± {_f(sp['sd'])} ({sp['n_seeds']}) [{format(sp['low'], f)}, {format(sp['high'], f)}]"
    )


def _ratio(v) -> str:
    return "" if v is None else f" ({v:.2f}x)"


def _table5(o, rep: dict) -> None:
    o.write(
        "## Table 5: feature cropping vs image cropping (accuracy beside measured cost)\n\n"
        "Image crops: the five BFC windows of the *image* at alpha 0.6, each resized to the input size and run "
        "through the backbone (six backbone passes per image), fused with the global branch by w as HFCN does. "
        "Costs measured in this report at the cells' settings; (x) = ratio to Global.\n\n"
        "| architecture | backbone | accuracy % | precision % | recall % | F1 % | ROC-AUC [95% CI] | "
        "training s / image | inference ms / ROI | peak training memory MiB |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in rep["table5"]:
        c = r.get("cost") or {}
        cost = (
            f"{_f(c.get('train_per_image_s'), 4)}{_ratio(c.get('train_ratio'))} | "
            f"{_f(None if c.get('infer_per_roi_s') is None else 1000 * c['infer_per_roi_s'], 2)}"
            f"{_ratio(c.get('infer_ratio'))} | {_f(c.get('peak_mib'), 0)}{_ratio(c.get('memory_ratio'))}"
        )
        if not r["done"]:
            o.write(f"| {r['architecture']} | {r['backbone']} | (cells not finished) | | | | | {cost} |\n")
            continue
        o.write(
            f"| {r['architecture']} | {r['backbone']} | {_pct(r['accuracy'])} | {_pct(r['precision'])} | "
            f"{_pct(r['recall'])} | {_pct(r['f1'])} | {_f(r['auc'])}{_ci(r['auc_ci'])} | {cost} |\n"
        )
    settings = [v.get("settings") or {} for v in (rep.get("costs") or {}).values()]
    for st in settings:
        o.write(
            f"\nCost settings ({st.get('backbone')}): batch {st.get('batch')}, {st.get('size')} px, "
            f"{st.get('threads')} thread(s), {st.get('device')}, median of {st.get('repeats')} steps after one "
            f"warm-up, CPU {st.get('cpu')}, torch {st.get('torch')}."
        )
    o.write("\n\n![accuracy against cost](accuracy_cost.png)\n\n")


def write_report(rep: dict, out: Path) -> list[Path]:
    from ..bench import figures

    out = Path(out)
    written = [write_json_atomic(out / "report.json", rep), write_text_atomic(out / "report.md", render_markdown(rep))]
    for bb in sorted({r["backbone"] for r in rep["table3"]}):
        rows = [r for r in rep["table3"] if r["backbone"] == bb and r["done"]]
        if len(rows) >= 2:
            written.append(
                figures.plot_alpha_curve(
                    rows,
                    out / ("alpha_curve.png" if bb == "paper" else f"alpha_curve_{bb}.png"),
                    title=f"Table 3 on this data: {bb} backbone, BFC branch alone",
                )
            )
    if rep["paired"]:
        written.append(figures.plot_differences(rep["paired"], out / "paired_differences.png"))
    points = [r for r in rep.get("table5") or [] if r["done"] and (r.get("cost") or {}).get("train_per_image_s")]
    if points:
        written.append(figures.plot_accuracy_cost(points, out / "accuracy_cost.png"))
    return written
