"""Cases linked into one split unit: by a shared image (byte-identical copies) and by
near-duplicate images (the same frame re-encoded, resized, cropped, cut out of a dual-view frame,
brightened or converted between grey and RGB: :mod:`.neardup`).

A frame filed under two case ids, or saved again under another case, would put one picture on
both sides of a split. The loaders find byte-identical copies themselves (they keep one copy,
``duplicate-image``) and pass, per shared image, the ids of the cases that held a copy.
:func:`link_cases` adds the near-duplicate images of *different* cases, gives every group of
linked cases one split unit (``Sample.unit``, so ``split_train_test``, ``kfold`` and ``data
holdout`` keep them on one side), keeps the evidence on the dataset
(``LoadedDataset.near_duplicates``, written into the split manifest) and reports each group
once (``linked-cases``, shown by ``hfcn-bench data check``). Near-duplicates are linked, not
dropped: each is a picture of its own (a crop, another size), and the match is a similarity
decision, so both stay in the data; byte-identical copies stay the special case that is
de-duplicated.

Cost. The search decodes and hashes every image the samples use, then verifies the candidate
pairs: on DDTI's 348 labelled frames ~1.4 s of hashing and ~1.3 s of verification against a
0.5 s load; on LES3BDD's 753 images 2.5 s + 1.3 s against 0.8 s (a loaded 2-core machine). Its
result depends only on the images' bytes, so it is cached by content
(:func:`cache_dir`/``neardup/<key>.json``, a few kB): the key is the sorted sha1s of the images,
the threshold and radius, and the versions of the matching code, Pillow and numpy. A second load
of the same images costs a file read; any changed, added or removed image is a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from functools import lru_cache
from pathlib import Path

from ..atomic import write_json_atomic
from .collection import LABEL_NAMES, LoadedDataset, assign_units, link_groups

__all__ = ["CACHE_ENV", "cache_dir", "near_duplicate_pairs", "link_cases"]

CACHE_ENV = "HFCN_CACHE_DIR"
_CACHE_FORMAT = "hfcn-bench/neardup-pairs"


def cache_dir() -> Path:
    """Where hfcn-bench keeps what it can recompute: ``$HFCN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/hfcn-bench``, else ``~/.cache/hfcn-bench``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "hfcn-bench"


@lru_cache(maxsize=1)
def _search_version() -> str:
    """What the search's result depends on besides the images: the matching code itself and the
    libraries that decode and resample (a new release may round differently)."""
    import numpy
    import PIL

    from . import neardup

    h = hashlib.sha256(Path(neardup.__file__).read_bytes())
    h.update(f"\0{PIL.__version__}\0{numpy.__version__}".encode())
    return h.hexdigest()[:16]


def _cache_key(shas: list[str], threshold: float, radius: int) -> str:
    h = hashlib.sha256(f"{_search_version()}\0{threshold!r}\0{radius}\0".encode())
    h.update("\n".join(shas).encode("ascii"))
    return h.hexdigest()


def _read_cache(path: Path, shas: set[str]) -> list[tuple[str, str, str, float]] | None:
    """The cached pairs, or None when the file is missing or not one of ours (then the search
    runs again and rewrites it)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        if obj.get("format") != _CACHE_FORMAT:
            return None
        pairs = [(str(a), str(b), str(k), float(s)) for a, b, k, s in obj["pairs"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return pairs if all(a in shas and b in shas for a, b, _, _ in pairs) else None


def near_duplicate_pairs(
    images: dict[str, Path], threshold: float | None = None, use_cache: bool = True
) -> tuple[list[tuple[str, str, str, float]], bool]:
    """Near-duplicate pairs among ``images`` (``{sha1 of the file's bytes: path}``, one path per
    distinct content): ``([(sha1 a, sha1 b, kind, score)], cached)``, ``a`` before ``b`` in sha1
    order. Images that cannot be decoded are named by a ``DataWarning`` (from
    :func:`.neardup.hash_images`) and left out; such a result is not cached, so the warning
    comes again on every load."""
    from .neardup import DEFAULT_RADIUS, DEFAULT_THRESHOLD, find_groups, hash_images

    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    shas = sorted(images)
    path = cache_dir() / "neardup" / f"{_cache_key(shas, threshold, DEFAULT_RADIUS)}.json"
    if use_cache:
        hit = _read_cache(path, set(shas))
        if hit is not None:
            return hit, True
    # sha1 order: the index, and so the search, is the same for the same contents
    index = hash_images([images[s] for s in shas])
    sha_of = {Path(images[s]).as_posix(): s for s in shas}
    pairs = []
    for group in find_groups(index, threshold=threshold):
        for m in group.matches:
            a, b = sorted((sha_of[m.a], sha_of[m.b]))
            pairs.append((a, b, m.kind, round(float(m.score), 4)))
    pairs.sort()
    if use_cache and not index.errors:
        try:
            write_json_atomic(
                path,
                {"format": _CACHE_FORMAT, "threshold": threshold, "images": len(shas), "pairs": pairs},
                indent=None,
            )
        except OSError as exc:
            warnings.warn(
                f"near-duplicate search: cannot write its cache {path} ({exc.strerror or exc}); the next load "
                f"searches again (set {CACHE_ENV} to a writable folder)",
                stacklevel=3,
            )
    return pairs, False


def _shown(ds: LoadedDataset, path: Path) -> str:
    try:
        return Path(path).relative_to(ds.root).as_posix()
    except ValueError:
        return Path(path).name


def link_cases(
    ds: LoadedDataset,
    shared: list[list[str]],
    near_duplicates: bool = True,
    threshold: float | None = None,
) -> LoadedDataset:
    """Link the cases of ``ds`` (in place; returns it): ``shared`` holds, per image whose bytes
    several cases held, those cases' ids (from the loader's de-duplication); with
    ``near_duplicates`` the images of different cases that are near-duplicates are linked too.
    Sets ``Sample.unit``, ``ds.near_duplicates`` (``None`` when the search is off, else the
    threshold, the number of images searched, the linking pairs with their kind and score, the
    seconds it took and whether the result came from the cache) and one ``linked-cases`` wart per
    group of linked cases, saying what links them."""
    from .neardup import DEFAULT_THRESHOLD

    near: list[dict] = []
    if near_duplicates:
        t0 = time.perf_counter()
        images: dict[str, Path] = {}
        cases_of: dict[str, list[str]] = {}
        for s in ds.samples:
            sha = ds.files.get(ds.file_key(s.image_path))
            if sha is None:  # every loader records its images; read it rather than skip it
                sha = hashlib.sha1(Path(s.image_path).read_bytes()).hexdigest()
            images.setdefault(sha, Path(s.image_path))
            if s.case_id not in cases_of.setdefault(sha, []):
                cases_of[sha].append(s.case_id)
        t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        pairs, cached = near_duplicate_pairs(images, t)
        for a, b, kind, score in pairs:
            for ca in cases_of[a]:
                for cb in cases_of[b]:
                    if ca != cb:
                        near.append(
                            {
                                "cases": [ca, cb],
                                "images": [_shown(ds, images[a]), _shown(ds, images[b])],
                                "kind": kind,
                                "score": score,
                            }
                        )
        near.sort(key=lambda p: (p["images"], p["cases"]))
        ds.near_duplicates = {
            "threshold": t,
            "images": len(images),
            "links": near,
            "seconds": round(time.perf_counter() - t0, 3),
            "cached": cached,
        }
    else:
        ds.near_duplicates = None
    ds.samples, groups = assign_units(ds.samples, link_groups(list(shared) + [p["cases"] for p in near]))
    labels = {c: info.label for c, info in ds.cases.items() if info.label is not None}
    for group in groups:
        members = set(group)
        why = []
        byte = [c for g in shared if len(members & set(g)) > 1 for c in g if c in members]
        if byte:
            ids = ", ".join(dict.fromkeys(byte))
            why.append(
                f"cases {ids} share image bytes"
                + (f" (one patient filed under {len(set(byte))} case ids?)" if ds.format == "ddti" else "")
            )
        pairs = [p for p in near if set(p["cases"]) <= members]
        if pairs:
            shown = "; ".join(
                f"{p['images'][0]} ~ {p['images'][1]} ({p['kind']}, score {p['score']:.3f})" for p in pairs
            )
            why.append(f"near-duplicate images: {shown}")
        classes = sorted({labels[c] for c in group if c in labels})
        if len(classes) > 1:
            why.append(
                f"filed as {' and '.join(LABEL_NAMES[c] for c in classes)}: the unit counts as malignant when a "
                "split is stratified"
            )
        ds.report.add(
            "linked-cases",
            ", ".join(f"{c}.xml" for c in group) if ds.format == "ddti" else ", ".join(group),
            "; ".join(why) if why else f"cases {', '.join(group)} are linked",
            "kept on one side of every split",
            case=group[0],
        )
    return ds
