"""CTA sweep of the two-shot kernels on one GPU, ranks emulated (weave_nvshmem.collectives.emulated).

What it shows: how a kernel's time falls with its CTA count when memory latency is one GPU's HBM
rather than NVLink -- the kernel's own per-CTA limits (issue rate, barriers, in-flight bytes).
All ranks share one HBM, so the times are never link figures; compare CTA counts, not machines.

    python scripts/emulated_sweep.py [--world 2 4] [--tokens 1024 8192] [--out DIR]

Writes emulated-sweep-<device>.{json,md,png} under --out (default bench/). CUDA graphs of 5 steps, median
of 12 replays, random inputs (2 sets, alternated), bf16, hidden 8192.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # before CUDA starts: see emulated.py

import torch  # noqa: E402

from weave_nvshmem import CommOptions  # noqa: E402
from weave_nvshmem.collectives.emulated import EmulatedWorld  # noqa: E402
from weave_nvshmem.collectives.plan import device_slug  # noqa: E402

HIDDEN = 8192
CTAS = (2, 4, 8, 16, 32, 64, 128)
OPS = ("fused_twoshot", "allreduce_twoshot", "reduce_scatter", "all_gather")


def step_fn(op, xs, res, w_, outs, ctas):
    if op == "fused_twoshot":
        return lambda r, c: c.fused_allreduce_rmsnorm(xs[r], res[r], w_, 1e-6, algorithm="twoshot", ctas=ctas,
                                                      out=outs[r])
    if op == "allreduce_twoshot":
        return lambda r, c: c.all_reduce(xs[r], out=outs[r], algorithm="twoshot", ctas=ctas)
    if op == "reduce_scatter":
        return lambda r, c: c.reduce_scatter(xs[r], out=outs[r][: xs[r].shape[0] // len(xs)], ctas=ctas)
    n = xs[0].shape[0] // len(xs)
    return lambda r, c: c.all_gather(xs[r][:n], out=outs[r], ctas=ctas)


def time_op(world, side, op, tokens, ctas, steps=5, replays=12, sets=2) -> float:
    """Median microseconds of one step (every rank's op, run concurrently)."""
    w = world.world
    pools = [[torch.randn(tokens, HIDDEN, device="cuda").to(torch.bfloat16) for _ in range(w)] for _ in range(sets)]
    res = [torch.randn(tokens, HIDDEN, device="cuda").to(torch.bfloat16) for _ in range(w)]
    outs = [torch.empty(tokens, HIDDEN, device="cuda", dtype=torch.bfloat16) for _ in range(w)]
    weight = torch.randn(HIDDEN, device="cuda").to(torch.bfloat16)
    graphs = []
    side.wait_stream(torch.cuda.current_stream())
    for xs in pools:
        fn = step_fn(op, xs, res, weight, outs, ctas)
        world.run(fn)  # warm up (loads the kernel) outside capture
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
            for _ in range(steps):
                world.run(fn)
        graphs.append(g)
    torch.cuda.synchronize()
    world.check()
    times = []
    for i in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graphs[i % sets].replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / steps)
    world.check()
    del graphs
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    ap.add_argument("--out", default="bench")
    ap.add_argument("--replot", metavar="JSON", help="rewrite the .md and .png of an earlier run's JSON, no GPU")
    args = ap.parse_args(argv)
    if args.replot:
        print(write_reports(json.loads(Path(args.replot).read_text()), Path(args.replot).with_suffix("")))
        return 0
    rows = []
    name = torch.cuda.get_device_name()
    for w in args.world:
        need = max(args.tokens) * HIDDEN * 2
        with EmulatedWorld(w, arena_bytes=2 * (2 * w + 3) * need + (64 << 20),
                           options=CommOptions(timeout_s=10.0)) as world:
            world.reserve(need)
            side = torch.cuda.Stream()  # capture stream, one for the whole sweep of this world
            for op in args.ops:
                for tokens in args.tokens:
                    t0 = time.perf_counter()
                    row = {"world": w, "op": op, "tokens": tokens, "us": {}}
                    for ctas in CTAS:
                        if ctas * w > world.sms:
                            continue
                        row["us"][ctas] = round(time_op(world, side, op, tokens, ctas), 2)
                    best = min(row["us"].values())
                    row["fraction_of_best"] = {c: round(best / t, 3) for c, t in row["us"].items()}
                    print(json.dumps(row), f"({time.perf_counter() - t0:.1f} s)", flush=True)
                    rows.append(row)
    doc = {"device": name, "emulated": True, "hidden": HIDDEN, "dtype": "bfloat16",
           "commit": os.environ.get("WEAVE_NVSHMEM_COMMIT", "unknown"), "rows": rows}
    stem = Path(args.out) / f"emulated-sweep-{device_slug(name)}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    print(write_reports(doc, stem))
    return 0


def write_reports(doc: dict, stem: Path) -> str:
    """<stem>.md (table) and <stem>.png (fraction of the best time per CTA count); returns the table."""
    ctas = sorted({int(c) for r in doc["rows"] for c in r["us"]})
    lines = [f"**emulated CTA sweep** on one {doc['device']} (commit {doc['commit']}; ranks share its HBM: "
             f"per-CTA limits, not link figures); {doc['dtype']}, hidden {doc['hidden']}, us per step", "",
             "| world | op | tokens | " + " | ".join(f"ctas={c}" for c in ctas) + " | 8 CTAs / best |",
             "|---:|---|---:|" + "---:|" * (len(ctas) + 1)]
    for r in doc["rows"]:
        us = {int(c): t for c, t in r["us"].items()}
        cells = [f"{us[c]:.1f}" if c in us else "" for c in ctas]
        eight = min(us.values()) / us[8] if 8 in us else float("nan")
        lines.append(f"| {r['world']} | {r['op']} | {r['tokens']} | " + " | ".join(cells) + f" | {eight:.2f} |")
    table = "\n".join(lines) + "\n"
    stem.with_suffix(".md").write_text(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return table
    tokens = max(r["tokens"] for r in doc["rows"])
    ops = sorted({r["op"] for r in doc["rows"]})
    fig, axes = plt.subplots(1, len(ops), figsize=(4 * len(ops), 3.6), sharey=True)
    for ax, op in zip(axes, ops):
        for r in doc["rows"]:
            if r["op"] == op and r["tokens"] == tokens:
                us = sorted((int(c), t) for c, t in r["us"].items())
                ax.plot([c for c, _ in us], [min(t for _, t in us) / t for _, t in us], marker="o",
                        label=f"world {r['world']}")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{op}, {tokens} tokens", fontsize=9)
        ax.set_xlabel("CTAs per rank")
        ax.axhline(0.9, color="grey", lw=0.5, ls=":")
    axes[0].set_ylabel("fraction of the best time")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"emulated ranks on one {doc['device']} (shared HBM), commit {doc['commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    return table


if __name__ == "__main__":
    raise SystemExit(main())
