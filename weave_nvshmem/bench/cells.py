"""Cells and figures every report shares: time and ratio cells, the commit label, the scope note of
emulated and world-1 documents, and matplotlib on the Agg backend (the renderers in ``tables``,
``norm_tables`` and the scripts build on these; ``report`` writes the files)."""
from __future__ import annotations

import sys

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
