"""CTA sweep of the two-shot kernels on one GPU, ranks emulated (weave_nvshmem.collectives.emulated).

What it shows: how a kernel's time falls with its CTA count when memory latency is one GPU's HBM
rather than NVLink -- the kernel's own per-CTA limits (issue rate, barriers, in-flight bytes).
All ranks share one HBM, so the times are never link figures; compare CTA counts, not machines.

    python scripts/emulated_sweep.py [--world 2 4] [--tokens 1024 8192] [--out DIR]

Writes emulated-sweep.json and .md under --out (default bench/). CUDA graphs of 5 steps, median
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
    args = ap.parse_args(argv)
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"device": name, "emulated": True, "hidden": HIDDEN, "dtype": "bfloat16",
           "commit": os.environ.get("WEAVE_NVSHMEM_COMMIT", "unknown"), "rows": rows}
    (out / "emulated-sweep.json").write_text(json.dumps(doc, indent=1))
    lines = [f"**emulated CTA sweep** on one {name} (ranks share its HBM: per-CTA limits, not link figures); "
             f"bf16, hidden {HIDDEN}, us per step", "",
             "| world | op | tokens | " + " | ".join(f"ctas={c}" for c in CTAS) + " | 8 CTAs / best |",
             "|---:|---|---:|" + "---:|" * (len(CTAS) + 1)]
    for r in rows:
        cells = [f"{r['us'][c]:.1f}" if c in r["us"] else "" for c in CTAS]
        lines.append(f"| {r['world']} | {r['op']} | {r['tokens']} | " + " | ".join(cells)
                     + f" | {r['fraction_of_best'].get(8, float('nan')):.2f} |")
    (out / "emulated-sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
