"""Rows per CTA of the world-1 fused kernel (fused_local.ptx): its time at grid ceil(T/R) for
R = 1, 2, 4, 8, 16 and at the planner's grid, beside Inductor's (add+)RMSNorm, on one GPU.

    python scripts/norm_local_grid.py [--out DIR]
    python scripts/norm_local_grid.py --replot bench/norm-local-grid-<device>.json   # no GPU

Why: without a residual a row is half the bytes of a row with one, and a CTA that takes one row
keeps too few loads in flight; at VPT > 1 the kernel prefetches its CTA's next row, which pays
only when a CTA has several rows (plan.LOCAL_PREFETCH_ROWS, LOCAL_PREFETCH_GRID). Timing: CUDA
graphs of n calls on n fresh random inputs (L2 flushed by a 512 MB write before each replay), 21
replays, the median per call. Every grid's output must have the same bits (checked). < 60 s.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from weave_nvshmem.bench import provenance, report  # noqa: E402

#: (dtype, hidden, residual) rows of the probe: without a residual VPT 2 (bf16 8192, fp32 4096) and
#: 4 (fp32 8192); with one VPT 1 (bf16/fp16 4096) and 2 (bf16 8192)
SHAPES = (("bfloat16", 8192, False), ("float32", 4096, False), ("float32", 8192, False),
          ("bfloat16", 4096, True), ("float16", 4096, True), ("bfloat16", 8192, True))
TOKENS = (128, 2048, 16384)
ROWS_PER_CTA = (1, 2, 4, 8, 16)


def _timed(fn, n: int, flush) -> float:
    import torch

    fn(0)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(n):
            fn(i)
    ts = []
    for _ in range(21):
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / n)
    return sorted(ts)[len(ts) // 2]


def measure(args) -> dict:
    import torch
    import torch.nn.functional as F

    from weave_nvshmem.collectives import plan
    from weave_nvshmem.collectives.communicator import launch_local
    from weave_nvshmem.collectives.emulated import EmulatedWorld

    def add_norm(x, r, w):
        if r is None:
            return F.rms_norm(x, (x.shape[-1],), w, 1e-6)
        s = x + r
        return F.rms_norm(s, (x.shape[-1],), w, 1e-6), s

    inductor = torch.compile(add_norm)
    flush = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
    rows = []
    with EmulatedWorld(1) as world:
        comm = world.ranks[0]
        for name, hidden, residual in SHAPES:
            dt = getattr(torch, name)
            for tokens in TOKENS:
                n = max(2, min(16, (768 << 20) // ((3 if residual else 2) * tokens * hidden * dt.itemsize)))
                xs = [torch.randn(tokens, hidden, device="cuda").to(dt) for _ in range(n)]
                rs = [torch.randn(tokens, hidden, device="cuda").to(dt) if residual else None for _ in range(n)]
                weight = torch.randn(hidden, device="cuda").to(dt)
                out = torch.empty(tokens, hidden, device="cuda", dtype=dt)
                row = {"dtype": name, "hidden": hidden, "tokens": tokens, "residual": residual,
                       "inductor_us": round(_timed(lambda i: inductor(xs[i], rs[i], weight), n, flush), 3)}
                planned = plan.plan_fused(tokens, hidden, plan.ptx_dtype(dt, "probe"), 1, "auto",
                                          residual=residual).grid
                grids = {f"R{r}": -(-tokens // r) for r in ROWS_PER_CTA} | {"planner": planned}
                first, r0 = None, None if rs[0] is None else rs[0].clone()  # the timed calls update rs in place
                for label, grid in grids.items():
                    row[f"{label}_us"] = round(_timed(
                        lambda i, g=grid: launch_local(comm, xs[i], rs[i], weight, 1e-6, out=out, grid=g), n, flush), 3)
                    launch_local(comm, xs[0], None if r0 is None else r0.clone(), weight, 1e-6, out=out, grid=grid)
                    torch.cuda.synchronize()
                    first = out.clone() if first is None else first
                    row.setdefault("same_bits", True)
                    row["same_bits"] &= bool(torch.equal(out, first))
                row["planner_grid"] = planned
                print(row, flush=True)
                rows.append(row)
                del xs, rs
    doc = provenance.describe("norm-local-grid", torch.cuda.get_device_name(), 1)
    doc.update(stem=f"norm-local-grid-{doc['device_slug']}", rows_per_cta=list(ROWS_PER_CTA), rows=rows)
    return doc


def markdown(doc: dict) -> str:
    """Speed against Inductor (its us / ours) per rows-per-CTA and at the planner's grid."""
    labels = [f"R{r}" for r in doc["rows_per_cta"]] + ["planner"]
    md = [f"# fused_local.ptx: rows per CTA, one {doc['device']}, commit {report.commit_of(doc)}",
          "", "Speed = Inductor's us / ours (>= 0.95 is the target). R = rows per CTA (grid = ceil(T/R)); planner = "
          "the planner's grid (plan.LOCAL_PREFETCH_ROWS / LOCAL_PREFETCH_GRID). Median us per call, CUDA graphs, "
          "L2 flushed, random inputs; every grid gave the same bits: "
          f"{'yes' if all(r['same_bits'] for r in doc['rows']) else 'NO'}.", "",
          "| dtype | hidden | tokens | residual | Inductor us | " + " | ".join(labels) + " | planner grid |",
          "|---|---:|---:|---|---:|" + "---:|" * len(labels) + "---:|"]
    for r in doc["rows"]:
        cells = [f"{r[l + '_us']:.2f} ({r['inductor_us'] / r[l + '_us']:.2f}x)" for l in labels]
        md.append(f"| {r['dtype']} | {r['hidden']} | {r['tokens']} | {'yes' if r['residual'] else 'no'} | "
                  f"{r['inductor_us']:.2f} | " + " | ".join(cells)
                  + f" | {r['planner_grid']} |")
    return "\n".join(md) + "\n"


def plot(doc: dict, path) -> str | None:
    """PNG: speed against Inductor per rows-per-CTA, one line per (dtype, hidden, tokens)."""
    if (mpl := report.pyplot()) is None:
        return None
    plt, _ = mpl
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    xs = doc["rows_per_cta"]
    for r in doc["rows"]:
        ax.plot(xs, [r["inductor_us"] / r[f"R{x}_us"] for x in xs], marker="o",
                label=f"{r['dtype']} {r['hidden']} T{r['tokens']}{' +res' if r['residual'] else ''}")
    ax.axhline(0.95, color="k", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rows per CTA")
    ax.set_ylabel("speed vs Inductor")
    ax.legend(fontsize=6, ncol=3)
    return report.save_figure(plt, fig, path, f"fused_local, {doc['device']}, commit {report.commit_of(doc)}")


def main(argv=None) -> int:
    return report.script_main(argv, __doc__.split("\n")[0], measure, markdown, plot)


if __name__ == "__main__":
    raise SystemExit(main())
