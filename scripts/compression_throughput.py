"""Time of the compressed all-reduce and fused kernels against the uncompressed two-shot ones on one GPU, ranks
emulated (EmulatedWorld(4)), hidden 8192 bf16, 1024 and 8192 tokens (docs/compression.md).

    python scripts/compression_throughput.py [--out DIR] [--world 4] [--tokens 1024 8192]

All ranks share one GPU's HBM, so the figures are ratios of our kernels to each other (the kernels'
own costs: quantize/dequantize work, fewer bytes moved), never link figures: on NVLink the
compressed kernels move 8.25/16 (fp8, int8 at block 128) or 4.25/16 (mxfp4) of the bytes.
Timing: one CUDA graph per (kernel, tokens) holding every rank's call; before each of --replays
replays the inputs are refilled with fresh random data (outside the timed region); CUDA events
around each replay; the median. Writes compression-throughput.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # before CUDA starts: see emulated.py
os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")  # no lazy load inside world.run: see emulated.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from weave_nvshmem.bench import provenance  # noqa: E402
from weave_nvshmem.collectives.compression import CompressionSpec  # noqa: E402

HIDDEN = 8192
KERNELS = {"twoshot": None, "fp8/128": CompressionSpec("fp8"), "fp8/128/input": CompressionSpec("fp8", 128, "input"),
           "int8/128": CompressionSpec("int8"), "int8/256": CompressionSpec("int8", 256),
           "mxfp4/32": CompressionSpec("mxfp4")}


def time_kernel(emu, op, spec, xs, outs, replays: int, ctas, res=None, weight=None) -> float:
    """Median microseconds of one graph replay of every rank's ``op`` ("all_reduce" or "fused")."""
    kw = {"algorithm": "twoshot"} if spec is None else {"compression": spec}
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench"))
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--replays", type=int, default=25)
    ap.add_argument("--ctas", type=int, default=32, help="CTAs per rank (every rank's grid must be resident)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("compression_throughput: needs a CUDA GPU")
        return 2
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
                for name, spec in KERNELS.items():
                    us = time_kernel(emu, op, spec, xs, outs, args.replays, ctas, res, weight)
                    base = us if spec is None else base
                    rows.append({"op": op, "tokens": tokens, "kernel": name, "us": round(us, 2),
                                 "ratio_to_twoshot": round(us / base, 3),
                                 "bits_per_element": 16 if spec is None else spec.bits_per_element})
                    print(f"{op:10s} tokens {tokens:5d} {name:14s} {us:9.1f} us  x{us / base:.3f} of twoshot",
                          flush=True)
            del xs, outs, res
            torch.cuda.empty_cache()
    finally:
        emu.close()
    rep = {"world": w, "hidden": HIDDEN, "dtype": "bf16", "ctas": ctas, "replays": args.replays,
           "device": torch.cuda.get_device_name(), "git_commit": provenance.git_commit(), "rows": rows, "seconds": round(time.time() - t0, 1),
           "note": "EmulatedWorld: all ranks on one GPU's HBM; ratios of our kernels, not link figures"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compression-throughput.json").write_text(json.dumps(rep, indent=1))
    md = [f"# Compressed all-reduce time, EmulatedWorld({w}), hidden {HIDDEN} bf16, {ctas} CTAs per rank", "",
          f"{rep['device']}, commit {rep['git_commit'][:10]}.", "",
          rep["note"] + ". Median of CUDA-graph replays with fresh random inputs.", "",
          "| op | tokens | kernel | bits/elem | us | x twoshot |", "|---|---|---|---|---|---|"]
    md += [f"| {r['op']} | {r['tokens']} | {r['kernel']} | {r['bits_per_element']} | {r['us']} | "
           f"{r['ratio_to_twoshot']} |" for r in rows]
    (args.out / "compression-throughput.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
