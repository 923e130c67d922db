"""Tables and plots of the microbenchmark documents (allreduce, fused, reducescatter, allgather,
tune): pure functions of the JSON, no GPU. Variants and labels come from the document itself
(``variants.describe``), so a document drawn again shows what was measured when it was written."""
from __future__ import annotations

from . import variants as reg
from .harness import fmt_bytes
from .cells import commit_of, fmt_ratio, fmt_us, pyplot, save_figure, scope_note

OPS = {"allreduce": "all_reduce", "reducescatter": "reduce_scatter", "allgather": "all_gather"}


def series_of(doc: dict) -> tuple[tuple, tuple, dict]:
    """(variants, baselines, labels) of a document; documents of bench.py (schema 1) by their names."""
    name = doc["name"]
    if "variants" in doc:
        return tuple(doc["variants"]), tuple(doc["baselines"]), dict(doc["labels"])
    seen = tuple(dict.fromkeys(r["variant"] for r in doc["results"]))
    labels = {v.name: v.label for v in reg.SUITES.get(name, ())}
    labels.update(reg.LEGACY_LABELS)
    return seen, reg.LEGACY_BASELINES.get(name, ()), {v: labels.get(v, v) for v in seen}


def _index(rows):
    return {(r["series"], r.get("hidden"), r.get("tokens"), r["bytes"], r["variant"], r.get("ctas")): r for r in rows}


def _us(idx, series, hidden, tokens, nbytes, variant, ctas=None):
    r = idx.get((series, hidden, tokens, nbytes, variant, ctas))
    return r.get("us") if r and not r.get("error") else None


def speedups(doc: dict) -> list:
    """Per size: baseline us / ours_auto us for each baseline (> 1: ours faster), on rank 0 and
    on the slowest rank (``vs_max_rank``)."""
    _, baselines, _ = series_of(doc)
    rows = doc["results"]
    idx = _index(rows)
    out, seen = [], set()
    for r in rows:
        key = (r["series"], r.get("hidden"), r.get("tokens"), r["bytes"])
        if r["series"] not in ("tokens", "bytes") or key in seen:
            continue
        seen.add(key)
        ours = _us(idx, *key, "ours_auto")
        ours_max = idx.get(key + ("ours_auto", None), {}).get("us_max_rank")
        vs, vs_max = {}, {}
        for b in baselines:
            bu = _us(idx, *key, b)
            bm = idx.get(key + (b, None), {}).get("us_max_rank")
            vs[b] = bu / ours if bu and ours else None
            vs_max[b] = bm / ours_max if bm and ours_max and bu else None
        out.append({"series": key[0], "hidden": key[1], "tokens": key[2], "bytes": key[3], "ours_auto_us": ours,
                    "vs": vs, "vs_max_rank": vs_max})
    return out


def prepare(doc: dict) -> dict:
    """Add the derived ``speedups`` to ``doc``."""
    doc["speedups"] = speedups(doc)
    return doc


def _keys(rows, series, hidden):
    ks = []
    for r in rows:
        if r["series"] == series and r.get("hidden") == hidden and (r.get("tokens"), r["bytes"]) not in ks:
            ks.append((r.get("tokens"), r["bytes"]))
    return ks


def _groups(sweep):
    return list(dict.fromkeys((r["variant"], r.get("hidden"), r.get("tokens")) for r in sweep))


def markdown(doc: dict, full: bool = True) -> str:
    """Markdown of a microbenchmark document (``full``: also raw sizes, CTA sweeps, norm choices, errors)."""
    name, rows = doc["name"], doc["results"]
    variants, baselines, labels = series_of(doc)
    idx = _index(rows)
    sp = {(x["series"], x["hidden"], x["tokens"], x["bytes"]): x for x in doc.get("speedups") or speedups(doc)}
    note = scope_note(doc)
    lines = [f"**{name}** on {doc['world_size']}x {doc['device']}, commit {commit_of(doc)} (bf16; median us per call, "
             f"rank 0, CUDA graphs; speedup = baseline / ours auto){'; ' + note if note else ''}\n"]
    shown = variants if full else tuple(v for v in variants if v == "ours_auto" or v in baselines)

    def table(series, hidden, keys, first_col):
        cols = [first_col] + [labels.get(v, v) + " us" for v in shown] + [f"x vs {labels.get(b, b)}" for b in baselines]
        out = ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
        for tokens, nbytes in keys:
            cells = [str(tokens) if tokens is not None else fmt_bytes(nbytes)]
            cells += [fmt_us(_us(idx, series, hidden, tokens, nbytes, v)) for v in shown]
            s = sp.get((series, hidden, tokens, nbytes), {}).get("vs", {})
            cells += [fmt_ratio(s.get(b)) for b in baselines]
            out.append("| " + " | ".join(cells) + " |")
        return out

    if name == "fused":
        for hidden in dict.fromkeys(r.get("hidden") for r in rows if r["series"] == "tokens"):
            lines.append(f"\nfused all-reduce + residual add + RMSNorm, hidden {hidden}:\n")
            lines += table("tokens", hidden, _keys(rows, "tokens", hidden), "tokens")
    else:
        hidden = reg.AR_HIDDEN
        what = f"{OPS.get(name, name)}, tokens x {hidden}"
        if name != "allreduce":
            what += f" (the full tensor; each rank holds 1/{doc['world_size']} of the rows)"
        lines.append(f"{what}:\n")
        lines += table("tokens", hidden, _keys(rows, "tokens", hidden), "tokens")
        if full and _keys(rows, "bytes", None):
            lines.append(f"\n{OPS.get(name, name)}, raw sizes:\n")
            lines += table("bytes", None, _keys(rows, "bytes", None), "bytes")
    if not full:
        return "\n".join(lines) + "\n"
    norms = {(r.get("hidden"), r.get("tokens")): r["norm"] for r in rows if r.get("norm")}
    if norms:
        lines.append("\nshared fused add+RMSNorm used by the baselines (fastest measured): "
                     + "; ".join(f"H={h} T={t}: {n}" for (h, t), n in norms.items()))
    sweep = [r for r in rows if r["series"] == "cta_sweep"]
    if sweep:
        ctas = sorted({r["ctas"] for r in sweep})
        lines += ["\nCTA sweep (fused: replicated residual), us per call:\n",
                  "| variant | hidden | tokens | " + " | ".join(f"ctas={c}" for c in ctas) + " | default |",
                  "|" + "---:|" * (len(ctas) + 4)]
        for v, hidden, tokens in _groups(sweep):
            cells = [labels.get(v, v), str(hidden), str(tokens)]
            cells += [fmt_us(_us(idx, "cta_sweep", hidden, tokens, tokens * hidden * 2, v, c)) for c in ctas]
            cells.append(fmt_us(_us(idx, "tokens", hidden, tokens, tokens * hidden * 2, v)))
            lines.append("| " + " | ".join(cells) + " |")
    errs = {}
    for r in rows:
        if r.get("error"):
            key = (r["variant"], r["error"][:200])
            errs[key] = errs.get(key, 0) + 1
    if errs:
        lines.append("\nErrors / skips:\n")
        lines += [f"- {v} ({n} rows): {e}" for (v, e), n in errs.items()]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path) -> str | None:
    """PNG: latency vs size per variant (log-log) per panel, and the CTA sweep."""
    if (mpl := pyplot()) is None:
        return None
    plt, FuncFormatter = mpl
    name, rows = doc["name"], doc["results"]
    variants, _, labels = series_of(doc)
    if name == "fused":
        panels = [("tokens", h, "tokens", f"fused AR+add+RMSNorm, hidden {h}")
                  for h in dict.fromkeys(r.get("hidden") for r in rows if r["series"] == "tokens")]
    else:
        panels = [("tokens", reg.AR_HIDDEN, "tokens", f"{OPS.get(name, name)}, tokens x {reg.AR_HIDDEN} bf16")]
        if any(r["series"] == "bytes" for r in rows):
            panels.append(("bytes", None, "bytes", f"{OPS.get(name, name)}, raw sizes"))
    panels.append(("cta_sweep", None, "ctas", "CTA sweep"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
    for ax, (series, hidden, xkey, title) in zip(axes[0], panels):
        if series == "cta_sweep":
            sweep = [r for r in rows if r["series"] == "cta_sweep" and not r.get("error") and r.get("us")]
            for v, hidden_g, tokens in _groups(sweep):
                pts = sorted((r["ctas"], r["us"]) for r in sweep if (r["variant"], r.get("hidden"), r.get("tokens"))
                             == (v, hidden_g, tokens))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        label=f"{labels.get(v, v)} T={tokens}" + (f" H={hidden_g}" if name == "fused" else ""))
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        else:
            for v in variants:
                pts = sorted((r[xkey], r["us"]) for r in rows if r["series"] == series and r.get("hidden") == hidden
                             and r["variant"] == v and not r.get("error") and r.get("us"))
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "-" if v.startswith("ours") else "--",
                            marker="o", ms=3, label=labels.get(v, v))
            ax.set_xscale("log", base=2 if xkey == "tokens" else 4)
            ax.xaxis.set_major_formatter(FuncFormatter(
                (lambda v, _: f"{v:g}") if xkey == "tokens" else (lambda v, _: fmt_bytes(int(v)).replace(" ", ""))))
        ax.set_yscale("log")
        ax.set_xlabel(xkey)
        ax.set_title(title)
        ax.set_ylabel("us per call (median, rank 0)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    note = scope_note(doc)
    return save_figure(plt, fig, path, f"weave_nvshmem {name}: {doc['world_size']}x {doc['device']} "
                                       f"({commit_of(doc)})" + (f"\n{note}" if note else ""))


def tune_markdown(doc: dict) -> str:
    """The picks of a tune document as a markdown table."""
    lines = [f"**tune** on {doc['world_size']}x {doc['device']}, commit {commit_of(doc)} (bf16, tokens x "
             f"{reg.AR_HIDDEN}; fewest CTAs within {reg.TUNE_TOLERANCE:.0%} of the fastest)\n",
             "| op | tokens | algorithm | ctas | us |", "|---|---:|---|---:|---:|"]
    for r in doc["results"]:
        lines.append(f"| {r['op']} | {r['tokens']} | {r.get('algorithm', r.get('error', '-'))} | {r.get('ctas', '-')} "
                     f"| {fmt_us(r.get('us'))} |")
    return "\n".join(lines) + "\n"
