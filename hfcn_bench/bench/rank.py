"""One ranked table over finished runs: HFCN runs (``hfcn-bench train``) and comparator runs
(``hfcn-bench train --system``) scored under the same protocol.

A ranking only means something when every run saw the same data, labels and held-out cases,
so :func:`rank_runs` refuses runs whose data fingerprint, label rule or test cases (per fold)
differ, and says which. Rows are sorted by ROC-AUC (the threshold-free score; F1 depends on
each run's chosen threshold), each with its 95 % case-bootstrap interval for AUC and F1;
variants of a comparator (e.g. detected vs annotated ROIs) are rows of their own; the
majority-class baseline closes the table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from ..errors import HfcnError

__all__ = ["load_run", "rank_runs", "localisation", "markdown"]


def load_run(run_dir: str | os.PathLike) -> dict:
    """``{"dir", "report", "splits"}`` of a run folder (its metrics.json and split.json)."""
    from ..data.splits import read_manifest

    d = Path(run_dir)
    path = d / "metrics.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HfcnError(f"{d} holds no finished run (no metrics.json)",
                        hint="rank folders written by `hfcn-bench train` (with or without --system)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HfcnError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(report, dict) or "metrics" not in report or "data" not in report:
        raise HfcnError(f"{path} is not an hfcn-bench metrics report")
    manifest = read_manifest(d / "split.json")
    return {"dir": str(d), "report": report, "splits": [sorted(s.test) for s in manifest.splits],
            "label_rule": manifest.label_rule}


def _name(report: dict) -> str:
    if "system" in report and isinstance(report["system"], dict):
        return report["system"]["name"]
    cfg = report.get("config") or {}
    crop = cfg.get("crop", "?")
    return f"HFCN {cfg.get('backbone', '?')}+{crop}" + (f" a{cfg['alpha']}" if crop in ("bfc", "rfc") else "")


def _threshold_part(protocol: str | None) -> str:
    """The clause of a protocol that says where the decision threshold came from."""
    return next((p for p in (protocol or "").split(", ") if "threshold" in p), "")


def _row(name: str, rep: dict, run: str, note: str | None) -> dict:
    m = rep["metrics"]
    ci = m.get("ci") or {}
    return {"name": name, "threshold": _threshold_part(rep.get("protocol")), "auc": rep.get("auc"), "auc_ci": ci.get("auc"), "f1": m.get("f1"), "f1_ci": ci.get("f1"),
            "accuracy": m.get("accuracy"), "precision": m.get("precision"), "recall": m.get("recall"),
            "specificity": m.get("specificity"), "n_samples": rep.get("n_samples"), "note": note, "run": run}


def localisation(rep: dict) -> str | None:
    """A cascade's localisation quality in one cell: the detector's AP/recall at IoU 0.5 or the
    segmenter's Dice/IoU on the test frames (``None`` for a system that does not localise)."""
    det, seg = rep.get("detection"), rep.get("segmentation")
    if isinstance(det, dict):
        return f"detector AP50 {det['ap50']:.3f}, recall50 {det['recall50']:.3f} ({det['frames']} frames)"
    if isinstance(seg, dict):
        return f"segmenter Dice {seg['dice']:.3f}, IoU {seg['iou']:.3f} ({seg['frames']} frames)"
    return None


def rank_runs(run_dirs: Sequence[str | os.PathLike], variants: bool = True) -> dict:
    """Rank the runs in ``run_dirs``; raises :class:`HfcnError` when they are not comparable.

    Returns ``{"rows": [...], "baseline": {...}, "protocol", "data", "runs"}``; each row has
    ``name``, ``auc``, ``auc_ci`` ([low, high]), ``f1``, ``f1_ci``, ``accuracy``,
    ``precision``, ``recall``, ``specificity``, ``n_samples``, ``threshold`` (where its
    decision threshold came from), ``note`` and ``run``; ``protocol`` is what all runs share."""
    if not run_dirs:
        raise HfcnError("no run folder to rank")
    runs = [load_run(d) for d in run_dirs]
    ref = runs[0]
    for r in runs[1:]:
        a, b = ref["report"]["data"], r["report"]["data"]
        if a.get("fingerprint") != b.get("fingerprint"):
            raise HfcnError(f"{r['dir']} was scored on other data than {ref['dir']} (fingerprint "
                            f"{str(b.get('fingerprint'))[:12]}… vs {str(a.get('fingerprint'))[:12]}…)")
        if r["label_rule"] != ref["label_rule"]:
            raise HfcnError(f"{r['dir']} uses label rule {r['label_rule']!r}, {ref['dir']} {ref['label_rule']!r}")
        if r["splits"] != ref["splits"]:
            raise HfcnError(f"{r['dir']} held out other cases than {ref['dir']}",
                            hint="train every run with the same --folds/--test-fraction and --seed")
        if r["report"].get("level") != ref["report"].get("level"):
            raise HfcnError(f"{r['dir']} is scored per {r['report'].get('level')}, {ref['dir']} per "
                            f"{ref['report'].get('level')}")
    rows = []
    for r in runs:
        rep = r["report"]
        name = _name(rep)
        rows.append(_row(name, rep, r["dir"], localisation(rep)))
        if variants:
            for vname, v in (rep.get("variants") or {}).items():
                rows.append(_row(f"{name}/{vname}", v, r["dir"], v.get("description")))
    names = [row["name"] for row in rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise HfcnError(f"two runs of the same model: {', '.join(dup)}", hint="rank one run per model")
    rows.sort(key=lambda row: (-(row["auc"] if row["auc"] is not None else -1.0), row["name"]))
    base = ref["report"].get("majority_baseline") or {}
    # What all runs share (split, pooling, scoring level); the threshold clause differs by
    # system (validation cases, training out-of-fold scores) and stays with each row.
    parts = [[p for p in (r["report"].get("protocol") or "").split(", ")] for r in runs]
    common = [p for p in parts[0] if all(p in q for q in parts[1:]) and "threshold" not in p]
    return {"rows": rows, "baseline": base, "protocol": ", ".join(common),
            "data": ref["report"]["data"], "label_rule": ref["label_rule"], "runs": [r["dir"] for r in runs]}


def _ci(c) -> str:
    return "" if not c else f"[{c[0]:.3f}, {c[1]:.3f}]"


def _f(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def markdown(result: dict) -> str:
    """The ranking as a Markdown table (with the baseline row and the protocol)."""
    lines = ["| rank | model | ROC-AUC [95% CI] | F1 [95% CI] | accuracy | precision | recall | specificity | "
             "threshold | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(result["rows"], 1):
        lines.append(f"| {i} | {r['name']} | {_f(r['auc'])} {_ci(r['auc_ci'])} | {_f(r['f1'])} {_ci(r['f1_ci'])} | "
                     f"{_f(r['accuracy'])} | {_f(r['precision'])} | {_f(r['recall'])} | {_f(r['specificity'])} | "
                     f"{r['threshold']} | {r['note'] or ''} |")
    b = result["baseline"]
    if b:
        who = ("benign", "malignant")[b.get("majority_class", 1)]
        lines.append(f"| — | always {who} (majority baseline) | {_f(b.get('auc'))} | {_f(b.get('f1'))} | "
                     f"{_f(b.get('accuracy'))} | {_f(b.get('precision'))} | {_f(b.get('recall'))} | "
                     f"{_f(b.get('specificity'))} | | |")
    d = result["data"]
    lines.append("")
    lines.append(f"Protocol: {result['protocol']}; {d.get('samples')} ROIs of {d.get('cases')} cases, "
                 f"{result['label_rule']} labels, data fingerprint {str(d.get('fingerprint'))[:12]}….")
    return "\n".join(lines) + "\n"
