"""The model card of a run (after Mitchell et al., "Model Cards for Model Reporting", FAT* 2019):
what the model is, what it was trained on (with the data's fingerprint), what its labels mean,
how well it did on held-out cases with intervals beside the majority-class baseline, how it did
on the external sets it was validated on, what it cannot do, and that it is not a medical device.

Everything comes from the run folder itself: ``config.json`` (system, configuration, data
provenance), ``split.json`` (the label rule), ``metrics.json`` (the held-out report) and
``external/<fingerprint12>/eval_report.json`` (each ``hfcn-bench eval --data OTHER``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import HfcnError
from ..protocol.scoring import overlap_note

__all__ = ["NOTICE", "LABEL_CAVEAT", "model_card", "card_markdown"]

NOTICE = (
    "Research use only. This is not a medical device: it is not cleared or approved for clinical use, "
    "and its output must not guide the care of a patient."
)
LABEL_CAVEAT = (
    "DDTI has no pathology: its labels are a proxy computed from the radiologists' TI-RADS category, so "
    "every probability and metric here measures agreement with TI-RADS, not with a biopsy."
)
RULES = {
    "tirads": "TI-RADS 2-3 benign, 4a-5 malignant",
    "mccnn": "TI-RADS 2-3 benign, 4c-5 malignant (4a/4b left out)",
    "folder": "the benign/ and malignant/ folders the images were sorted into",
}


def _ci(report: dict, key: str) -> list[float] | None:
    c = (report.get("ci") or {}).get(key)
    if not isinstance(c, dict) or c.get("low") is None:
        return None
    return [float(c["low"]), float(c["high"])]


def _scores(report: dict) -> dict:
    """The headline numbers of a scored report, with their case-bootstrap intervals."""
    m = report.get("metrics") or {}
    base = report.get("majority_baseline") or {}
    cal = report.get("calibration") or {}
    return {
        "level": report.get("level"),
        "n_rois": report.get("n_samples"),
        "n_cases": report.get("n_cases"),
        "protocol": report.get("protocol"),
        "threshold": report.get("threshold"),
        "auc": report.get("auc"),
        "auc_ci": _ci(report, "auc"),
        "accuracy": m.get("accuracy"),
        "accuracy_ci": _ci(report, "accuracy"),
        "f1": m.get("f1"),
        "f1_ci": _ci(report, "f1"),
        "sensitivity": m.get("sensitivity", m.get("recall")),
        "specificity": m.get("specificity"),
        "brier": cal.get("brier"),
        "ci_level": report.get("ci_level", 0.95),
        "n_boot": report.get("n_boot"),
        "majority_baseline": {k: base.get(k) for k in ("majority_class", "accuracy", "f1", "auc")} if base else None,
    }


def _external(run_path: Path) -> list[dict]:
    out = []
    for rep_path in sorted((run_path / "external").glob("*/eval_report.json")):
        try:
            rep = json.loads(rep_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            out.append({"record": rep_path.parent.name, "error": f"unreadable eval_report.json ({exc})"})
            continue
        data = rep.get("data") or {}
        prev = rep.get("prevalence") or {}
        out.append(
            {
                "record": rep_path.parent.name,
                "data_root": data.get("root"),
                "data_format": data.get("format"),
                "fingerprint": data.get("fingerprint"),
                "prevalence": prev.get("external"),
                "training_prevalence": prev.get("training"),
                "ensemble": rep.get("ensemble"),
                "checkpoint": rep.get("checkpoint", "best"),
                # external images that are training images of this run (eval --allow-overlap)
                "overlap": (rep.get("overlap_count") or {}).get("images", len(rep.get("overlap") or [])),
                "overlap_note": overlap_note(rep),
                **_scores(rep),
            }
        )
    return out


def model_card(run_path: str | Path, name: str | None = None, status: str | None = None) -> dict:
    """The card of the run folder at ``run_path`` as a JSON-able dict; ``status``: why the run
    cannot be used, when it cannot (the card still shows what the folder says)."""
    from ..protocol import read_run

    run_path = Path(run_path)
    card: dict = {"run": name or run_path.name, "notice": NOTICE, "status": status or "ready"}
    try:
        run = read_run(run_path)
    except HfcnError as exc:
        card["status"] = f"not a readable run: {exc}"
        return card
    h = run.header
    data = dict(h.get("data") or {})
    rule = run.manifest.label_rule
    card.update(
        {
            "system": h.get("system"),
            "preset": h.get("preset"),
            "finished": h.get("finished"),
            "created_by": h.get("created_by"),
            "config": h.get("config"),
            "split": h.get("split"),
            "training_data": {
                **{k: data.get(k) for k in ("format", "root", "fingerprint", "samples", "cases", "class_counts")},
                # a folder dataset's class mapping, as the run loaded it
                "classes": (data.get("options") or {}).get("classes"),
            },
            "label_rule": rule,
            "label_rule_text": RULES.get(rule, rule),
            "label_caveat": LABEL_CAVEAT if data.get("format") == "ddti" or rule in ("tirads", "mccnn") else None,
        }
    )
    if not run.finished and status is None:
        card["status"] = run.progress_note() or "the run did not finish"
    try:
        rep = run.metrics()
    except HfcnError:
        rep = None
    if rep is not None:
        sysinfo = rep.get("system") or {}
        card.update(
            {
                "paper": sysinfo.get("paper"),
                "description": sysinfo.get("description"),
                "limitations": list(rep.get("limitations") or []),
                "threshold": rep.get("threshold"),
                "threshold_rule": rep.get("threshold_rule"),
                # k folds: the pooled threshold is 0 on margins (prob - fold threshold); the
                # fold models' own thresholds are what a prediction is held against.
                "fold_thresholds": [
                    f.get("threshold") for f in rep.get("folds") or [] if f.get("threshold") is not None
                ]
                if rep.get("kind") == "kfold"
                else None,
                "threshold_source": rep.get("threshold_source"),
                "validation": {"kind": rep.get("kind"), "k": rep.get("k"), **_scores(rep)},
            }
        )
    card["external"] = _external(run_path)
    return card


def _num(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _with_ci(v, ci) -> str:
    return _num(v) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _score_rows(s: dict) -> list[str]:
    lvl = f"{int(round(100 * (s.get('ci_level') or 0.95)))}% CI"
    base = s.get("majority_baseline") or {}
    maj = base.get("majority_class")
    maj_text = "" if maj is None else f" (always {('benign', 'malignant')[int(maj)]})"
    rows = [
        f"| metric | model ({lvl}, case bootstrap) | majority baseline{maj_text} |",
        "|---|---|---|",
        f"| ROC-AUC | {_with_ci(s.get('auc'), s.get('auc_ci'))} | {_num(base.get('auc'))} |",
        f"| accuracy | {_with_ci(s.get('accuracy'), s.get('accuracy_ci'))} | {_num(base.get('accuracy'))} |",
        f"| F1 | {_with_ci(s.get('f1'), s.get('f1_ci'))} | {_num(base.get('f1'))} |",
        f"| sensitivity | {_num(s.get('sensitivity'))} | |",
        f"| specificity | {_num(s.get('specificity'))} | |",
        f"| Brier score | {_num(s.get('brier'))} | |",
    ]
    return rows


def card_markdown(card: dict) -> str:
    """The card as Markdown for the page."""
    lines = [f"### Model card: {card.get('run')}", "", f"> **{card['notice']}**", ""]
    if card.get("status") != "ready":
        lines += [f"**This run cannot be used:** {card.get('status')}", ""]
    if not card.get("system"):
        return "\n".join(lines)
    sysline = f"**System** `{card['system']}`" + (f", preset `{card['preset']}`" if card.get("preset") else "")
    if card.get("paper"):
        sysline += f" — {card['paper']}"
    lines += [sysline, ""]
    if card.get("description"):
        lines += [card["description"], ""]
    d = card.get("training_data") or {}
    counts = d.get("class_counts") or {}
    lines += [
        "**Training data**",
        "",
        f"- {d.get('format')} data at `{d.get('root')}`: {d.get('samples')} ROIs of {d.get('cases')} cases"
        + (f" ({', '.join(f'{k} {v}' for k, v in counts.items())})" if counts else ""),
        f"- fingerprint `{d.get('fingerprint')}`",
        *(
            [f"- class folders: {', '.join(f'`{k}/` = {v}' for k, v in d['classes'].items())}"]
            if d.get("classes")
            else []
        ),
        f"- split: {(card.get('split') or {}).get('method')} {json.dumps((card.get('split') or {}).get('params'))}",
        "",
        f"**Labels** rule `{card.get('label_rule')}`: {card.get('label_rule_text')}.",
        "",
    ]
    if card.get("label_caveat"):
        lines += [f"*{card['label_caveat']}*", ""]
    if card.get("fold_thresholds"):
        ts = card["fold_thresholds"]
        lines += [
            f"**Decision threshold** {sum(ts) / len(ts):.4f}, the mean of the {len(ts)} fold models' own "
            f"({', '.join(f'{t:.3f}' for t in ts)}; each by {card.get('threshold_rule')} on its "
            f"{card.get('threshold_source')} cases of the training side, never tuned on test data): a new "
            "image gets the mean of the fold models' P(malignant)",
            "",
        ]
    elif card.get("threshold") is not None:
        lines += [
            f"**Decision threshold** {card['threshold']:.4f} ({card.get('threshold_rule')} on the "
            f"{card.get('threshold_source')} cases of the training side; never tuned on test data)",
            "",
        ]
    v = card.get("validation")
    if v:
        size = f"{v.get('n_rois')} ROIs of {v.get('n_cases')} cases"
        kind = (
            f"{v['k']}-fold cross-validation, pooled out-of-fold"
            if v.get("kind") == "kfold"
            else "the test cases of the dataset's own train/test split"
            if v.get("kind") == "given"
            else "held-out test cases"
        )
        lines += [f"**Validation** on {kind} ({size}): {v.get('protocol')}", ""] + _score_rows(v) + [""]
    ext = card.get("external") or []
    if ext:
        lines += ["**External validation**", ""]
        for e in ext:
            if e.get("error"):
                lines += [f"- record {e['record']}: {e['error']}"]
                continue
            lines += [
                f"- {e.get('data_format')} data at `{e.get('data_root')}` "
                f"(fingerprint `{str(e.get('fingerprint'))[:12]}`…), "
                f"{e.get('n_rois')} ROIs of {e.get('n_cases')} cases, malignant share {_num(e.get('prevalence'))} "
                f"(training {_num(e.get('training_prevalence'))}): ROC-AUC {_with_ci(e.get('auc'), e.get('auc_ci'))}, "
                f"accuracy {_with_ci(e.get('accuracy'), e.get('accuracy_ci'))}, "
                f"F1 {_with_ci(e.get('f1'), e.get('f1_ci'))}"
                + (f" ({e['checkpoint']} weights)" if e.get("checkpoint") not in (None, "best") else "")
                + (f". **Overlap: {e['overlap_note']}.**" if e.get("overlap_note") else "")
            ]
        lines += [""]
    else:
        lines += ["**External validation**: none recorded (`hfcn-bench eval --run RUN --data OTHER` adds one).", ""]
    if card.get("limitations"):
        lines += ["**Limitations**", ""] + [f"- {x}" for x in card["limitations"]] + [""]
    return "\n".join(lines)
