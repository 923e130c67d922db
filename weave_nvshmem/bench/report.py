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

EMULATED_NOTE = ("EmulatedWorld: the ranks are virtual ranks sharing one GPU's HBM, so these are ratios of our "
                 "kernels to each other, not link figures")


def fmt_us(v, digits: int = 1) -> str:
    """A time cell: "err" for None."""
    return "err" if v is None else f"{v:.{digits}f}"


def fmt_ratio(v) -> str:
    """A ratio cell: "1.23x", "-" for None."""
    return "-" if v is None else f"{v:.2f}x"


def commit_of(doc: dict) -> str:
    """The first 10 characters of the document's commit."""
    return str(doc.get("git_commit") or doc.get("commit") or "?")[:10]


def scope_note(doc: dict) -> str:
    """What the figures of ``doc`` are and are not: the emulated label, or the world-1 caveat of
    NCCL (a no-op there), or ""."""
    if doc.get("emulated"):
        return EMULATED_NOTE
    if doc.get("world_size") == 1 and doc.get("name") != "norm":
        return "world 1: NCCL all-reduce is a no-op here (its time is launch overhead, not a link figure)"
    return ""


def pyplot():
    """(matplotlib.pyplot, FuncFormatter) on the Agg backend, or None (with a warning on stderr)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except Exception as exc:  # noqa: BLE001 - any import failure: no plot
        print(f"warning: matplotlib unavailable ({type(exc).__name__}: {exc}); no plot written", file=sys.stderr,
              flush=True)
        return None
    return plt, FuncFormatter


def save_figure(plt, fig, path, title: str, dpi: int = 120) -> str:
    """Title ``fig``, write it to ``path`` and close it; returns the path."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return str(path)


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
