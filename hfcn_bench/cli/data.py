"""``hfcn-bench data synth|check|holdout|overlap``: write phantom DDTI-format data; audit a
dataset folder; hold a part out; find near-duplicate images within or across folders."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..data.synthetic import DEFAULT_LABEL_NOISE, DEFAULT_SYNTHETIC_CASES, DEFAULT_SYNTHETIC_DIR, DIFFICULTIES
from ..errors import HfcnError
from .common import add_near_duplicate_flag


def register(sub) -> None:
    p = sub.add_parser("data", help="data tools: synthetic DDTI-format phantoms, dataset check")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    p.set_defaults(handler=lambda args, console: _missing_action(p, console))

    s = dsub.add_parser("synth", help="write synthetic thyroid ultrasound phantoms in DDTI format (XML + JPEG)")
    s.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_SYNTHETIC_DIR,
        help=f"output folder; gets xml/ and raw_jpg/ like DDTI's raw/ (default: {DEFAULT_SYNTHETIC_DIR})",
    )
    s.add_argument(
        "--cases",
        type=int,
        default=DEFAULT_SYNTHETIC_CASES,
        help=f"number of cases (patients) (default: {DEFAULT_SYNTHETIC_CASES})",
    )
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    s.add_argument(
        "--label-noise",
        type=float,
        default=DEFAULT_LABEL_NOISE,
        metavar="P",
        help="probability that a case's recorded TI-RADS class is flipped (default: "
        f"{DEFAULT_LABEL_NOISE:g}, as in the embedded default set)",
    )
    s.add_argument(
        "--difficulty",
        choices=DIFFICULTIES,
        default="realistic",
        help="realistic: TI-RADS cues drawn with class-dependent probabilities that overlap "
        "between the classes, B-mode speckle (the embedded default); easy: strong cues any "
        "model learns, for checks that need a clear signal (default: realistic)",
    )
    s.add_argument(
        "--malignant-fraction", type=float, default=0.6, metavar="F", help="fraction of malignant cases (default: 0.6)"
    )
    s.add_argument(
        "--unlabelled-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="fraction of cases with an empty TI-RADS (default: 0.1)",
    )
    s.add_argument(
        "--warts",
        action="store_true",
        help="inject each DDTI wart once (truncated/empty outlines, "
        "duplicate/missing/unreadable images, malformed XML)",
    )
    s.add_argument("--force", action="store_true", help="replace an earlier output in --out")
    s.set_defaults(handler=run_synth)

    c = dsub.add_parser("check", help="count cases, frames, ROIs and labels; list every wart")
    c.add_argument(
        "dir",
        nargs="?",
        type=Path,
        default=None,
        help="DDTI raw/ (xml/ + raw_jpg/), a flat *.xml + *.jpg folder, synthetic output, or a "
        "benign/ + malignant/ folder (default: $HFCN_DDTI_DIR)",
    )
    c.add_argument(
        "--label-rule",
        choices=("tirads", "mccnn"),
        default="tirads",
        help="tirads: 2-3 benign, 4a-5 malignant; mccnn: 2-3 vs 4c-5 (default: tirads)",
    )
    c.add_argument("--margin", type=float, default=0.0, help="ROI margin, fraction of the nodule box per side")
    c.add_argument(
        "--empty-outline",
        choices=("skip", "full-frame"),
        default="skip",
        help="frames without an outline: skip them or use the whole frame (default: skip)",
    )
    c.add_argument(
        "--truncated",
        choices=("salvage", "skip"),
        default="salvage",
        help="truncated outline JSON: salvage the points before the cut, or skip the mark",
    )
    c.add_argument(
        "--classes",
        default=None,
        metavar="FOLDER=CLASS,...",
        help="folder format: which folders hold which class, e.g. benin=benign,malin=malignant",
    )
    add_near_duplicate_flag(c)
    c.add_argument("--json", action="store_true", help="print the load report as JSON instead of tables")
    c.set_defaults(handler=run_check)

    h = dsub.add_parser(
        "holdout",
        help="copy a dataset into a development part and a held-out part (case-disjoint, "
        "stratified) for external validation when there is no second dataset",
    )
    h.add_argument("dir", type=Path, help="the dataset folder (DDTI or benign/ + malignant/)")
    h.add_argument("--out", type=Path, required=True, help="writes OUT/development and OUT/holdout")
    h.add_argument("--fraction", type=float, default=0.2, help="share of the labelled cases held out (default 0.2)")
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--label-rule", choices=("tirads", "mccnn"), default="tirads")
    h.add_argument("--force", action="store_true", help="replace an earlier output in --out")
    add_near_duplicate_flag(h)
    h.set_defaults(handler=run_holdout)

    o = dsub.add_parser(
        "overlap",
        help="near-duplicate images (re-encoded, resized, cropped, pane cuts, brightness, "
        "grey/RGB): every image of B with a twin in A, or the groups inside A alone",
        description="Find near-duplicate images. With A and B: every image of B that is a "
        "near-duplicate of an image of A, with its twin(s). With A alone: the groups of "
        "near-duplicates inside A. Images are found recursively (jpg, jpeg, png, bmp, tif); masks "
        "(*_mask.*, masks/) are skipped. Exit 0 whatever is found.",
    )
    o.add_argument("a", type=Path, metavar="A", help="a folder of images (searched recursively)")
    o.add_argument("b", type=Path, metavar="B", nargs="?", default=None, help="a second folder (optional)")
    o.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        help="score (detail correlation of the aligned images, 0-1) a pair needs (default: "
        "hfcn_bench.data.neardup.DEFAULT_THRESHOLD, 0.85)",
    )
    o.add_argument(
        "--pictures",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write each matched pair that is not byte-identical as a side-by-side PNG of two "
        "thumbnails (at most 160 px wide each) into DIR, to check the matches by eye",
    )
    o.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")
    o.set_defaults(handler=run_overlap)


def _links_row(ds) -> str:
    """What links cases of ``ds`` into one split unit, in one line."""
    nd = ds.near_duplicates
    groups = len(ds.links())
    if nd is None:
        return f"{groups} group(s) of linked cases, by identical image bytes (near-duplicate search off)"
    n_near = len({tuple(p["cases"]) for p in nd["links"]})
    how = "cached" if nd["cached"] else f"{nd['seconds']:.1f} s"
    return (
        f"{groups} group(s) of linked cases; {n_near} case pair(s) linked by near-duplicate images "
        f"(search over {nd['images']} images, threshold {nd['threshold']:g}, {how}); the rest by identical bytes"
    )


def _missing_action(parser, console) -> int:
    console.print(parser.format_help(), highlight=False, markup=False)
    return 2


@contextmanager
def _progress(console, what: str, enabled: bool = True):
    """A rich progress bar fed by the library's ``progress(done, total)`` callbacks."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def run_synth(args, console) -> int:
    from ..data.synthetic import write_synthetic_ddti
    from ..protocol.checks import check_seed
    from .common import check_out_dir

    check_out_dir(args.out)
    check_seed(args.seed)
    start = time.perf_counter()
    with _progress(console, "writing phantoms") as update:
        out = write_synthetic_ddti(
            args.out,
            n_cases=args.cases,
            seed=args.seed,
            label_noise=args.label_noise,
            warts=args.warts,
            malignant_fraction=args.malignant_fraction,
            unlabelled_fraction=args.unlabelled_fraction,
            overwrite=args.force,
            progress=update,
            difficulty=args.difficulty,
        )
    elapsed = time.perf_counter() - start
    truth = json.loads((out / "synthetic.json").read_text(encoding="utf-8"))
    n_frames = sum(len(c["frames"]) for c in truth["cases"].values())
    flips = sum(c["flipped"] for c in truth["cases"].values())
    console.print(
        f"wrote {args.cases} cases, {n_frames} frames to [bold]{out}[/bold] in {elapsed:.1f} s "
        f"({args.difficulty}, seed {args.seed}, label noise {args.label_noise:g}: {flips} flipped"
        f"{', warts injected: ' + str(len(truth['warts'])) if args.warts else ''})",
        highlight=False,
    )
    console.print(f"next: hfcn-bench data check {out}", highlight=False, markup=False)
    return 0


def _report_tables(ds) -> list[Table]:
    r = ds.report
    overview = Table(title=f"{r.format} data at {r.root}", show_header=False, title_justify="left")
    overview.add_column(style="bold")
    overview.add_column()
    overview.add_row(
        "cases",
        f"{r.case_files} case file(s): {r.cases} read"
        + (f", {r.cases_skipped} skipped (malformed or duplicate id)" if r.cases_skipped else ""),
    )
    overview.add_row("frames", f"{r.frames} ({r.frames_usable} with a usable ROI after de-duplication)")
    if r.format == "ddti":
        overview.add_row(
            "outlines", f"{r.outlines} (+{r.arrows} arrow regions, not outlines); {r.dual_view_frames} dual-view frames"
        )
    opts = ", ".join(f"{k}={v}" for k, v in r.options.items())
    overview.add_row("options", opts)
    overview.add_row(
        f"ROIs ({r.label_rule})",
        f"{r.samples} labelled ROIs from {r.sample_cases} cases: "
        f"{r.samples_by_label['benign']} benign / {r.samples_by_label['malignant']} malignant",
    )
    overview.add_row("links", _links_row(ds))
    overview.add_row("fingerprint", ds.fingerprint[:16] + "… (sha256 of the files used; full in --json)")

    labels = Table(title="labels per rule (frames and ROIs before de-duplication)", title_justify="left")
    for col in ("rule", "counted", "benign", "malignant", "excluded"):
        labels.add_column(col, justify="left" if col in ("rule", "counted") else "right")
    for name, counts in r.by_rule.items():
        shown = f"[bold]{name}[/bold] (active)" if name == r.label_rule else name
        for i, (level, d) in enumerate((("cases", counts.cases), ("frames", counts.frames), ("ROIs", counts.rois))):
            labels.add_row(
                shown if i == 0 else "",
                level,
                str(d["benign"]),
                str(d["malignant"]),
                str(d["excluded"]),
                end_section=i == 2,
            )

    tables = [overview, labels, _descriptor_table(ds)]
    if r.warts:
        warts = Table(title=f"{len(r.warts)} warts handled", title_justify="left")
        for col, ratio in (("kind", 2), ("file", 2), ("frame", 1), ("what", 3), ("done", 3)):
            warts.add_column(col, overflow="fold", ratio=ratio)
        order = {k: i for i, k in enumerate(dict.fromkeys(w.kind for w in r.warts))}
        for w in sorted(r.warts, key=lambda w: order[w.kind]):  # grouped by kind, stable within
            warts.add_row(w.kind, w.file, "" if w.frame is None else str(w.frame), w.message, w.action)
        tables.append(warts)
    return tables


def _descriptor_table(ds) -> Table:
    """The TI-RADS descriptors of the labelled cases: how many record each, and the categories
    (the targets of the auxiliary descriptor heads; missing ones are masked, never guessed)."""
    from ..data.descriptors import DESCRIPTORS, descriptor_counts

    counts = descriptor_counts(s for s in ds.samples if s.label is not None)
    t = Table(
        title="TI-RADS descriptors of the labelled cases (auxiliary targets; missing = masked)", title_justify="left"
    )
    t.add_column("descriptor")
    t.add_column("missing (cases)", justify="right")
    t.add_column("missing (ROIs)", justify="right")
    t.add_column("cases per category")
    for name, c in counts.items():
        t.add_row(
            name,
            f"{c['cases_missing']} of {c['cases']}",
            f"{c['rois_missing']} of {c['rois']}",
            ", ".join(f"{k} {c['categories'][k]}" for k in DESCRIPTORS[name]),
        )
    return t


def run_check(args, console) -> int:
    import warnings

    from ..data import load_dataset

    path = args.dir
    if path is None:
        env = os.environ.get("HFCN_DDTI_DIR")
        if not env:
            raise HfcnError("no dataset folder given", hint="hfcn-bench data check DIR, or set HFCN_DDTI_DIR")
        path = Path(env)
    with warnings.catch_warnings():
        # The report below lists every wart; the one-line summary warning would repeat it.
        warnings.simplefilter("ignore")
        with _progress(console, "reading cases", enabled=not args.json) as update:
            ds = load_dataset(
                path,
                label_rule=args.label_rule,
                margin=args.margin,
                empty_outline=args.empty_outline,
                truncated=args.truncated,
                progress=update,
                classes=args.classes,
                link_near_duplicates=args.near_duplicate_links,
            )
    r = ds.report
    if args.json:
        from ..data.descriptors import descriptor_counts

        out = r.to_dict()
        out["fingerprint"] = ds.fingerprint
        out["links"] = [list(g) for g in ds.links()]
        out["near_duplicates"] = ds.near_duplicates
        out["descriptors"] = descriptor_counts(s for s in ds.samples if s.label is not None)
        console.print_json(json.dumps(out))
    else:
        for table in _report_tables(ds):
            console.print(table)
    if not r.usable:
        console.print(
            f"[bold red]no usable labelled ROI[/bold red] in {r.root} under rule {r.label_rule!r}", highlight=False
        )
        return 1
    if not args.json:
        counts = ", ".join(f"{n} {k}" for k, n in r.wart_counts().items()) or "none"
        console.print(
            f"[green]usable:[/green] {r.samples} ROIs from {r.sample_cases} cases; warts: {counts}", highlight=False
        )
    return 0


def run_holdout(args, console) -> int:
    import warnings

    from rich.markup import escape

    from ..data import load_dataset
    from ..data.holdout import write_holdout
    from ..protocol.checks import check_fraction, check_seed
    from .common import check_out_dir

    check_out_dir(args.out)
    check_fraction(args.fraction, "--fraction")
    check_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(args.dir, label_rule=args.label_rule, link_near_duplicates=args.near_duplicate_links)
    res = write_holdout(ds, args.out, fraction=args.fraction, seed=args.seed, overwrite=args.force)
    for line in res["skipped"]:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False)
    console.print(
        f"{len(res['development'])} labelled cases in {args.out / 'development'}, {len(res['holdout'])} held "
        f"out in {args.out / 'holdout'} (stratified by the {ds.label_rule} rule, seed {args.seed}; "
        f"linked cases kept on one side: {_links_row(ds)})",
        highlight=False,
    )
    console.print(
        f"next: train on the development part, then hfcn-bench eval --run RUN --data {args.out / 'holdout'}",
        highlight=False,
        markup=False,
    )
    return 0


def _hash_folder(console, folder: Path, label: str, show: bool):
    import warnings

    from ..data.neardup import find_images, hash_images

    folder = folder.expanduser()
    if not folder.exists():
        raise HfcnError(f"{folder} does not exist", hint="give a folder of images")
    if not folder.is_dir():
        raise HfcnError(f"{folder} is not a folder", hint="give a folder of images (searched recursively)")
    paths = find_images(folder)
    if not paths:
        raise HfcnError(
            f"no images in {folder}",
            hint="looked for *.jpg, *.jpeg, *.png, *.bmp, *.tif, *.tiff (recursively; masks skipped)",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every unreadable file is in .errors and printed below
        with _progress(console, f"hashing {label}", enabled=show) as update:
            index = hash_images(paths, root=folder, progress=update)
    if show:
        for name, why in index.errors:
            console.print(f"[yellow]warning:[/yellow] {label}: {name}: {why}; not compared", highlight=False)
    return index


def _write_pictures(matches, roots: tuple[Path, Path], folder: Path) -> list[str]:
    """One side-by-side PNG per match that is not a byte-identical file, named by rank, score
    and the two images; returns the file names written."""
    from ..bench.figures import plot_pair

    def flat(name: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(name).with_suffix("").as_posix())

    written = []
    shown = sorted((m for m in matches if m.kind != "identical-file"), key=lambda m: (-m.score, m.a, m.b))
    for n, m in enumerate(shown, start=1):
        name = f"{n:03d}_{m.score:.3f}_{flat(m.a)}__{flat(m.b)}.png"
        plot_pair(
            roots[0].expanduser() / m.a,
            roots[1].expanduser() / m.b,
            folder / name,
            (m.a, m.b),
            f"{m.kind}, score {m.score:.3f} (picture NCC {m.ncc:.3f}, {m.hamming} bits)",
        )
        written.append(name)
    return written


def run_overlap(args, console) -> int:
    from collections import Counter

    from ..data.neardup import DEFAULT_RADIUS, DEFAULT_THRESHOLD, find_groups, find_overlap

    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    if not 0.0 < threshold <= 1.0:
        raise HfcnError(
            f"--threshold must be in (0, 1], got {threshold:g}",
            hint=f"the score is a correlation; the default is {DEFAULT_THRESHOLD}",
        )
    show = not args.json
    if args.pictures is not None:
        from .common import check_out_dir

        check_out_dir(args.pictures, "--pictures")
    ia = _hash_folder(console, args.a, "A", show)
    ib = _hash_folder(console, args.b, "B", show) if args.b is not None else None
    out = {"a": ia.summary(), "threshold": threshold, "radius": DEFAULT_RADIUS}
    with _progress(console, "verifying candidates", enabled=show) as update:
        if ib is not None:
            matches = find_overlap(ia, ib, threshold=threshold, progress=update)
        else:
            groups = find_groups(ia, threshold=threshold, progress=update)
    if args.pictures is not None:
        found = matches if ib is not None else [m for g in groups for m in g.matches]
        roots = (args.a, args.b if ib is not None else args.a)
        out["pictures"] = _write_pictures(found, roots, args.pictures)
        if show:
            console.print(
                f"wrote {len(out['pictures'])} picture(s) of matched pairs to {args.pictures}", highlight=False
            )
    if ib is not None:
        out["b"] = ib.summary()
        by_b: dict[str, list] = {}
        for m in matches:
            by_b.setdefault(m.b, []).append(m)
        out["images"] = [
            {"b": b, "twins": [{k: v for k, v in m.to_dict().items() if k != "b"} for m in ms]}
            for b, ms in by_b.items()
        ]
        kinds = Counter(m.kind for m in matches)
        out["summary"] = {"b_with_twin": len(by_b), "b_images": len(ib), "pairs": len(matches), "kinds": dict(kinds)}
        if args.json:
            console.print_json(json.dumps(out))
            return 0
        if by_b:
            t = Table(title=f"images of B ({args.b}) with a near-duplicate in A ({args.a})", title_justify="left")
            for col, just in (
                ("image of B", "left"),
                ("twin in A", "left"),
                ("score", "right"),
                ("bits", "right"),
                ("class", "left"),
            ):
                t.add_column(col, justify=just, overflow="fold")
            for b, ms in by_b.items():
                for k, m in enumerate(ms):
                    t.add_row(
                        b if k == 0 else "", m.a, f"{m.score:.3f}", str(m.hamming), m.kind, end_section=k == len(ms) - 1
                    )
            console.print(t)
            parts = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
            console.print(
                f"{len(by_b)} of {len(ib)} images of B have a near-duplicate in A ({len(matches)} pairs: "
                f"{parts}; threshold {threshold:g})",
                highlight=False,
            )
        else:
            console.print(
                f"no image of B is a near-duplicate of an image of A ({len(ib)} against {len(ia)} images; "
                f"threshold {threshold:g})",
                highlight=False,
            )
        return 0

    out["groups"] = [g.to_dict() for g in groups]
    beyond = [g for g in groups if any(m.kind != "identical-file" for m in g.matches)]
    out["summary"] = {
        "groups": len(groups),
        "images_in_groups": sum(len(g.members) for g in groups),
        "groups_beyond_identical_files": len(beyond),
    }
    if args.json:
        console.print_json(json.dumps(out))
        return 0
    if groups:
        t = Table(title=f"near-duplicate groups in {args.a}", title_justify="left")
        for col, just in (("group", "right"), ("images", "left"), ("classes", "left"), ("lowest score", "right")):
            t.add_column(col, justify=just, overflow="fold")
        for n, g in enumerate(groups, start=1):
            t.add_row(
                str(n),
                "\n".join(g.members),
                ", ".join(sorted({m.kind for m in g.matches})),
                f"{min(m.score for m in g.matches):.3f}",
                end_section=True,
            )
        console.print(t)
        console.print(
            f"{len(groups)} groups of near-duplicates ({out['summary']['images_in_groups']} of {len(ia)} "
            f"images; {len(beyond)} beyond byte-identical files; threshold {threshold:g})",
            highlight=False,
        )
    else:
        console.print(f"no near-duplicates among the {len(ia)} images (threshold {threshold:g})", highlight=False)
    return 0
