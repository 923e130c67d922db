"""How many bytes per second a few SMs can move through local HBM, by loads in flight per thread.

A diagnostic for the few-CTA targets: the collectives' per-CTA rate is bounded by what one SM can
keep in flight (Little's law) and by its port to L2. This times a plain read kernel and a copy
kernel (CuPy RawKernel, diagnostic only: the library's kernels are PTX) on 1-8 blocks of 512
threads with 4-16 independent 16-byte loads in flight per thread, over 1 GiB (beyond L2).

    python scripts/sm_bandwidth_probe.py [--out DIR]    -> sm-bandwidth-<device>.{json,md,png}
    python scripts/sm_bandwidth_probe.py --replot bench/sm-bandwidth-nvidia-h200.json   # no GPU

Each kernel over 64 MB-1 GiB is timed between CuPy events (median of 5): a probe of raw kernels,
not a collective, so it needs no CUDA graph; its document and files go through the benchmarks'
public provenance and report modules.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from weave_nvshmem.bench import provenance, report

SRC = r"""
template <int U>
__global__ void __launch_bounds__(512) rd(const int4* __restrict__ src, long long nvec, int* sink) {
    long long step = (long long)gridDim.x * blockDim.x * U;
    int acc = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x * U + threadIdx.x; i < nvec; i += step) {
        int4 v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            long long j = i + (long long)u * blockDim.x;
            v[u] = j < nvec ? __ldcg(src + j) : make_int4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    if (acc == 0x7fffffff) *sink = acc;
}
template <int U>
__global__ void __launch_bounds__(512) cp_(const int4* __restrict__ src, int4* dst, long long nvec) {
    long long step = (long long)gridDim.x * blockDim.x * U;
    for (long long i = (long long)blockIdx.x * blockDim.x * U + threadIdx.x; i < nvec; i += step) {
        int4 v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            long long j = i + (long long)u * blockDim.x;
            if (j < nvec) v[u] = __ldcg(src + j);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            long long j = i + (long long)u * blockDim.x;
            if (j < nvec) __stcg(dst + j, v[u]);
        }
    }
}
template __global__ void rd<4>(const int4*, long long, int*);
template __global__ void rd<8>(const int4*, long long, int*);
template __global__ void rd<16>(const int4*, long long, int*);
template __global__ void cp_<4>(const int4*, int4*, long long);
template __global__ void cp_<8>(const int4*, int4*, long long);
template __global__ void cp_<16>(const int4*, int4*, long long);
"""
UNROLLS = (4, 8, 16)
BLOCKS = (1, 2, 4, 8, 132)


def measure() -> list:
    """One row per (kind, loads in flight per thread, blocks): GB/s in all and per SM."""
    import cupy as cp

    names = [f"rd<{u}>" for u in UNROLLS] + [f"cp_<{u}>" for u in UNROLLS]
    mod = cp.RawModule(code=SRC, options=("-std=c++17",), name_expressions=names)
    nbytes = 1 << 30
    src = cp.random.randint(0, 1 << 30, nbytes // 4, dtype=cp.int32).view(cp.uint8)
    dst = cp.empty_like(src)
    sink = cp.zeros(1, dtype=cp.int32)
    nvec = nbytes // 16
    rows = []
    for kind in ("read", "copy"):
        for u in UNROLLS:
            k = mod.get_function(f"rd<{u}>" if kind == "read" else f"cp_<{u}>")
            for blocks in BLOCKS:
                n = nvec if blocks > 8 else nvec // 16  # 64 MB for a few blocks: still beyond L2
                a = (src, cp.int64(n), sink) if kind == "read" else (src, dst, cp.int64(n))
                k((blocks,), (512,), a)
                start, end = cp.cuda.Event(), cp.cuda.Event()
                times = []
                for _ in range(5):
                    start.record()
                    k((blocks,), (512,), a)
                    end.record()
                    end.synchronize()
                    times.append(cp.cuda.get_elapsed_time(start, end) * 1e-3)
                t = sorted(times)[len(times) // 2]
                moved = n * 16 * (1 if kind == "read" else 2)
                row = {"kind": kind, "in_flight_per_thread": u, "blocks": blocks, "GB_s": round(moved / t / 1e9, 1),
                       "GB_s_per_sm": round(moved / t / 1e9 / blocks, 1),
                       "kb_in_flight_per_sm": 512 * u * 16 // 1024}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def _per_sm(doc, kind, u, b):
    return next(r["GB_s_per_sm"] for r in doc["rows"] if r["kind"] == kind and r["in_flight_per_thread"] == u
                and r["blocks"] == b)


def markdown(doc: dict) -> str:
    """GB/s per SM by kind, loads in flight per thread and blocks."""
    lines = [f"**per-SM bandwidth probe** on {doc['device']} (commit {report.commit_of(doc)}): GB/s per SM (bytes "
             "read + written), blocks of 512 threads", "",
             "| kind | loads in flight / thread | KB in flight / SM | " + " | ".join(f"{b} blocks" for b in BLOCKS) + " |",
             "|---|---:|---:|" + "---:|" * len(BLOCKS)]
    for kind in ("read", "copy"):
        for u in UNROLLS:
            cells = [_per_sm(doc, kind, u, b) for b in BLOCKS]
            lines.append(f"| {kind} | {u} | {512 * u * 16 // 1024} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path) -> str | None:
    """PNG: GB/s per SM against blocks, per kind and loads in flight."""
    if (mpl := report.pyplot()) is None:
        return None
    plt, _ = mpl
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for kind, style in (("read", ":"), ("copy", "-")):
        for u in UNROLLS:
            ax.plot(BLOCKS, [_per_sm(doc, kind, u, b) for b in BLOCKS], style, marker="o",
                    label=f"{kind}, {512 * u * 16 // 1024} KB in flight / SM")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("blocks (one per SM)")
    ax.set_ylabel("GB/s per SM")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    return report.save_figure(plt, fig, path, f"what one SM moves through HBM, {doc['device']}, commit "
                                              f"{report.commit_of(doc)}", dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench")
    ap.add_argument("--replot", metavar="JSON", help="rewrite the .md and .png of an earlier run's JSON, no GPU")
    args = ap.parse_args(argv)
    if args.replot:
        doc, out = report.load(args.replot), Path(args.replot).parent
        doc.setdefault("stem", Path(args.replot).stem)
    else:
        import cupy as cp

        rows = measure()
        doc = provenance.describe("sm-bandwidth", cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), 1)
        doc.update(stem=f"sm-bandwidth-{doc['device_slug']}", rows=rows)
        out = Path(args.out)
    paths = report.write_outputs(doc, out, markdown=markdown, plot=plot)
    print(Path(paths["md"]).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
