"""What every system is: a configuration dataclass, ``fit`` on a split's training cases,
``predict`` on samples, and ``save``/``load`` of the fitted state.

A system's ``fit`` gets the training cases and carves its own validation part out of them
(``data.splits.inner_split``) when it selects an epoch or a threshold there; it returns a
:class:`Fitted` holding the in-memory models and, per output (``"main"`` and any variant),
the *training-side* predictions its decision threshold is chosen on. Thresholds are derived
from those predictions at scoring time (:meth:`Fitted.threshold`), at ROI or case level, so
the run folder stores what they were chosen from, not just a number.

``predict`` returns a :class:`Output`: one :class:`~hfcn_bench.protocol.Predictions` per
output, plus summaries of localisation quality that a cascade measures against the samples'
annotated boxes (detector AP, segmentation Dice). Everything else (splits, scoring, pooling,
run folders, external evaluation) is the same for every system and lives in
:mod:`hfcn_bench.protocol` and :mod:`hfcn_bench.runs`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.rois import Sample
from ..errors import HfcnError
from ..protocol import Predictions, threshold_from_predictions

__all__ = [
    "System",
    "Fitted",
    "Output",
    "coerce_value",
    "config_to_dict",
    "config_from_dict",
    "make_config",
    "field_types",
    "ONE_STAGE",
]

Progress = Callable[[str, int, int, dict], None]
ONE_STAGE = "main"


@dataclass
class Fitted:
    """A fitted system. ``models``: whatever its ``predict`` needs (system-specific).
    ``threshold_predictions[output]``: the training-side predictions that output's threshold
    is chosen on, with ``threshold_source[output]`` saying which ("validation", "training
    out-of-fold (5-fold by case)", ...). ``training``: a JSON-able summary (best epochs,
    histories); ``timings``: seconds per stage (``*_s``); ``val_cases``: the validation cases
    carved out of the training side (empty when there were none)."""

    system: str
    config: Any
    models: Any
    threshold_predictions: dict[str, Predictions]
    threshold_source: dict[str, str]
    training: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)

    def threshold(self, output: str = ONE_STAGE, aggregate: str | None = None) -> tuple[float, str]:
        """``(threshold, source)`` of ``output`` at ROI (``aggregate=None``) or case level."""
        return threshold_from_predictions(
            self.threshold_predictions[output], self.config.threshold_rule, aggregate, self.threshold_source[output]
        )


@dataclass
class Output:
    """What ``predict`` returns: ``predictions[output]`` (``"main"`` first, then variants),
    localisation ``summaries`` (e.g. ``{"detection": {...}}``) and ``seconds`` spent."""

    predictions: dict[str, Predictions]
    summaries: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0


class System:
    """Base class of the registered systems (see the module docstring). Subclasses set the
    class attributes and implement :meth:`fit`, :meth:`predict`, :meth:`save`, :meth:`load`."""

    name: str = ""
    paper: str = ""
    description: str = ""
    config_cls: type = object
    #: named settings: field overrides applied on top of the config's defaults
    presets: dict[str, dict] = {}
    #: output name -> description (besides "main")
    variants: dict[str, str] = {}
    #: whether fit writes per-epoch checkpoints (eval --checkpoint last applies)
    has_epochs: bool = True

    # -- configuration ----------------------------------------------------------------------
    def preset_names(self) -> tuple[str, ...]:
        return ("default",) + tuple(p for p in self.presets if p != "default")

    def configure(self, preset: str = "default", overrides: dict | None = None, seed: int | None = None):
        """The config of ``preset`` with ``overrides`` (a dict of field values, already typed)."""
        if preset != "default" and preset not in self.presets:
            raise HfcnError(
                f"system {self.name} has no preset {preset!r}; its presets: {', '.join(self.preset_names())}"
            )
        values = dict(self.presets.get(preset, {}))
        if "preset" in field_types(self.config_cls):
            values["preset"] = preset
        if seed is not None:
            values["seed"] = int(seed)
        values.update(overrides or {})
        return make_config(self.config_cls, values)

    def limitations(self, cfg) -> list[str]:
        """What this system cannot do here as published (stated in every report)."""
        return []

    def threads(self, cfg) -> int | None:
        return getattr(cfg, "threads", None)

    # -- the work ---------------------------------------------------------------------------
    def fit(
        self,
        train_samples: Sequence[Sample],
        cfg,
        *,
        out_dir: Path | None = None,
        progress: Progress | None = None,
        resume: bool = False,
        keep_last: bool = True,
    ) -> Fitted:
        raise NotImplementedError

    def predict(self, fitted: Fitted, samples: Sequence[Sample], *, progress: Progress | None = None) -> Output:
        raise NotImplementedError

    def save(self, fitted: Fitted, out_dir: Path) -> list[str]:
        """Write the fitted models that ``fit`` did not already write into ``out_dir``; return
        every model file (relative path) that ``load`` reads, for the integrity record."""
        raise NotImplementedError

    def load(self, cfg, directory: Path, record: dict, checkpoint: str = "best", device: str = "cpu") -> Any:
        """The ``models`` of a :class:`Fitted` from ``directory`` (files already verified)."""
        raise NotImplementedError

    def cannot_predict(self, sample: Sample) -> str | None:
        """Why this system cannot predict ``sample`` (e.g. it needs the nodule outline), or None."""
        return None

    def explain(self, fitted: Fitted, sample: Sample, display: int = 256) -> dict | None:
        """A picture's worth of what the system looked at for one ROI (HFCN: its crop windows
        and Grad-CAM), or ``None`` when the system has nothing beyond its probability."""
        return None

    def needed_files(self, record: dict, checkpoint: str = "best") -> list[str]:
        """Which recorded files ``load`` reads for ``checkpoint`` (all but the other kind of
        checkpoint)."""
        other = "last.pt" if checkpoint == "best" else "best.pt"
        return [f for f in record.get("files", {}) if Path(f).name != other]


# ---------------------------------------------------------------------------------------------
# configuration values: typed from the dataclass, so --set and flags need no second declaration


def field_types(cls) -> dict[str, Any]:
    """Field name -> resolved type annotation of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        inner = " or ".join(_describe(a) for a in args)
        return f"{inner} or none" if type(None) in typing.get_args(tp) else inner
    if origin is tuple:
        args = typing.get_args(tp)
        words = {2: "two", 3: "three", 4: "four"}.get(len(args), str(len(args)))
        kind = {int: "integers", float: "numbers", str: "strings"}.get(args[0], "values")
        return f"{words} {kind} (e.g. 96,144)"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a JSON object"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def coerce_value(cls, key: str, raw: Any):
    """``raw`` (a command-line string, or a value from JSON) as the type of field ``key`` of
    ``cls``. Errors name the field, the expected type and the value given."""
    types = field_types(cls)
    if key not in types:
        raise HfcnError(f"unknown option {key!r} for {cls.__name__}; known: {', '.join(sorted(types))}")
    tp = types[key]

    def fail():
        raise HfcnError(f"{key} expects {_describe(tp)}, got {raw!r}")

    def conv(t, v):
        if t is type(None):
            if v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null", "")):
                return None
            raise ValueError
        if t is bool:
            if isinstance(v, bool):
                return v
            if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return v.strip().lower() in ("true", "yes", "1", "on")
            raise ValueError
        if t is int:
            if isinstance(v, bool):
                raise ValueError
            if isinstance(v, int):
                return v
            if isinstance(v, float) and v.is_integer():
                return int(v)
            if isinstance(v, str):
                return int(v.strip())
            raise ValueError
        if t is float:
            if isinstance(v, bool):
                raise ValueError
            if isinstance(v, (int, float)):
                return float(v)
            if isinstance(v, str):
                return float(v.strip())
            raise ValueError
        if t is str:
            if isinstance(v, str):
                return v
            raise ValueError
        origin = typing.get_origin(t)
        if origin is tuple:
            items = v
            if isinstance(v, str):
                text = v.strip()
                items = json.loads(text) if text.startswith("[") else [p for p in text.split(",") if p.strip()]
            if not isinstance(items, (list, tuple)):
                raise ValueError
            args = typing.get_args(t)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(conv(args[0], x) for x in items)
            if len(items) != len(args):
                raise ValueError
            return tuple(conv(a, x) for a, x in zip(args, items))
        if t is dict or origin is dict:
            if isinstance(v, dict):
                return v
            if isinstance(v, str):
                obj = json.loads(v)
                if isinstance(obj, dict):
                    return obj
            raise ValueError
        if t is Any:
            return v
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            members = typing.get_args(t)
            # None first, so "none" is not read as the string "none" for a str | None field
            for m in sorted(members, key=lambda m: m is not type(None)):
                try:
                    return conv(m, v)
                except (ValueError, TypeError, json.JSONDecodeError):
                    continue
            raise ValueError
        raise ValueError

    try:
        return conv(tp, raw)
    except (ValueError, TypeError, json.JSONDecodeError):
        fail()


def make_config(cls, values: dict):
    """An instance of ``cls`` from field values (typed by :func:`coerce_value`), validated."""
    typed = {k: coerce_value(cls, k, v) for k, v in values.items()}
    try:
        cfg = cls(**typed)
    except TypeError as exc:
        raise HfcnError(f"bad {cls.__name__} options: {exc}") from None
    validate = getattr(cfg, "validate", None)
    if callable(validate) and not hasattr(cls, "__post_init__"):
        validate()
    return cfg


def config_to_dict(cfg) -> dict:
    """A config as plain JSON values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(cls, d: dict):
    """Inverse of :func:`config_to_dict`; unknown keys are an error (a newer or foreign file)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise HfcnError(
            f"unknown {cls.__name__} option(s) {unknown} in a saved configuration",
            hint="the run was written by another hfcn-bench version",
        )
    return make_config(cls, d)
