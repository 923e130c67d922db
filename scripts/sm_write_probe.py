"""How many bytes per second a few SMs write to local HBM: vector stores against TMA bulk stores.

A diagnostic for the few-CTA targets: the collectives' local stores bound them (docs/transport.md),
so this asks whether TMA bulk stores raise what one SM writes. It times (CuPy RawKernel, diagnostic
only: the library's kernels are PTX) ``st.global.v4`` (plain and ``.cs``, blocks of 1024 threads,
one 16-byte store a thread per step) and ``cp.async.bulk.global.shared::cta`` (blocks of 512
threads: lane 0 of 1, 4 or 16 warps stores a 4, 16 or 64 KB shared buffer again and again, with
``cp.async.bulk.wait_group.read`` 2 or 8) on 1-32 blocks, one per SM, over 1 GiB (beyond L2).

    python scripts/sm_write_probe.py [--out DIR]    -> sm-write-<device>.{json,md,png}
    python scripts/sm_write_probe.py --replot bench/sm-write-nvidia-h200.json   # no GPU

Each kernel is timed between CuPy events (the median of 6 runs, the upper middle one): a probe of
raw kernels, not a collective, so it needs no CUDA graph; its document and files go through the
benchmarks' public provenance and report modules.
"""
from __future__ import annotations

import json

from weave_nvshmem.bench import provenance, report

SRC = r"""
extern "C" __global__ void __launch_bounds__(1024) st_v4(int4* dst, long long nvec, int cs) {
    long long step = (long long)gridDim.x * blockDim.x;
    int4 v = make_int4(threadIdx.x, 1, 2, 3);
    if (cs) { for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < nvec; i += step) __stcs(dst + i, v); }
    else    { for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < nvec; i += step) dst[i] = v; }
}
extern "C" __global__ void __launch_bounds__(512) tma_st(char* dst, long long nbytes, int chunk, int issuers, int depth) {
    extern __shared__ __align__(128) int4 buf[];
    for (int i = threadIdx.x; i < chunk / 16; i += blockDim.x) buf[i] = make_int4(i, 1, 2, 3);
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0 && warp < issuers) {
        unsigned s = (unsigned)__cvta_generic_to_shared(buf);
        long long step = (long long)gridDim.x * issuers * chunk;
        for (long long off = ((long long)blockIdx.x * issuers + warp) * chunk; off + chunk <= nbytes; off += step) {
            asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;"
                         :: "l"(dst + off), "r"(s), "r"(chunk) : "memory");
            asm volatile("cp.async.bulk.commit_group;" ::: "memory");
            if (depth == 2) asm volatile("cp.async.bulk.wait_group.read 2;" ::: "memory");
            else asm volatile("cp.async.bulk.wait_group.read 8;" ::: "memory");
        }
        asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
    }
}
"""
NBYTES = 1 << 30
CTAS = (1, 2, 4, 8, 16, 32)
#: (kind, chunk KB, issuing warps, wait depth); the vector stores have no chunk, issuers or depth
METHODS = [("st.v4", None, None, None), ("st.v4.cs", None, None, None)] + [
    ("tma", c, i, d) for c in (4, 16, 64) for i in (1, 4, 16) for d in (2, 8)]
#: a best TMA rate within this fraction of the best vector store's does not raise the write rate
NOISE = 0.02


def _seconds(launch) -> float:
    """The median (upper middle) of 6 runs of ``launch`` between CuPy events, in seconds."""
    import cupy as cp

    times = []
    for _ in range(6):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        launch()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) * 1e-3)
    return sorted(times)[len(times) // 2]


def measure() -> list:
    """One row per (store method, blocks): GB/s written in all and per SM."""
    import cupy as cp

    mod = cp.RawModule(code=SRC, options=("-std=c++17", "-arch=sm_90a"))
    st_v4, tma_st = mod.get_function("st_v4"), mod.get_function("tma_st")
    dst = cp.empty(NBYTES, dtype=cp.uint8)
    rows = []
    for ctas in CTAS:
        for kind, chunk_kb, issuers, depth in METHODS:
            if kind == "tma":
                chunk = chunk_kb * 1024
                tma_st.max_dynamic_shared_size_bytes = chunk
                args = (dst, cp.int64(NBYTES), cp.int32(chunk), cp.int32(issuers), cp.int32(depth))
                t = _seconds(lambda: tma_st((ctas,), (512,), args, shared_mem=chunk))
            else:
                args = (dst, cp.int64(NBYTES // 16), cp.int32(kind == "st.v4.cs"))
                t = _seconds(lambda: st_v4((ctas,), (1024,), args))
            row = {"kind": kind, "chunk_kb": chunk_kb, "issuers": issuers, "wait_depth": depth, "ctas": ctas,
                   "GB_s": round(NBYTES / t / 1e9, 2), "GB_s_per_sm": round(NBYTES / t / 1e9 / ctas, 2)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def label(kind, chunk_kb, issuers, depth) -> str:
    """A method's name in the table and the plot."""
    if kind != "tma":
        return {"st.v4": "st.global.v4", "st.v4.cs": "st.global.cs.v4"}[kind]
    return f"TMA {chunk_kb} KB, {issuers} warp{'s' if issuers > 1 else ''}, wait {depth}"


def _method(row) -> tuple:
    """A row's (kind, chunk KB, issuers, wait depth)."""
    return row["kind"], row["chunk_kb"], row["issuers"], row["wait_depth"]


def _methods(doc) -> list:
    """The methods of the document's rows, in their order."""
    return list(dict.fromkeys(_method(r) for r in doc["rows"]))


def _per_sm(doc, method, ctas) -> float:
    return next(r["GB_s_per_sm"] for r in doc["rows"] if _method(r) == method and r["ctas"] == ctas)


def summary(doc) -> list:
    """Per block count: (blocks, best vector store, best TMA, worst TMA), GB/s per SM."""
    out = []
    for c in doc["ctas"]:
        st = [r["GB_s_per_sm"] for r in doc["rows"] if r["ctas"] == c and r["kind"] != "tma"]
        tma = [r["GB_s_per_sm"] for r in doc["rows"] if r["ctas"] == c and r["kind"] == "tma"]
        out.append((c, max(st), max(tma), min(tma)))
    return out


def markdown(doc: dict) -> str:
    """The finding, the best and worst of each store family by blocks, and every method's GB/s per SM."""
    s = summary(doc)
    gain = max(t / v for _, v, t, _ in s)
    upto = [x for x in s if x[0] <= 16]
    worst_rate, worst_ctas, worst = min((r["GB_s_per_sm"], r["ctas"], _method(r)) for r in doc["rows"]
                                        if r["kind"] == "tma")
    verdict = ("TMA bulk stores do not raise an SM's write rate" if gain <= 1 + NOISE else
               f"TMA bulk stores raise an SM's write rate by up to {gain - 1:.0%}")
    lines = [f"**per-SM write probe** on {doc['device']} (commit {report.commit_of(doc)}): GB/s per SM written "
             f"to HBM over {doc['nbytes'] >> 30} GiB, one block per SM; st.global.v4 on blocks of 1024 threads, TMA "
             "bulk stores (cp.async.bulk.global.shared::cta of a 4-64 KB shared buffer by lane 0 of 1-16 warps, "
             "wait_group.read 2 or 8) on blocks of 512.", ""]
    if doc.get("note"):
        lines += [f"Source: {doc['note']}", ""]
    lines += [f"**Finding:** every store method tops out at {min(x[1] for x in upto):.0f}-"
              f"{max(max(x[1], x[2]) for x in upto):.0f} GB/s per SM from {upto[0][0]} to {upto[-1][0]} blocks "
              f"(best of each family; {s[-1][1]:.0f} at {s[-1][0]}), and the best TMA configuration is at most "
              f"{gain:.3f}x the best vector store: {verdict}. The worst "
              f"TMA configuration, {label(*worst)} at {worst_ctas} blocks, writes {worst_rate:.1f} GB/s per SM.", "",
              "| blocks | best st.global.v4 | best TMA | worst TMA | best TMA / best st |",
              "|---:|---:|---:|---:|---:|"]
    lines += [f"| {c} | {v:.1f} | {t:.1f} | {w:.1f} | {t / v:.3f}x |" for c, v, t, w in s]
    lines += ["", "| store method | " + " | ".join(f"{c} blocks" for c in doc["ctas"]) + " |",
              "|---|" + "---:|" * len(doc["ctas"])]
    for m in _methods(doc):
        lines.append(f"| {label(*m)} | " + " | ".join(f"{_per_sm(doc, m, c):.1f}" for c in doc["ctas"]) + " |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path) -> str | None:
    """PNG: GB/s per SM against blocks, vector stores bold, TMA thin (a colour per chunk size)."""
    if (mpl := report.pyplot()) is None:
        return None
    plt, _ = mpl
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    colours = {4: "C2", 16: "C3", 64: "C4"}
    labelled = set()
    for m in _methods(doc):
        ys = [_per_sm(doc, m, c) for c in doc["ctas"]]
        if m[0] == "tma":
            name = f"TMA {m[1]} KB chunks (1-16 warps, wait 2/8)"
            ax.plot(doc["ctas"], ys, "-", lw=0.7, alpha=0.7, color=colours.get(m[1]),
                    label=None if name in labelled else name)
            labelled.add(name)
        else:
            ax.plot(doc["ctas"], ys, "-" if m[0] == "st.v4" else "--", lw=2, marker="o", color="k", label=label(*m))
    ax.set_xscale("log", base=2)
    ax.set_xticks(doc["ctas"], [str(c) for c in doc["ctas"]])
    ax.set_xlabel("blocks (one per SM)")
    ax.set_ylabel("GB/s written per SM")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="lower left")
    return report.save_figure(plt, fig, path, f"what one SM writes to HBM, {doc['device']}, commit "
                                              f"{report.commit_of(doc)}", dpi=110)


def measure_doc(args) -> dict:
    """The document of a run on GPU 0: provenance, the sweep and its rows."""
    import cupy as cp

    rows = measure()
    doc = provenance.describe("sm-write", cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), 1)
    doc.update(stem=f"sm-write-{doc['device_slug']}", nbytes=NBYTES, ctas=list(CTAS), rows=rows)
    return doc


def main(argv=None) -> int:
    return report.script_main(argv, __doc__.split("\n")[0], measure_doc, markdown, plot)


if __name__ == "__main__":
    raise SystemExit(main())
