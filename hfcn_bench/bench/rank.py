"""One ranked table over finished runs of any system (``hfcn-bench train``), scored under the
same protocol; with external-evaluation reports (``hfcn-bench eval --data OTHER --out DIR``)
each system's internal CV estimate stands beside its external result.

A ranking only means something when every run saw the same data, labels and held-out cases,
so :func:`rank_runs` refuses runs whose data fingerprint, label rule or test cases (per fold)
differ, and says which; external reports must all score the same external set. Rows are
sorted by ROC-AUC (the threshold-free score; F1 depends on each run's chosen threshold) -- the
external AUC when there is one -- each with its 95 % case-bootstrap interval for AUC and F1;
variants of a comparator (e.g. detected vs annotated ROIs) are rows of their own; the
majority-class baseline closes the table.

Two runs of one system with different settings (e.g. ``two_stage`` with a U-Net and with a
TransUNet segmenter) are named by the settings that tell them apart. Without external reports
each row also gets its paired ROC-AUC difference to the top row, on the same out-of-fold ROIs
(paired case bootstrap and DeLong's test, :mod:`hfcn_bench.protocol.paired`), read from each
run's ``predictions.csv``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..atomic import read_json
from ..errors import HfcnError
from ..protocol.paired import paired_difference, run_scores
from ..protocol.scoring import overlap_note

__all__ = [
    "load_run",
    "load_eval",
    "rank_runs",
    "localisation",
    "markdown",
    "run_name",
    "delta_text",
    "unpaired_notes",
]


def _json(path: Path, what: str) -> dict:
    obj = read_json(path, f"no {what} at {path}")
    if not isinstance(obj, dict) or "metrics" not in obj or "data" not in obj:
        raise HfcnError(f"{path} is not an hfcn-bench metrics report")
    return obj


def load_run(run_dir: str | os.PathLike) -> dict:
    """``{"dir", "report", "splits", "label_rule"}`` of a finished run folder. A run that
    stopped before its last epoch is refused, saying where it stopped."""
    from ..protocol import read_run

    d = Path(run_dir)
    run = read_run(d)
    if not (d / "metrics.json").is_file():
        raise HfcnError(
            run.progress_note() or f"{d} holds no finished run (no metrics.json)",
            hint=f"resume it (hfcn-bench train --resume --out {d}) before ranking it",
        )
    report = _json(d / "metrics.json", "metrics report")
    return {
        "dir": str(d),
        "report": report,
        "splits": [sorted(s.test) for s in run.manifest.splits],
        "label_rule": run.manifest.label_rule,
    }


def load_eval(path: str | os.PathLike) -> dict:
    """An external-evaluation report (``eval_report.json``, or the folder holding it)."""
    p = Path(path)
    p = p / "eval_report.json" if p.is_dir() else p
    rep = _json(p, "evaluation report")
    if not rep.get("external"):
        raise HfcnError(
            f"{p} is not an external evaluation (it re-scores the run's own cases)",
            hint="rank takes run folders and reports of `hfcn-bench eval --data OTHER --out DIR`",
        )
    return {"path": str(p), "report": rep}


def _is_eval(path: Path) -> bool:
    return path.name.endswith(".json") or (path / "eval_report.json").is_file()


def run_name(report: dict) -> str:
    """``HFCN paper+bfc a0.6`` for HFCN runs, the system's name otherwise."""
    sysinfo = report.get("system") if isinstance(report.get("system"), dict) else {}
    name = sysinfo.get("name", "hfcn")
    if name != "hfcn":
        return name
    cfg = report.get("config") or {}
    crop = cfg.get("crop", "?")
    out = f"HFCN {cfg.get('backbone', '?')}+{crop}" + (f" a{cfg['alpha']}" if crop in ("bfc", "rfc") else "")
    if crop in ("bfc", "rfc") and cfg.get("branch_weight") not in (None, 0.5):
        out += f" w{cfg['branch_weight']}"
    return out


def _threshold_part(protocol: str | None) -> str:
    """The clause of a protocol that says where the decision threshold came from."""
    return next((p for p in (protocol or "").split(", ") if "threshold" in p), "")


def _row(name: str, rep: dict, run: str, note: str | None, output: str = "main") -> dict:
    m = rep["metrics"]
    ci = m.get("ci") or {}
    return {
        "name": name,
        "threshold": _threshold_part(rep.get("protocol")),
        "auc": rep.get("auc"),
        "auc_ci": ci.get("auc"),
        "f1": m.get("f1"),
        "f1_ci": ci.get("f1"),
        "accuracy": m.get("accuracy"),
        "precision": m.get("precision"),
        "recall": m.get("recall"),
        "specificity": m.get("specificity"),
        "n_samples": rep.get("n_samples"),
        "note": note,
        "run": run,
        "output": output,
    }


def localisation(rep: dict) -> str | None:
    """A cascade's localisation quality in one cell: the detector's AP/recall at IoU 0.5 or the
    segmenter's Dice/IoU on the test frames, naming the segmenter when the report does (``None``
    for a system that does not localise)."""
    det, seg = rep.get("detection"), rep.get("segmentation")
    if isinstance(det, dict):
        return f"detector AP50 {det['ap50']:.3f}, recall50 {det['recall50']:.3f} ({det['frames']:g} frames)"
    if isinstance(seg, dict):
        who = "segmenter" + (f" {seg['segmenter']}" if seg.get("segmenter") else "")
        return f"{who} Dice {seg['dice']:.3f}, IoU {seg['iou']:.3f} ({seg['frames']:g} frames)"
    return None


def _check_comparable(runs: list[dict]) -> None:
    ref = runs[0]
    for r in runs[1:]:
        a, b = ref["report"]["data"], r["report"]["data"]
        if a.get("fingerprint") != b.get("fingerprint"):
            raise HfcnError(
                f"{r['dir']} was scored on other data than {ref['dir']} (fingerprint "
                f"{str(b.get('fingerprint'))[:12]}… vs {str(a.get('fingerprint'))[:12]}…)"
            )
        if r["label_rule"] != ref["label_rule"]:
            raise HfcnError(f"{r['dir']} uses label rule {r['label_rule']!r}, {ref['dir']} {ref['label_rule']!r}")
        if r["splits"] != ref["splits"]:
            raise HfcnError(
                f"{r['dir']} held out other cases than {ref['dir']}",
                hint="train every run with the same --folds/--test-fraction and --seed",
            )
        if r["report"].get("level") != ref["report"].get("level"):
            raise HfcnError(
                f"{r['dir']} is scored per {r['report'].get('level')}, {ref['dir']} per {ref['report'].get('level')}"
            )


def _common_protocol(reports: list[dict]) -> str:
    # What all share (split, pooling, scoring level); the threshold clause differs by system
    # (validation cases, training out-of-fold scores) and stays with each row.
    parts = [[p for p in (r.get("protocol") or "").split(", ")] for r in reports]
    return ", ".join(p for p in parts[0] if all(p in q for q in parts[1:]) and "threshold" not in p)


def rank_runs(paths: Sequence[str | os.PathLike], variants: bool = True, n_boot: int = 1000, seed: int = 0) -> dict:
    """Rank the runs (run folders) and external evaluations (eval reports) in ``paths``;
    raises :class:`HfcnError` when they are not comparable.

    Returns ``{"rows": [...], "baseline": {...}, "protocol", "data", "runs", "external"}``; each
    row has ``name``, ``auc``, ``auc_ci`` ([low, high]), ``f1``, ``f1_ci``, ``accuracy``,
    ``precision``, ``recall``, ``specificity``, ``n_samples``, ``threshold`` (where its
    decision threshold came from), ``note`` and ``run``; with external reports also
    ``internal_auc``, ``internal_auc_ci``, ``internal_f1``, ``internal_f1_ci`` (the run's own
    CV estimate) and ``overlap`` (how many external images are training images of the run,
    scored with ``eval --allow-overlap``; also said in ``note``), and ``external`` describes the
    external set. Without external reports every row below the first has ``paired``: its
    ROC-AUC minus the top row's on the ROIs both scored (``diff``, ``low``, ``high``,
    ``delong_p``, ``n_rois``; ``None`` when a run's predictions cannot be paired, with the
    reason in ``paired_note``); ``n_boot``/``seed``: its bootstrap."""
    if not paths:
        raise HfcnError("no run folder to rank")
    evals = [load_eval(p) for p in paths if _is_eval(Path(p))]
    run_dirs = [p for p in paths if not _is_eval(Path(p))]
    if evals:
        ref = evals[0]["report"]["data"].get("fingerprint")
        for e in evals[1:]:
            if e["report"]["data"].get("fingerprint") != ref:
                raise HfcnError(f"{e['path']} scored another external set than {evals[0]['path']}")
        run_dirs += [e["report"]["run"] for e in evals if e["report"]["run"] not in run_dirs]
    runs = [load_run(d) for d in run_dirs]
    _check_comparable(runs)
    by_dir = {str(Path(r["dir"])): r for r in runs}
    rows = []
    if evals:
        named = dict(zip((str(Path(r["dir"])) for r in runs), _distinct_names(runs)))
        for e in evals:
            rep = e["report"]
            internal = by_dir[str(Path(rep["run"]))]["report"]
            name = named[str(Path(rep["run"]))]
            pairs = [(name, rep, internal, localisation(rep))]
            if variants:
                for vname, v in (rep.get("variants") or {}).items():
                    pairs.append(
                        (f"{name}/{vname}", v, (internal.get("variants") or {}).get(vname, {}), v.get("description"))
                    )
            overlap = overlap_note(rep)  # training images in the external set (--allow-overlap)
            for n, ext, inn, note in pairs:
                row = _row(n, ext, rep["run"], "; ".join(x for x in (overlap, note) if x) or None)
                im = inn.get("metrics") or {}
                ici = im.get("ci") or {}
                row.update(
                    {
                        "overlap": (rep.get("overlap_count") or {}).get("images", len(rep.get("overlap") or [])),
                        "internal_auc": inn.get("auc"),
                        "internal_auc_ci": ici.get("auc"),
                        "internal_f1": im.get("f1"),
                        "internal_f1_ci": ici.get("f1"),
                    }
                )
                rows.append(row)
        base = evals[0]["report"].get("majority_baseline") or {}
        protocol = _common_protocol([e["report"] for e in evals])
        data = evals[0]["report"]["data"]
        external = {
            "data": data,
            "prevalence": evals[0]["report"].get("prevalence"),
            "internal_protocol": _common_protocol([r["report"] for r in runs]),
        }
    else:
        names = _distinct_names(runs)
        for r, name in zip(runs, names):
            rep = r["report"]
            rows.append(_row(name, rep, r["dir"], localisation(rep)))
            if variants:
                for vname, v in (rep.get("variants") or {}).items():
                    rows.append(_row(f"{name}/{vname}", v, r["dir"], v.get("description"), vname))
        base = runs[0]["report"].get("majority_baseline") or {}
        protocol = _common_protocol([r["report"] for r in runs])
        data = runs[0]["report"]["data"]
        external = None
    names = [row["name"] for row in rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise HfcnError(f"two runs of the same model: {', '.join(dup)}", hint="rank one run per model")
    rows.sort(key=lambda row: (-(row["auc"] if row["auc"] is not None else -1.0), row["name"]))
    if external is None:
        _paired_to_top(rows, n_boot, seed, runs[0]["report"].get("level") or "roi")
    return {
        "rows": rows,
        "baseline": base,
        "protocol": protocol,
        "data": data,
        "label_rule": runs[0]["label_rule"],
        "runs": [r["dir"] for r in runs],
        "external": external,
    }


# config fields that say how a run was executed, not what was trained
_EXECUTION_FIELDS = ("threads", "device", "num_workers", "workers", "eval_batch_size", "seg_device")


def _same_value(v):
    """A config value as compared between runs: numbers as floats (0 and 0.0 agree), tuples as
    lists (a default tuple and the JSON list a run recorded agree)."""
    import json

    def norm(x):
        if isinstance(x, bool) or x is None or isinstance(x, str):
            return x
        if isinstance(x, (int, float)):
            return float(x)
        if isinstance(x, (list, tuple)):
            return [norm(y) for y in x]
        if isinstance(x, dict):
            return {str(k): norm(y) for k, y in x.items()}
        return repr(x)

    return json.dumps(norm(v), sort_keys=True)


def _config_with_defaults(report: dict) -> dict:
    """A run's recorded config, with the system's defaults for the fields it predates (a run
    recorded before a field existed was trained with that field's default)."""
    import dataclasses

    from ..systems import get_system

    cfg = dict(report.get("config") or {})
    sysinfo = report.get("system") if isinstance(report.get("system"), dict) else {}
    try:
        cls = get_system(sysinfo.get("name", "hfcn")).config_cls
    except HfcnError:
        return cfg
    for f in dataclasses.fields(cls):
        if f.name not in cfg and f.default is not dataclasses.MISSING:
            cfg[f.name] = f.default
    return cfg


def _distinct_names(runs: list[dict]) -> list[str]:
    """Each run's model name; runs of one model get the config settings that tell them apart
    (``two_stage (segmenter=unet)``). Two runs of one model with the same settings are
    refused: one of them would be ranked twice."""
    base = [run_name(r["report"]) for r in runs]
    out = list(base)
    for name in set(base):
        group = [i for i, b in enumerate(base) if b == name]
        if len(group) < 2:
            continue
        cfgs = [_config_with_defaults(runs[i]["report"]) for i in group]
        keys = sorted({k for c in cfgs for k in c} - set(_EXECUTION_FIELDS))
        differ = [k for k in keys if len({_same_value(c.get(k)) for c in cfgs}) > 1]
        if not differ:
            raise HfcnError(
                f"two runs of the same model with the same settings: {name} "
                f"({', '.join(runs[i]['dir'] for i in group)})",
                hint="rank one run per model and setting",
            )
        for i, c in zip(group, cfgs):
            out[i] = f"{name} (" + ", ".join(f"{k}={c.get(k)}" for k in differ) + ")"
    return out


def _paired_to_top(rows: list[dict], n_boot: int, seed: int, level: str | None = "roi") -> None:
    """Each row's paired ROC-AUC difference to the first row (see :func:`rank_runs`)."""

    def scores(row):
        return run_scores(row["run"], row["output"])

    if not rows:
        return
    if level != "roi":
        # predictions.csv holds one row per ROI; a per-case ranking would be paired on other units
        for row in rows[1:]:
            row["paired"] = None
            row["paired_note"] = f"the ranking is per {level}; the paired difference is computed per ROI only"
        return
    try:
        top = scores(rows[0])
    except HfcnError as exc:
        for row in rows[1:]:
            row["paired"], row["paired_note"] = None, str(exc)
        return
    for row in rows[1:]:
        try:
            row["paired"] = paired_difference(scores(row), top, n_boot, seed)
            row["paired_note"] = None if row["paired"] else "fewer than 4 shared ROIs, or one class only"
        except HfcnError as exc:
            row["paired"], row["paired_note"] = None, str(exc)


def unpaired_notes(result: dict) -> list[str]:
    """Why rows below the top have no paired difference, each reason once."""
    rows = [r for r in result["rows"][1:] if r.get("paired") is None and r.get("paired_note")]
    reasons: dict[str, list[str]] = {}
    for r in rows:
        reasons.setdefault(r["paired_note"], []).append(r["name"])
    return [f"{', '.join(names)}: {why}" for why, names in reasons.items()]


def delta_text(row: dict) -> str:
    d = row.get("paired")
    if d is None:
        return "—"
    p = d.get("delong_p")
    # DeLong's p is undefined for two identical score sets (zero variance of the difference)
    p_text = "—" if p is None or p != p else f"{p:.3f}"
    return f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] (p {p_text})"


def _ci(c) -> str:
    return "" if not c else f"[{c[0]:.3f}, {c[1]:.3f}]"


def _f(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def markdown(result: dict) -> str:
    """The ranking as a Markdown table (with the baseline row and the protocol)."""
    ext = result.get("external")
    if ext:
        lines = [
            "| rank | model | internal CV ROC-AUC [95% CI] | external ROC-AUC [95% CI] | internal F1 | "
            "external F1 [95% CI] | threshold | note |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for i, r in enumerate(result["rows"], 1):
            lines.append(
                f"| {i} | {r['name']} | {_f(r['internal_auc'])} {_ci(r['internal_auc_ci'])} | "
                f"{_f(r['auc'])} {_ci(r['auc_ci'])} | {_f(r['internal_f1'])} | {_f(r['f1'])} {_ci(r['f1_ci'])} "
                f"| {r['threshold']} | {r['note'] or ''} |"
            )
    else:
        lines = [
            "| rank | model | ROC-AUC [95% CI] | ΔAUC vs rank 1, paired [95% CI] (DeLong p) | F1 [95% CI] | "
            "accuracy | precision | recall | specificity | threshold | note |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for i, r in enumerate(result["rows"], 1):
            lines.append(
                f"| {i} | {r['name']} | {_f(r['auc'])} {_ci(r['auc_ci'])} | {delta_text(r) if i > 1 else ''} | "
                f"{_f(r['f1'])} {_ci(r['f1_ci'])} | "
                f"{_f(r['accuracy'])} | {_f(r['precision'])} | {_f(r['recall'])} | {_f(r['specificity'])} | "
                f"{r['threshold']} | {r['note'] or ''} |"
            )
    b = result["baseline"]
    if b:
        who = ("benign", "malignant")[b.get("majority_class", 1)]
        if ext:
            lines.append(
                f"| — | always {who} (majority baseline, external set) | | {_f(b.get('auc'))} | | "
                f"{_f(b.get('f1'))} | | |"
            )
        else:
            lines.append(
                f"| — | always {who} (majority baseline) | {_f(b.get('auc'))} | | {_f(b.get('f1'))} | "
                f"{_f(b.get('accuracy'))} | {_f(b.get('precision'))} | {_f(b.get('recall'))} | "
                f"{_f(b.get('specificity'))} | | |"
            )
    d = result["data"]
    lines.append("")
    notes = unpaired_notes(result) if not ext else []
    if notes:
        lines.append("Not paired: " + "; ".join(notes) + ".")
        lines.append("")
    leaky = [r for r in result["rows"] if r.get("overlap")]
    if leaky:
        lines.append(
            "**Not external for every model:** "
            + "; ".join(f"{r['name']}: {r['overlap']} external image(s) are training images of its run" for r in leaky)
            + " (scored with --allow-overlap; see each row's note)."
        )
        lines.append("")
    rule = result["label_rule"]
    proxy = " (a TI-RADS proxy, not pathology)" if rule in ("tirads", "mccnn") else ""
    if ext:
        p = ext.get("prevalence") or {}
        lines.append(
            f"External set: {d.get('samples')} ROIs of {d.get('cases')} cases, data fingerprint "
            f"{str(d.get('fingerprint'))[:12]}…; {result['protocol']}. Internal estimates: "
            f"{ext['internal_protocol']}. {rule} labels{proxy}; malignant prevalence training "
            f"{_f(p.get('training'))}, external {_f(p.get('external'))}."
        )
    else:
        lines.append(
            f"Protocol: {result['protocol']}; {d.get('samples')} ROIs of {d.get('cases')} cases, "
            f"{rule} labels{proxy}, data fingerprint {str(d.get('fingerprint'))[:12]}…."
        )
    return "\n".join(lines) + "\n"
