"""Table, summary and plot of the norm suite's document (pure functions of the JSON, no GPU)."""
from __future__ import annotations

from . import baselines
from .cells import commit_of, fmt_ratio, fmt_us, pyplot, save_figure
from .variants import NORM_TARGET


def norm_rows(doc: dict) -> list:
    return [r for r in doc["results"] if r.get("series") == "norm"]


def copy_gbps(doc: dict):
    """The best device copy rate measured in the run (GB/s, read + write), or None."""
    rates = [r["gbps"] for r in doc["results"] if r.get("series") == "copy" and r.get("gbps")]
    return max(rates) if rates else None


def summary(doc: dict) -> dict:
    """{"rows", "compared", "met", "shortfall": [row keys], "worst": {...} or None, "text"}: whether
    ours reaches ``NORM_TARGET`` of Inductor's speed at every row that has both figures."""
    rows = norm_rows(doc)
    compared = [r for r in rows if r.get("speed_vs_inductor") is not None]
    short = [r for r in compared if not r["target_met"]]
    worst = min(compared, key=lambda r: r["speed_vs_inductor"]) if compared else None

    def where(r):
        return f"{r['dtype']} H={r['hidden']} T={r['tokens']}{'' if r['residual'] else ' no residual'}"

    in_place = [r for r in compared if r.get("speed_vs_inductor_in_place") is not None]
    missing = len(rows) - len(compared)
    if not compared:
        text = "target not evaluated: no row has both our time and Inductor's"
    elif not short:
        text = f"target met: ours >= {NORM_TARGET:.2f}x Inductor's speed at all {len(compared)} rows " \
               f"(lowest {worst['speed_vs_inductor']:.2f}x at {where(worst)})"
    else:
        text = f"shortfall: ours below {NORM_TARGET:.2f}x Inductor's speed at {len(short)} of {len(compared)} rows; " \
               f"worst {worst['speed_vs_inductor']:.2f}x at {where(worst)}"
    if in_place:
        low = min(in_place, key=lambda r: r["speed_vs_inductor_in_place"])
        n = sum(r["speed_vs_inductor_in_place"] >= NORM_TARGET for r in in_place)
        text += f"; against Inductor with the residual in place (our contract): >= {NORM_TARGET:.2f}x at {n} of " \
                f"{len(in_place)} rows, lowest {low['speed_vs_inductor_in_place']:.2f}x at {where(low)}"
    if compared and missing:
        text += f"; {missing} rows without both figures"
    return {"rows": len(rows), "compared": len(compared), "met": bool(compared) and not short,
            "shortfall": [where(r) for r in short], "worst": None if worst is None else where(worst), "text": text}


def prepare(doc: dict) -> dict:
    """Add ``summary`` and ``copy_gbps`` to ``doc``."""
    doc["copy_gbps"] = copy_gbps(doc)
    doc["summary"] = summary(doc)
    return doc


def _pct(v, ref) -> str:
    return "-" if not v or not ref else f"{100 * v / ref:.0f}%"


def _cell(v) -> str:
    """A time (us), why it did not run (cut to 60 characters), or "-" where none was taken."""
    return "-" if v is None else v[:60] if isinstance(v, str) else fmt_us(v, 2)


def markdown(doc: dict) -> str:
    """The norm table: ours and the fastest baseline in us and GB/s, the speed ratios and the target."""
    rows, copy = norm_rows(doc), doc.get("copy_gbps") or copy_gbps(doc)
    s = doc["settings"]
    lines = [f"**norm**: fused add + RMSNorm at world 1 on one {doc['device']}, commit {commit_of(doc)}; ours = "
             f"fused_allreduce_rmsnorm on {s.get('ours_fabric', '?')}; median us per call, CUDA graphs, L2 evicted, "
             f"random inputs. Bytes = x + residual in + weight + residual out + out. Device copy rate measured in the "
             f"same run: {fmt_us(copy, 0)} GB/s (read + write). Speed = baseline us / ours us; target: ours >= "
             f"{NORM_TARGET:.2f}x Inductor's speed. Inductor in place: the Inductor formula with the residual "
             f"updated in place, as ours does (the candidates return a fresh residual).\n",
             f"**{(doc.get('summary') or summary(doc))['text']}**\n",
             "| dtype | hidden | tokens | residual | ours us | ours GB/s | % of copy | fastest baseline | its us | "
             "Inductor us | speed vs fastest | speed vs Inductor | target | Inductor in place us | "
             "speed vs Inductor in place |",
             "|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        us = None if r.get("error") else r.get("us")
        target = "-" if r.get("target_met") is None else "met" if r["target_met"] else "short"
        lines.append(f"| {r['dtype']} | {r['hidden']} | {r['tokens']} | {'yes' if r['residual'] else 'no'} | "
                     f"{fmt_us(us, 2)} | {fmt_us(r.get('ours_gbps'), 0)} | {_pct(r.get('ours_gbps'), copy)} | "
                     f"{baselines.NORM_LABELS.get(r.get('fastest'), '-')} | {fmt_us(r.get('fastest_us'), 2)} | "
                     f"{fmt_us(r.get('inductor_us'), 2)} | {fmt_ratio(r.get('speed_vs_fastest'))} | "
                     f"{fmt_ratio(r.get('speed_vs_inductor'))} | {target} | "
                     f"{_cell(r.get('inductor_in_place_us'))} | {fmt_ratio(r.get('speed_vs_inductor_in_place'))} |")
    names = list(dict.fromkeys(k for r in rows for k in (r.get("candidates_us") or {})))
    if names:
        lines += ["\nEvery candidate, us per call (or why it did not run):\n",
                  "| dtype | hidden | tokens | residual | " + " | ".join(names) + " |",
                  "|---|---:|---:|---|" + "---|" * len(names)]
        for r in rows:
            c = r.get("candidates_us") or {}
            cells = [_cell(c.get(n)) for n in names]
            lines.append(f"| {r['dtype']} | {r['hidden']} | {r['tokens']} | {'yes' if r['residual'] else 'no'} | "
                         + " | ".join(cells) + " |")
    errs = {}
    for r in rows:
        if r.get("error"):
            errs.setdefault(r["error"][:200], []).append(f"{r['dtype']} H={r['hidden']} T={r['tokens']}")
    if errs:
        lines.append("\nErrors / skips of ours:\n")
        lines += [f"- {e} ({len(w)} rows, first {w[0]})" for e, w in errs.items()]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path) -> str | None:
    """PNG: GB/s vs tokens per dtype (ours and the fastest baseline per hidden; the copy rate)."""
    if (mpl := pyplot()) is None:
        return None
    plt, FuncFormatter = mpl
    rows = [r for r in norm_rows(doc) if r["residual"]]
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    copy = doc.get("copy_gbps") or copy_gbps(doc)
    fig, axes = plt.subplots(1, max(1, len(dtypes)), figsize=(5.6 * max(1, len(dtypes)), 4.4), squeeze=False)
    for ax, dt in zip(axes[0], dtypes):
        for hidden in dict.fromkeys(r["hidden"] for r in rows if r["dtype"] == dt):
            sel = sorted((r for r in rows if r["dtype"] == dt and r["hidden"] == hidden), key=lambda r: r["tokens"])
            for key, style, who in (("ours_gbps", "-", "ours"), ("fastest_gbps", "--", "fastest baseline")):
                pts = [(r["tokens"], r[key]) for r in sel if r.get(key)]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3,
                            label=f"{who}, H={hidden}")
        if copy:
            ax.axhline(copy, color="gray", lw=0.8, ls=":", label="device copy rate")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("tokens")
        ax.set_ylabel("GB/s (bytes a call must move)")
        ax.set_title(f"{dt}, residual given")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(plt, fig, path, f"fused add + RMSNorm at world 1, {doc['device']} ({commit_of(doc)})")
