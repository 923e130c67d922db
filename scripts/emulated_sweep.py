"""CTA sweep of the two-shot kernels on one GPU, ranks emulated (weave_nvshmem.collectives.emulated).

What it shows: how a kernel's time falls with its CTA count when memory latency is one GPU's HBM
rather than NVLink -- the kernel's own per-CTA limits (issue rate, barriers, in-flight bytes).
All ranks share one HBM, so the report gives ratios of our kernels to each other (the fraction of
the best time per CTA count), never link figures; the JSON keeps the raw times.

    python scripts/emulated_sweep.py [--world 2 4] [--tokens 1024 8192] [--out DIR]
    python scripts/emulated_sweep.py --replot bench/emulated-sweep-nvidia-h200.json   # no GPU

Writes emulated-sweep-<device>.{json,md,png} under --out (default bench/). Timed by the public
harness (weave_nvshmem.bench.harness): one CUDA graph of 5 steps on 2 random input sets per rank,
regenerated and L2 evicted before each of 12 replays, median; bf16, hidden 8192.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # before CUDA starts: see emulated.py
os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")  # no lazy load inside world.run: see emulated.py

HIDDEN = 8192
CTAS = (2, 4, 8, 16, 32, 64, 128)
OPS = ("fused_twoshot", "allreduce_twoshot", "reduce_scatter", "all_gather")
STEPS, SETS, REPLAYS = 5, 2, 12


def step_fn(op, xs, res, weight, outs, ctas):
    """``fn(rank, comm)``: rank's ``op`` on its input ``xs[rank]``."""
    if op == "fused_twoshot":
        return lambda r, c: c.fused_allreduce_rmsnorm(xs[r], res[r], weight, 1e-6, algorithm="twoshot", ctas=ctas,
                                                      out=outs[r])
    if op == "allreduce_twoshot":
        return lambda r, c: c.all_reduce(xs[r], out=outs[r], algorithm="twoshot", ctas=ctas)
    if op == "reduce_scatter":
        return lambda r, c: c.reduce_scatter(xs[r], out=outs[r][: xs[r].shape[0] // len(xs)], ctas=ctas)
    n = xs[0].shape[0] // len(xs)
    return lambda r, c: c.all_gather(xs[r][:n], out=outs[r], ctas=ctas)


def sweep(h, world, op, tokens) -> dict:
    """{ctas: median us of one step (every rank's op, run concurrently)} at the CTA counts that fit."""
    import torch

    from weave_nvshmem.bench.harness import InputSets, replicated_weight

    w = world.world
    ranks = [InputSets(h, (tokens, HIDDEN), SETS, key=31 * tokens + r, residual=True) for r in range(w)]
    outs = [torch.empty(tokens, HIDDEN, device="cuda", dtype=torch.bfloat16) for _ in range(w)]
    weight = replicated_weight(h, HIDDEN)

    def refresh():
        for sets in ranks:
            sets.refresh()

    us = {}
    for ctas in CTAS:
        if ctas * w > world.sms:
            continue
        fns = [step_fn(op, [sets.xs[i] for sets in ranks], [sets.rs[i] for sets in ranks], weight, outs, ctas)
               for i in range(SETS)]
        res = h.measure(lambda i: world.run(fns[i]), refresh, SETS, STEPS, 2, REPLAYS)
        world.check()
        if res.get("error"):
            raise RuntimeError(f"{op} world {w} tokens {tokens} ctas {ctas}: {res['error']}")
        us[ctas] = round(res["us"], 2)
    return us


def measure(args) -> dict:
    """Every (world, op, tokens) row; the document to write."""
    from weave_nvshmem import CommOptions
    from weave_nvshmem.bench import provenance
    from weave_nvshmem.bench.harness import MB, Harness
    from weave_nvshmem.collectives.channel import workspace_bytes
    from weave_nvshmem.collectives.emulated import EmulatedWorld

    h = Harness(distributed=False)
    opts = CommOptions(timeout_s=10.0, channels=1)
    rows = []
    for w in args.world:
        need = max(args.tokens) * HIDDEN * 2
        arena = workspace_bytes(w, need) + workspace_bytes(w, opts.initial_bytes) + 64 * MB
        with EmulatedWorld(w, arena_bytes=arena, options=opts) as world:
            world.reserve(need)
            for op in args.ops:
                for tokens in args.tokens:
                    t0 = time.perf_counter()
                    row = {"world": w, "op": op, "tokens": tokens, "us": sweep(h, world, op, tokens)}
                    best = min(row["us"].values())
                    row["fraction_of_best"] = {c: round(best / t, 3) for c, t in row["us"].items()}
                    h.log(f"{row} ({time.perf_counter() - t0:.1f} s)")
                    rows.append(row)
    doc = provenance.describe("emulated-sweep", h.device_name, 1, emulated=True)
    doc.update(stem=f"emulated-sweep-{doc['device_slug']}", worlds=list(args.world), hidden=HIDDEN, dtype="bfloat16",
               steps=STEPS, sets=SETS, replays=REPLAYS, rows=rows)
    return doc


def markdown(doc: dict) -> str:
    """The fraction of the best time per CTA count (1.00 = this op's best CTA count), per row."""
    from weave_nvshmem.bench import report

    ctas = sorted({int(c) for r in doc["rows"] for c in r["us"]})
    lines = [f"**emulated CTA sweep** on one {doc['device']} (commit {report.commit_of(doc)}); {doc['dtype']}, hidden "
             f"{doc['hidden']}: best time / time per CTA count. {report.EMULATED_NOTE}.", "",
             "| world | op | tokens | " + " | ".join(f"ctas={c}" for c in ctas) + " |",
             "|---:|---|---:|" + "---:|" * len(ctas)]
    for r in doc["rows"]:
        us = {int(c): t for c, t in r["us"].items()}
        best = min(us.values())
        cells = [f"{best / us[c]:.2f}" if c in us else "" for c in ctas]
        lines.append(f"| {r['world']} | {r['op']} | {r['tokens']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path) -> str | None:
    """PNG: the fraction of the best time per CTA count, one panel per op at the largest token count."""
    from weave_nvshmem.bench import report

    if (mpl := report.pyplot()) is None:
        return None
    plt, _ = mpl
    tokens = max(r["tokens"] for r in doc["rows"])
    ops = sorted({r["op"] for r in doc["rows"]})
    fig, axes = plt.subplots(1, len(ops), figsize=(4 * len(ops), 3.6), sharey=True, squeeze=False)
    for ax, op in zip(axes[0], ops):
        for r in doc["rows"]:
            if r["op"] == op and r["tokens"] == tokens:
                us = sorted((int(c), t) for c, t in r["us"].items())
                ax.plot([c for c, _ in us], [min(t for _, t in us) / t for _, t in us], marker="o",
                        label=f"world {r['world']}")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{op}, {tokens} tokens", fontsize=9)
        ax.set_xlabel("CTAs per rank")
        ax.axhline(0.9, color="grey", lw=0.5, ls=":")
    axes[0][0].set_ylabel("fraction of the best time")
    axes[0][-1].legend(fontsize=8)
    return report.save_figure(plt, fig, path, f"emulated ranks on one {doc['device']} (shared HBM: ratios, not link "
                                              f"figures), commit {report.commit_of(doc)}", dpi=110)


def main(argv=None) -> int:
    from weave_nvshmem.bench import report

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    ap.add_argument("--out", default="bench")
    ap.add_argument("--replot", metavar="JSON", help="rewrite the .md and .png of an earlier run's JSON, no GPU")
    args = ap.parse_args(argv)
    if args.replot:
        doc = report.load(args.replot)
        doc.setdefault("stem", Path(args.replot).stem)
        doc.setdefault("emulated", True)
        out = Path(args.replot).parent
    else:
        doc, out = measure(args), Path(args.out)
    paths = report.write_outputs(doc, out, markdown=markdown, plot=plot)
    print(Path(paths["md"]).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
