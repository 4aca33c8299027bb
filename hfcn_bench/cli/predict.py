"""``hfcn-bench predict``: P(malignant) per ROI of DDTI case XMLs or image files from any run,
with a picture per ROI (HFCN: its crop windows' probabilities and Grad-CAM)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from ..errors import HfcnError
from .common import check_out_dir, fmt

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="P(malignant) per ROI of DDTI case XMLs or images, with a picture of what the model looked at"
    )
    p.add_argument("--run", type=Path, required=True, help="run folder written by `hfcn-bench train`")
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="IMAGE_OR_XML",
        help="DDTI case XMLs (read by the DDTI reader with the run's options: the ROIs training would "
        "have; images beside the XML or in ../raw_jpg) or image files (the whole image is the ROI)",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: RUN/predictions)")
    p.add_argument(
        "--fold", type=int, default=None, help="one fold's model of a k-fold run (default: the mean of all fold models)"
    )
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-png", action="store_true", help="skip the pictures")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(handler=run_predict)


def _row(path: Path, r, png: Path | None) -> dict:
    s = r.sample
    return {
        "input": str(path),
        "image": str(s.image_path),
        "case_id": s.case_id,
        "frame": s.frame,
        "region": s.region,
        "kind": s.roi_kind,
        "bbox": list(s.bbox),
        "roi_box": list(r.roi_box) if r.roi_box else list(s.bbox),
        "tirads": s.tirads,
        "label": s.label,
        "prob": r.prob,
        "threshold": r.threshold,
        "pred": r.call,
        "outputs": r.outputs,
        **{k: v for k, v in r.extra.items()},
        "png": None if png is None else str(png),
    }


def _source(path: Path, r) -> str:
    """What a picture shows, as the text its PNG keeps: the input's and the image's bytes and the
    ROI's key, hashed (a rerun on the same input gives the same text; another input of the same
    name, another)."""
    import hashlib

    from ..protocol.runfolder import sha256_file

    s = r.sample
    parts = [sha256_file(path), sha256_file(s.image_path), s.key, ",".join(map(str, s.bbox))]
    return "hfcn-bench predict " + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _picture_path(out: Path, key: str, source: str, taken: set[Path]) -> Path:
    """``OUT/KEY.png``, unless that file holds the picture of another input (or was written by
    something else): then the first free or matching ``OUT/KEY~N.png``. A picture is never
    written over one of another input."""
    from PIL import Image

    stem = key.replace("/", "_")
    n = 1
    while True:
        cand = out / (f"{stem}.png" if n == 1 else f"{stem}~{n}.png")
        if cand not in taken:
            if not cand.exists():
                return cand
            try:
                with Image.open(cand) as im:
                    if getattr(im, "text", {}).get("Source") == source:
                        return cand
            except (OSError, ValueError, SyntaxError):
                pass
        n += 1


def run_predict(args, console) -> int:
    from ..bench.figures import plot_prediction
    from ..runs import predict_inputs

    check_out_dir(args.out)
    out = args.out if args.out is not None else args.run / "predictions"
    with console.status("predicting..."):
        items, errors, notes = predict_inputs(
            args.run,
            args.inputs,
            fold=args.fold,
            checkpoint=args.checkpoint,
            device=args.device,
            explain=not args.no_png,
        )
    rows = []
    taken: set[Path] = set()
    for path, r in items:
        png = None
        if not args.no_png:
            s = r.sample
            title = f"{Path(path).name}: frame {s.frame}, ROI {s.region} ({s.roi_kind})"
            if s.tirads:
                title += f", TI-RADS {s.tirads} (a TI-RADS proxy label, not pathology)"
            # the sample key is unique per input (two inputs of one file name get case ids 1, 1~2);
            # a picture in --out from an earlier run of another input of that name is kept too
            source = _source(Path(path), r)
            target = _picture_path(out, s.key, source, taken)
            taken.add(target)
            if target.name != f"{s.key.replace('/', '_')}.png":
                notes.append(
                    f"{out / (s.key.replace('/', '_') + '.png')} holds the picture of another input: "
                    f"this one is {target.name}"
                )
            png = plot_prediction(r, title, target, source=source)
        rows.append(_row(path, r, png))
    if args.json:
        console.print_json(json.dumps({"rows": rows, "errors": errors, "notes": notes}))
    else:
        t = Table(title=f"P(malignant) per ROI (run {args.run})", title_justify="left")
        for c in ("input", "frame", "ROI", "P(mal.)", "call", "TI-RADS", "picture"):
            t.add_column(c, justify="right" if c in ("frame", "ROI", "P(mal.)") else "left", overflow="fold")
        for r in rows:
            t.add_row(
                Path(r["input"]).name,
                str(r["frame"]),
                str(r["region"]) + ("" if r["kind"] == "outline" else f" ({r['kind']})"),
                fmt(r["prob"]),
                f"[red]{r['pred']}[/red]" if r["pred"] == "malignant" else f"[green]{r['pred']}[/green]",
                r["tirads"] or "",
                Path(r["png"]).name if r["png"] else "",
            )
        console.print(t)
        if rows:
            console.print(
                f"decision threshold {rows[0]['threshold']:.4f} (chosen on the run's training side)"
                + (f"; pictures in {out}" if not args.no_png else ""),
                highlight=False,
            )
        for n in notes:
            console.print(f"[yellow]note:[/yellow] {n}", highlight=False)
        for e in errors:
            console.print(f"[bold red]error:[/bold red] {e}", highlight=False)
    if errors:
        return 1
    if not rows:
        raise HfcnError("no ROI to predict")
    return 0
