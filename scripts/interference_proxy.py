"""How much a transport's kernels slow a tensor-parallel GEMM that shares the GPU with them, ranks
emulated on one GPU: the GEMM 4096x8192 @ 8192x14336 bf16 timed alone and beside each transport's
all_reduce running continuously on a high-priority side stream.

What it shows: a proxy for the SM (and memory-port) footprint a collective takes from overlapped
compute. The pull transport (pull.ptx, 4 and 8 CTAs per rank) against the two-shot kernel (4..32
CTAs per rank) and the copy-engine transport (collectives/copyengine.py: CTAs of its reduce kernel; its
copies between emulated ranks run on the SMs, as every copy within one GPU does, so its row is an
upper bound of what the copy engines would take on NVLink). One GPU's HBM is not NVLink, and the emulated ranks share it with the GEMM, so the
report gives GEMM slowdown ratios only (time beside / time alone), never link figures.

    python scripts/interference_proxy.py [--out DIR]
    python scripts/interference_proxy.py --replot DIR/interference-proxy-<device>.json   # no GPU

The transport step (every emulated rank's all_reduce of a 4096x8192 bf16 symmetric input, zero
copy, EmulatedWorld(4)) is captured once into a CUDA graph of STEPS calls and replayed back to back
on a stream of the highest priority (a graph's kernels take the priority of the stream it is
launched into) while GEMMS GEMMs run on the default stream, each timed by CUDA events; the median
over the GEMMs whose window the background covered is compared with the median of the GEMMs timed
alone just before each round (the same clocks and thermal state). < 120 s on one H200.
"""
from __future__ import annotations

import os
import statistics
from pathlib import Path

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # before CUDA starts: see emulated.py
os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")  # no lazy load inside world.run: see emulated.py

WORLD = 4
GEMM = (4096, 8192, 14336)
AR_SHAPE = (4096, 8192)
#: (algorithm, CTAs per rank) beside the GEMM
TRANSPORTS = (("pull", 4), ("pull", 8), ("copyengine", 4), ("copyengine", 8), ("twoshot", 4), ("twoshot", 8),
              ("twoshot", 16), ("twoshot", 32))
STEPS, GEMMS, ROUNDS = 8, 30, 5


def gemm_times(a, b, c, n: int, stream) -> list:
    """Milliseconds of each of ``n`` GEMMs ``c = a @ b`` on ``stream``, back to back."""
    import torch

    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    with torch.cuda.stream(stream):
        for s, e in ev:
            s.record()
            torch.matmul(a, b, out=c)
            e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in ev]


def measure(args) -> dict:
    import torch

    from weave_nvshmem import CommOptions
    from weave_nvshmem.bench import provenance
    from weave_nvshmem.bench.harness import MB
    from weave_nvshmem.collectives.channel import workspace_bytes
    from weave_nvshmem.collectives.emulated import EmulatedWorld

    m, k, n = GEMM
    a = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    b = torch.randn(k, n, device="cuda").to(torch.bfloat16)
    c = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    main = torch.cuda.Stream()
    lo, hi = torch.cuda.Stream.priority_range() if hasattr(torch.cuda.Stream, "priority_range") else (0, -1)
    side = torch.cuda.Stream(priority=min(lo, hi))  # the highest priority (numerically lowest)
    gemm_times(a, b, c, 5, main)  # warm-up (cuBLAS heuristics, clocks)
    alone = statistics.median(sum((gemm_times(a, b, c, GEMMS, main) for _ in range(ROUNDS)), []))
    nbytes = AR_SHAPE[0] * AR_SHAPE[1] * 2
    opts = CommOptions(timeout_s=10.0, channels=1)
    arena = workspace_bytes(WORLD, nbytes) + workspace_bytes(WORLD, opts.initial_bytes) + nbytes + 64 * MB
    rows = []
    with EmulatedWorld(WORLD, arena_bytes=arena, options=opts) as world:
        world.reserve(nbytes)
        xs = world.empty(AR_SHAPE, torch.bfloat16)
        for x in xs:
            x.normal_()
        outs = [torch.empty(AR_SHAPE, dtype=torch.bfloat16, device="cuda") for _ in range(WORLD)]
        for algorithm, ctas in TRANSPORTS:
            def step(r, comm, algorithm=algorithm, ctas=ctas):
                comm.all_reduce(xs[r], out=outs[r], algorithm=algorithm, ctas=ctas)

            with torch.cuda.stream(side):
                world.run(step)  # eager once: loads the kernel, surfaces errors
            torch.cuda.synchronize()
            world.check()
            g = torch.cuda.CUDAGraph()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
                for _ in range(STEPS):
                    world.run(step)
            # one replay alone: how many the GEMM window needs
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(side):
                t0.record()
                g.replay()
                t1.record()
            torch.cuda.synchronize()
            per_replay = t0.elapsed_time(t1)
            replays = int(2.0 * GEMMS * alone / max(per_replay, 1e-3)) + 2
            beside, alone_now = [], []
            for _ in range(ROUNDS):
                alone_now += gemm_times(a, b, c, GEMMS, main)  # alone, just before: the same clocks
                with torch.cuda.stream(side):
                    for _ in range(replays):
                        g.replay()
                times = gemm_times(a, b, c, GEMMS, main)
                beside += times[1:]  # the first GEMM may start before the background does
            torch.cuda.synchronize()
            world.check()
            med, alone = statistics.median(beside), statistics.median(alone_now)
            rows.append({"algorithm": algorithm, "ctas": ctas, "gemm_ms_alone": round(alone, 4),
                         "gemm_ms_beside": round(med, 4), "slowdown": round(med / alone, 3),
                         "transport_ms_per_call_alone": round(per_replay / STEPS, 4)})
            print(rows[-1], flush=True)
            del g
        world.free(xs)
    doc = provenance.describe("interference-proxy", torch.cuda.get_device_name(), 1, emulated=True)
    doc.update(stem=f"interference-proxy-{doc['device_slug']}", world=WORLD, gemm=list(GEMM),
               all_reduce_shape=list(AR_SHAPE), dtype="bfloat16", steps=STEPS, gemms=GEMMS, rounds=ROUNDS, rows=rows)
    return doc


def markdown(doc: dict) -> str:
    from weave_nvshmem.bench import report

    m, k, n = doc["gemm"]
    lines = [f"**GEMM interference proxy** on one {doc['device']} (commit {report.commit_of(doc)}): GEMM "
             f"{m}x{k} @ {k}x{n} {doc['dtype']} beside EmulatedWorld({doc['world']}) all_reduce of "
             f"{doc['all_reduce_shape'][0]}x{doc['all_reduce_shape'][1]} (zero copy) running continuously on a "
             f"high-priority stream. {report.EMULATED_NOTE}. Slowdown = GEMM time beside / alone (the earlier "
             "figure for twoshot was 1.16-1.26x on 4-32 CTAs). copyengine: CTAs of its reduce kernel; its copies "
             "between emulated ranks run on the SMs (copies within one GPU do), so its row bounds from above what "
             "it takes from the GEMM where copy engines move the bytes.", "",
             "| transport | CTAs per rank | GEMM slowdown |", "|---|---:|---:|"]
    for r in doc["rows"]:
        lines.append(f"| {r['algorithm']} | {r['ctas']} | {r['slowdown']:.3f}x |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path):
    """Bars: the GEMM's slowdown per transport and CTA count."""
    from weave_nvshmem.bench import report

    got = report.pyplot()
    if got is None:
        return None
    plt, _ = got
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    labels = [f"{r['algorithm']}\n{r['ctas']} CTAs" for r in doc["rows"]]
    ax.bar(labels, [r["slowdown"] for r in doc["rows"]], color=["C0" if r["algorithm"] == "pull" else "C1"
                                                              for r in doc["rows"]])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("GEMM time beside / alone")
    m, k, n = doc["gemm"]
    return report.save_figure(plt, fig, path, f"GEMM {m}x{k}@{k}x{n} beside an all_reduce (emulated ranks), "
                              f"{doc['device']}, commit {report.commit_of(doc)}")


def main(argv=None) -> int:
    from weave_nvshmem.bench import report

    return report.script_main(argv, __doc__.split("\n")[0], measure, markdown, plot)


if __name__ == "__main__":
    raise SystemExit(main())
