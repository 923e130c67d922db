"""Writing and reading result documents: JSON, markdown and PNG under one stem, and the plot loader.

A document is a dict with the provenance fields (``provenance.describe``), ``settings`` and
``results``; ``write_outputs`` writes ``<stem>.json`` / ``.md`` / ``.png`` where the stem is
``doc["stem"]`` or ``<name>-<device>-w<world>``. ``replot`` redraws the markdown and PNG of saved
documents (no GPU). Results of an ``EmulatedWorld`` (ranks sharing one GPU's HBM) are labelled by
``scope_note`` as ratios of our kernels to each other, never link figures.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .cells import EMULATED_NOTE, commit_of, fmt_ratio, fmt_us, pyplot, save_figure, scope_note  # noqa: F401

__all__ = ["EMULATED_NOTE", "commit_of", "fmt_ratio", "fmt_us", "pyplot", "save_figure", "scope_note", "stem",
           "renderers", "write_outputs", "load", "replot", "script_main"]


def stem(doc: dict) -> str:
    """File stem of a document: ``doc["stem"]``, else ``<name>-<device slug>-w<world>``."""
    return doc.get("stem") or f"{doc['name']}-{doc['device_slug']}-w{doc['world_size']}"


def renderers(name: str):
    """(prepare, markdown, plot) of a document named ``name`` (prepare adds derived fields)."""
    if name == "norm":
        from . import norm_tables as t

        return t.prepare, t.markdown, t.plot
    from . import tables as t

    if name == "tune":
        return None, t.tune_markdown, None
    if name in t.OPS or name == "fused":
        return t.prepare, t.markdown, t.plot
    raise ValueError(f"report: no renderer for documents named {name!r} (the layer benchmark's: "
                     "examples.bench_layer.write_outputs)")


def write_outputs(doc: dict, out_dir, *, markdown=None, plot=None, plotted: bool = True) -> dict:
    """Write ``doc`` as ``<stem>.json`` and ``<stem>.md`` (and ``<stem>.png`` when ``plotted`` and
    matplotlib is there) under ``out_dir``; returns {"json", "md"[, "png"]: path}.

    ``markdown(doc) -> str`` and ``plot(doc, path) -> path or None`` default to the renderers of
    ``doc["name"]``, whose ``prepare`` then adds the derived fields (speedups, summary) first.
    """
    if markdown is None:
        prepare, markdown, default_plot = renderers(doc["name"])
        plot = plot or default_plot
        if prepare is not None:
            prepare(doc)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = stem(doc)
    paths = {"json": out_dir / f"{base}.json", "md": out_dir / f"{base}.md"}
    paths["json"].write_text(json.dumps(doc, indent=1, default=str) + "\n")
    paths["md"].write_text(markdown(doc))
    if plotted and plot is not None:
        try:
            if plot(doc, out_dir / f"{base}.png") is not None:
                paths["png"] = out_dir / f"{base}.png"
        except Exception as exc:  # noqa: BLE001 - the JSON and markdown are what matter
            print(f"warning: plot failed ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
    return {k: str(v) for k, v in paths.items()}


def load(path) -> dict:
    """A saved result document."""
    return json.loads(Path(path).read_text())


def replot(files) -> int:
    """Rewrite the markdown and PNG of each saved document beside it; 1 if any failed."""
    rc = 0
    for f in files:
        try:
            doc = load(f)
            paths = write_outputs(doc, Path(f).parent)
            print(Path(paths["md"]).read_text())
            print(f"wrote {', '.join(paths.values())}")
        except Exception as exc:  # noqa: BLE001 - go on with the other files
            print(f"{f}: {type(exc).__name__}: {exc}", file=sys.stderr)
            rc = 1
    return rc


def script_main(argv, description: str, measure, markdown, plot, options=()) -> int:
    """The command line of a measurement script: ``--out DIR`` (measure on the GPU, write JSON, md
    and PNG) or ``--replot JSON`` (redraw an earlier run's md and PNG, no GPU).

    ``measure(args) -> doc``; ``markdown(doc) -> str``; ``plot(doc, path) -> path or None``;
    ``options``: ``(flag, argparse keywords)`` pairs the script adds.
    """
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default="bench")
    ap.add_argument("--replot", metavar="JSON", help="rewrite the md and PNG of an earlier run's JSON, no GPU")
    for flag, kwargs in options:
        ap.add_argument(flag, **kwargs)
    args = ap.parse_args(argv)
    if args.replot:
        doc, out = load(args.replot), Path(args.replot).parent
        doc.setdefault("stem", Path(args.replot).stem)
    else:
        doc, out = measure(args), Path(args.out)
    paths = write_outputs(doc, out, markdown=markdown, plot=plot)
    print(Path(paths["md"]).read_text())
    return 0
