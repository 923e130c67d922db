"""Time of the compressed all-reduce and fused kernels against the uncompressed two-shot ones on one GPU, ranks
emulated (EmulatedWorld(4)), hidden 8192 bf16, 1024 and 8192 tokens (docs/compression.md); the push
(two-shot) and pull transports' forms on the same CTAs.

    python scripts/compression_throughput.py [--out DIR] [--world 4] [--tokens 1024 8192]
    python scripts/compression_throughput.py --replot bench/compression-throughput.json   # no GPU

All ranks share one GPU's HBM, so the figures are ratios of our kernels to each other (the kernels'
own costs: quantize/dequantize work, fewer bytes moved), never link figures: on NVLink the
compressed kernels move 8.25/16 (fp8, int8 at block 128) or 4.25/16 (mxfp4) of the bytes.
Timing: one CUDA graph per (kernel, tokens) holding every rank's call; before each of --replays
replays the inputs are refilled with fresh random data (outside the timed region); CUDA events
around each replay; the median. Writes compression-throughput.{json,md,png}.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # before CUDA starts: see emulated.py
os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")  # no lazy load inside world.run: see emulated.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from weave_nvshmem.bench import provenance, report  # noqa: E402
from weave_nvshmem.collectives.compression import CompressionSpec  # noqa: E402

HIDDEN = 8192
#: name -> (compression or None, algorithm): the two-shot kernels (push), and the pull transport's
#: (pull.ptx / fused_pull.ptx, compressed_pull.ptx / compressed_fused_pull.ptx) on the same CTAs
KERNELS = {"twoshot": (None, "twoshot"), "fp8/128": (CompressionSpec("fp8"), "auto"),
           "fp8/128/input": (CompressionSpec("fp8", 128, "input"), "auto"), "int8/128": (CompressionSpec("int8"), "auto"),
           "int8/256": (CompressionSpec("int8", 256), "auto"), "mxfp4/32": (CompressionSpec("mxfp4"), "auto"),
           "pull": (None, "pull"), "fp8/128/pull": (CompressionSpec("fp8"), "pull"),
           "mxfp4/32/pull": (CompressionSpec("mxfp4"), "pull")}


def time_kernel(emu, op, kernel, xs, outs, replays: int, ctas, res=None, weight=None) -> float:
    """Median microseconds of one graph replay of every rank's ``op`` ("all_reduce" or "fused")
    with ``kernel`` (a ``KERNELS`` value)."""
    import torch

    spec, algorithm = kernel
    kw = {"algorithm": algorithm} | ({} if spec is None else {"compression": spec})
    if op == "all_reduce":
        def step(r, c):
            c.all_reduce(xs[r], out=outs[r], ctas=ctas, **kw)
    else:
        def step(r, c):
            c.fused_allreduce_rmsnorm(xs[r], res[r], weight, 1e-6, out=outs[r], ctas=ctas, **kw)
    emu.run(step)  # warm up (loads the module)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
        emu.run(step)
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        for x in xs:
            x.normal_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    emu.check()
    del g
    return statistics.median(times)


def measure(args) -> dict:
    """The document of a run on GPU 0: provenance, the settings and one row per (op, tokens, kernel)."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("compression_throughput: needs a CUDA GPU (--replot JSON redraws a saved run without one)")
    from weave_nvshmem.collectives.channel import workspace_bytes
    from weave_nvshmem.collectives.emulated import EmulatedWorld

    w = args.world
    t0 = time.time()
    max_bytes = max(args.tokens) * HIDDEN * 2
    ctas = min(args.ctas, 128 // w)
    emu = EmulatedWorld(w, arena_bytes=workspace_bytes(w, max_bytes) + (64 << 20),
                        options={"channels": 1, "timeout_s": 20.0})
    emu.reserve(max_bytes)
    rows = []
    try:
        for tokens in args.tokens:
            xs = [torch.randn(tokens, HIDDEN, device="cuda", dtype=torch.bfloat16) for _ in range(w)]
            outs = [torch.empty_like(x) for x in xs]
            res = [torch.randn_like(x) for x in xs]
            weight = torch.ones(HIDDEN, device="cuda", dtype=torch.bfloat16)
            for op in ("all_reduce", "fused"):
                base = None
                for name, (spec, algorithm) in KERNELS.items():
                    us = time_kernel(emu, op, (spec, algorithm), xs, outs, args.replays, ctas, res, weight)
                    base = us if name == "twoshot" else base
                    rows.append({"op": op, "tokens": tokens, "kernel": name, "us": round(us, 2),
                                 "ratio_to_twoshot": round(us / base, 3),
                                 "bits_per_element": 16 if spec is None else spec.bits_per_element})
                    print(f"{op:10s} tokens {tokens:5d} {name:14s} {us:9.1f} us  x{us / base:.3f} of twoshot",
                          flush=True)
            del xs, outs, res
            torch.cuda.empty_cache()
    finally:
        emu.close()
    doc = provenance.describe("compression-throughput", torch.cuda.get_device_name(), 1, emulated=True)
    doc.update(stem="compression-throughput", world=w, hidden=HIDDEN, dtype="bf16", ctas=ctas,
               replays=args.replays, rows=rows, seconds=round(time.time() - t0, 1))
    return doc


def markdown(doc: dict) -> str:
    """The table: every kernel's time and its multiple of the uncompressed two-shot's."""
    md = [f"# Compressed all-reduce time, EmulatedWorld({doc['world']}), hidden {doc['hidden']} bf16, "
          f"{doc['ctas']} CTAs per rank", "", f"{doc['device']}, commit {report.commit_of(doc)}.", "",
          report.EMULATED_NOTE + ". Median of CUDA-graph replays with fresh random inputs.", "",
          "| op | tokens | kernel | bits/elem | us | x twoshot |", "|---|---|---|---|---|---|"]
    md += [f"| {r['op']} | {r['tokens']} | {r['kernel']} | {r['bits_per_element']} | {r['us']} | "
           f"{r['ratio_to_twoshot']} |" for r in doc["rows"]]
    return "\n".join(md) + "\n"


def plot(doc: dict, path) -> str | None:
    """PNG: each kernel's time as a multiple of the two-shot's, per op and token count."""
    if (mpl := report.pyplot()) is None:
        return None
    plt, _ = mpl
    groups = sorted({(r["op"], r["tokens"]) for r in doc["rows"]}, key=lambda g: (g[0] != "all_reduce", g[1]))
    kernels = [k for k in dict.fromkeys(r["kernel"] for r in doc["rows"]) if k != "twoshot"]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = 0.8 / len(kernels)
    for i, k in enumerate(kernels):
        ys = [next((r["ratio_to_twoshot"] for r in doc["rows"] if (r["op"], r["tokens"]) == g and r["kernel"] == k), 0)
              for g in groups]
        ax.bar([x + i * width for x in range(len(groups))], ys, width, label=k)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(groups))], [f"{op}\n{t} tokens" for op, t in groups])
    ax.set_ylabel("time / uncompressed two-shot")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=3)
    return report.save_figure(plt, fig, path, f"compressed kernels, {doc['device']}, commit {report.commit_of(doc)}")


def main(argv=None) -> int:
    options = (("--world", {"type": int, "default": 4}),
               ("--tokens", {"type": int, "nargs": "+", "default": [1024, 8192]}),
               ("--replays", {"type": int, "default": 25}),
               ("--ctas", {"type": int, "default": 32, "help": "CTAs per rank (every rank's grid must be resident)"}))
    return report.script_main(argv, __doc__.split("\n")[0], measure, markdown, plot, options)


if __name__ == "__main__":
    raise SystemExit(main())
