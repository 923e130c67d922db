"""The fused collective in a CuPy program: CuPy arrays, CuPy streams, no torch in the user's code.

    torchrun --nproc-per-node=N examples/cupy_pipeline.py     (the repository root on PYTHONPATH)

Each rank holds a row-parallel slice of a projection: ``x_r [T, K] @ w_r [K, H]``, so the layer's
output is the sum over ranks, which ``fused_allreduce_rmsnorm`` forms while adding the residual and
normalising. Token chunks flow through two non-blocking CuPy streams: the comm stream reduces chunk
i while the compute stream multiplies chunk i+1, one event per chunk ordering them (the op runs on
CuPy's current stream). Chunk sizes are ragged (one has a single row, fewer than the ranks). Every
result is checked against float64 numpy; exit status 1 on a mismatch.
"""
from __future__ import annotations

import os
import sys

import numpy as np

HIDDEN, K = 1024, 512
CHUNK_ROWS = (96, 1, 37, 128)
EPS = 1e-6
#: relative error bound of the float32 pipeline vs float64 (loose enough for TF32 matmuls: CUPY_TF32=1)
TOL = 2e-3


def inputs(rank: int, rows=CHUNK_ROWS):
    """Rank ``rank``'s chunks x [rows_i, K] and weight slice [K, H]; any rank can rebuild any rank's."""
    g = np.random.default_rng(1000 + rank)
    xs = [g.standard_normal((n, K), dtype=np.float32) for n in rows]
    return xs, (g.standard_normal((K, HIDDEN), dtype=np.float32) * K ** -0.5).astype(np.float32)


def shared(rows=CHUNK_ROWS):
    """Residual chunks and the RMSNorm weight, the same on every rank (replicated, as in TP)."""
    g = np.random.default_rng(7)
    residuals = [g.standard_normal((n, HIDDEN), dtype=np.float32) for n in rows]
    return residuals, (1 + 0.1 * g.standard_normal(HIDDEN)).astype(np.float32)


def reference(world: int, rows=CHUNK_ROWS):
    """float64 (out, new residual) per chunk, from every rank's inputs."""
    parts = [inputs(r, rows) for r in range(world)]
    residuals, weight = shared(rows)
    refs = []
    for i, res in enumerate(residuals):
        s = sum(xs[i].astype(np.float64) @ w.astype(np.float64) for xs, w in parts) + res
        out = s / np.sqrt((s * s).mean(-1, keepdims=True) + EPS) * weight
        refs.append((out, s))
    return refs


def _rel(got, ref) -> float:
    got = np.asarray(got, dtype=np.float64)
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def pipeline(comm, rank: int, world: int, rows=CHUNK_ROWS) -> list[dict]:
    """Run the two-stream pipeline on ``comm`` (collective) and compare every chunk with float64:
    one dict per chunk with its errors and ``ok``."""
    import cupy as cp

    xs, w = inputs(rank, rows)
    residuals, weight = shared(rows)
    comm.reserve(max(rows) * HIDDEN * 4)  # grow the workspace now, not between launches
    with cp.cuda.Device(comm.device_id):
        compute, comms = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
        with compute:
            d_w, d_weight = cp.asarray(w), cp.asarray(weight)
            d_xs = [cp.asarray(x) for x in xs]
            d_res = [cp.asarray(r) for r in residuals]
            outs = [cp.empty((n, HIDDEN), dtype=cp.float32) for n in rows]
        compute.synchronize()
        partials = []  # kept alive until the comm stream is done with them
        for i in range(len(rows)):
            with compute:
                partials.append(d_xs[i] @ d_w)
                ready = compute.record()
            with comms:
                comms.wait_event(ready)
                comm.fused_allreduce_rmsnorm(partials[i], d_res[i], d_weight, EPS, out=outs[i])
        comms.synchronize()
        comm.check()
        got = [(cp.asnumpy(o), cp.asnumpy(r)) for o, r in zip(outs, d_res)]
    results = []
    for n, (out, res), (ref_out, ref_res) in zip(rows, got, reference(world, rows)):
        e_out, e_res = _rel(out, ref_out), _rel(res, ref_res)
        results.append({"rows": n, "out_rel_err": e_out, "residual_rel_err": e_res,
                        "ok": e_out <= TOL and e_res <= TOL})
    return results


def main() -> int:
    import torch
    import torch.distributed as dist

    import weave_nvshmem as wn
    from weave_nvshmem import testing

    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", "29519")):
        os.environ.setdefault(k, v)  # a plain `python` run is one rank
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))  # NVSHMEM bootstraps over it
    rank, world = dist.get_rank(), dist.get_world_size()
    wn.init()
    comm = wn.Communicator()
    try:
        results = pipeline(comm, rank, world)
        ok = testing.all_true(all(r["ok"] for r in results))
        if rank == 0:
            for i, r in enumerate(results):
                print(f"chunk {i} ({r['rows']} rows): out rel err {r['out_rel_err']:.2e}, "
                      f"residual rel err {r['residual_rel_err']:.2e} {'ok' if r['ok'] else 'FAIL'}", flush=True)
            print(f"{'PASS' if ok else 'FAIL'}: CuPy pipeline on {world} rank(s)", flush=True)
    finally:
        comm.close()
        wn.finalize()
        dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
