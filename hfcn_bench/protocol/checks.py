"""Checks of the protocol's numeric options, made before any work: bootstrap resamples, seeds,
fractions and the number of folds against the data.

Every command that takes ``--n-boot``, ``--seed``, ``--folds`` or a fraction calls these first,
so a bad value is one error naming the option (and, for ``--folds``, the case count) before
anything is trained or written, never a failure after training or one error row per cell of a
grid. The library entry points (``runs.train_run``, ``runs.evaluate_run``, ``reproduce``)
call them too.
"""

from __future__ import annotations

import math
import numbers

from ..errors import HfcnError

__all__ = ["MAX_SEED", "check_n_boot", "check_seed", "check_fraction", "check_folds"]

# numpy's and torch's generators both take seeds in [0, 2**32)
MAX_SEED = 2**32 - 1


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_n_boot(n_boot, flag: str = "--n-boot") -> int:
    """Bootstrap resamples: a whole number of at least 1."""
    if not _is_int(n_boot) or n_boot < 1:
        raise HfcnError(
            f"{flag} {n_boot}: the case bootstrap needs at least 1 resample", hint=f"e.g. {flag} 1000 (the default)"
        )
    return int(n_boot)


def check_seed(seed, flag: str = "--seed") -> int:
    """A seed: a whole number in [0, 2**32 - 1]."""
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise HfcnError(f"{flag} {seed}: a seed is a whole number from 0 to {MAX_SEED}")
    return int(seed)


def check_fraction(value, flag: str) -> float:
    """A share of the cases: a number strictly between 0 and 1."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not 0.0 < v < 1.0:
        raise HfcnError(f"{flag} {value}: a share of the cases, strictly between 0 and 1")
    return v


def check_folds(k, samples, flag: str = "--folds") -> int:
    """``k`` folds of a case-level k-fold CV over ``samples`` (a dataset or its samples): at
    least 2 and no more than the cases (or groups of linked cases) there are to deal out."""
    from ..data.splits import split_units

    if not _is_int(k) or k < 2:
        raise HfcnError(f"{flag} {k}: k-fold cross-validation needs at least 2 folds")
    n = len(split_units(samples))
    if k > n:
        raise HfcnError(
            f"{flag} {k}: the data has {n} labelled case(s) (or groups of linked cases), so at most {n} folds",
            hint=f"use {flag} {min(5, n)}" if n >= 2 else "the data needs at least 2 labelled cases",
        )
    return int(k)
