"""TI-RADS descriptors as training targets: four small vocabularies, one class index per case
and field, ``MISSING`` where the report is silent.

DDTI's XMLs record the radiologist's composition, echogenicity, margins and calcifications
of each case, and its TI-RADS label is scored from them (Kwak et al., Radiology 2011). A
network that learns to see these cues learns the label, so they serve as auxiliary targets
(Buda et al., Radiology 2019: one trunk, one head per descriptor, each loss masked where the
descriptor is missing). They are never an input: prediction reads the image only.

The vocabularies are the coarse categories TI-RADS scores, mapped from the reader's
normalised values (:func:`hfcn_bench.data.ddti.normalize_field`):

- composition: ``solid`` (solid, dense), ``mixed`` (predominantly solid, predominantly cystic),
  ``cystic-spongiform`` (cystic, spongiform). DDTI's "dense" (10 cases, every one TI-RADS
  4b-5, 9 of them hypoechoic or markedly so) names a solid nodule without a cystic part; the
  phantoms write it for solid nodules too;
- echogenicity: ``hyper-iso``, ``hypo``, ``marked-hypo``;
- margins: ``smooth`` (well defined, well defined smooth), ``ill-defined``,
  ``lobulated-spiculated`` (micro- and macrolobulated, spiculated);
- calcifications: ``none``, ``macro``, ``micro``.

An empty field, or a value the reader did not understand (reported as an ``unknown-value``
wart), is ``MISSING``: masked in the loss, never guessed. The folder format records no
descriptors, so its samples are all masked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = [
    "DESCRIPTORS",
    "DESCRIPTOR_FIELDS",
    "MISSING",
    "NO_DESCRIPTORS",
    "descriptor_targets",
    "descriptor_names",
    "descriptor_counts",
]

DESCRIPTORS: dict[str, tuple[str, ...]] = {
    "composition": ("solid", "mixed", "cystic-spongiform"),
    "echogenicity": ("hyper-iso", "hypo", "marked-hypo"),
    "margins": ("smooth", "ill-defined", "lobulated-spiculated"),
    "calcifications": ("none", "macro", "micro"),
}
DESCRIPTOR_FIELDS = tuple(DESCRIPTORS)
MISSING = -1
# What a sample without any recorded descriptor carries (folder format, unlabelled inputs).
NO_DESCRIPTORS: tuple[int, ...] = (MISSING,) * len(DESCRIPTOR_FIELDS)

# The reader's normalised values (ddti._VOCAB's right-hand sides) -> coarse category.
_COARSE: dict[str, dict[str, str]] = {
    "composition": {
        "solid": "solid",
        "dense": "solid",
        "predominantly solid": "mixed",
        "predominantly cystic": "mixed",
        "cystic": "cystic-spongiform",
        "spongiform": "cystic-spongiform",
    },
    "echogenicity": {
        "hyperechoic": "hyper-iso",
        "isoechoic": "hyper-iso",
        "hypoechoic": "hypo",
        "markedly hypoechoic": "marked-hypo",
    },
    "margins": {
        "well-defined": "smooth",
        "ill-defined": "ill-defined",
        "microlobulated": "lobulated-spiculated",
        "macrolobulated": "lobulated-spiculated",
        "spiculated": "lobulated-spiculated",
    },
    "calcifications": {
        "none": "none",
        "macrocalcifications": "macro",
        "microcalcifications": "micro",
    },
}


def descriptor_targets(fields: Mapping) -> tuple[int, ...]:
    """One class index per :data:`DESCRIPTOR_FIELDS` entry (``MISSING`` where ``fields`` has no
    usable value) from a case's normalised fields (``CaseInfo.fields``)."""
    out = []
    for name in DESCRIPTOR_FIELDS:
        coarse = _COARSE[name].get(fields.get(name) or "")
        out.append(DESCRIPTORS[name].index(coarse) if coarse is not None else MISSING)
    return tuple(out)


def descriptor_names(targets: Iterable[int]) -> dict[str, str | None]:
    """``{field: category or None}`` of a target tuple."""
    pairs = zip(DESCRIPTOR_FIELDS, targets, strict=True)
    return {name: (DESCRIPTORS[name][t] if t != MISSING else None) for name, t in pairs}


def descriptor_counts(samples: Iterable) -> dict:
    """How many cases and ROIs of ``samples`` record each descriptor, and each category's count.

    Returns ``{field: {"cases": n, "cases_missing": m, "rois": n, "rois_missing": m,
    "categories": {category: cases}}}`` (a case counts once, whatever its number of ROIs)."""
    samples = list(samples)
    per_case: dict[str, tuple[int, ...]] = {}
    for s in samples:
        per_case.setdefault(s.case_id, s.descriptors)
    out = {}
    for i, name in enumerate(DESCRIPTOR_FIELDS):
        cats = {c: 0 for c in DESCRIPTORS[name]}
        for t in per_case.values():
            if t[i] != MISSING:
                cats[DESCRIPTORS[name][t[i]]] += 1
        known_rois = sum(1 for s in samples if s.descriptors[i] != MISSING)
        known_cases = sum(cats.values())
        out[name] = {
            "cases": len(per_case),
            "cases_missing": len(per_case) - known_cases,
            "rois": len(samples),
            "rois_missing": len(samples) - known_rois,
            "categories": cats,
        }
    return out
