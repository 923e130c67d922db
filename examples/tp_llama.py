"""The TP Llama example's command line: the correctness check of every mode, and the layer benchmark.

The model (modes nccl / fused / weave / no_comm, replicated or sharded residual) is in
``examples.llama``; the benchmark in ``examples.bench_layer``. The import graph is one-way:
tp_llama -> bench_layer -> llama. Run from the repository root (or with it on PYTHONPATH), one
process per GPU:

  torchrun --nproc-per-node=N examples/tp_llama.py check [--out DIR]    # every mode vs nccl, graphs
  torchrun --nproc-per-node=N examples/tp_llama.py bench --out bench/ [--quick] [--budget-s N]
  torchrun --nproc-per-node=1 examples/tp_llama.py bench --modes nccl no_comm   # one GPU, no NVSHMEM
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import torch

from examples import bench_layer
from examples.llama import CONFIGS, RESIDUAL_MODES, SMALL, Collective, TPModel  # noqa: F401 - SMALL: tests/gpu
from weave_nvshmem import testing
from weave_nvshmem.bench import provenance
from weave_nvshmem.bench.harness import err_text

CHECK_TOKENS = (1, 3, 7, 1000, 2049)
GRAPH_TOKENS = (7, 1000)
#: bf16 tolerances vs nccl after the whole forward: normwise relative error, and the worst row's
#: (catches a few wrong rows, which a normwise figure averages away)
CHECK_TOL, CHECK_ROW_TOL = 3e-2, 6e-2


# ---- check: every mode against nccl ------------------------------------------------------------
def odd_split(tokens: int) -> int:
    """An odd split (so never a multiple of 8 or 16) near a third of the batch; 0 below 2 tokens."""
    return (tokens // 3) | 1 if tokens >= 2 else 0


def check_cases(tokens: int, planned: int = 0) -> list[tuple[str, str, int]]:
    """(mode, residual_mode, split) compared with nccl at ``tokens``: fused unsplit, weave at the odd
    split and at the planner's split ``planned`` (unsplit when neither fits), each residual mode."""
    splits = sorted({s for s in (odd_split(tokens), planned) if 0 < s < tokens}) or [0]
    return [(mode, rm, s) for mode, ss in (("fused", [0]), ("weave", splits)) for s in ss for rm in RESIDUAL_MODES]


def errors(out, ref) -> tuple[float, float]:
    """(normwise relative error, worst row's relative error) of ``out`` vs ``ref``; inf if not finite."""
    o, r = out.double(), ref.double()
    if not bool(torch.isfinite(o).all()):
        return math.inf, math.inf
    diff, norm = (o - r).norm(dim=-1), r.norm(dim=-1)
    return (diff.norm() / norm.norm()).item(), (diff / norm.clamp_min(1e-30)).max().item()


def _input(model, tokens: int):
    """The embedding output at ``tokens``: the same on every rank (seeded on the host)."""
    x = torch.randn(tokens, model.cfg.hidden, generator=torch.Generator().manual_seed(tokens))
    return x.to(model.device, model.dtype)


def check_modes(model, comm, tokens_list=CHECK_TOKENS, *, ctas=8, tol=CHECK_TOL, row_tol=CHECK_ROW_TOL,
                log=None, gemm_out=None) -> list[dict]:
    """Every ``check_cases`` case vs the nccl forward at each of ``tokens_list``. Collective; a failing
    case becomes an error string (agreed by all ranks) in its row. ``ctas``: weave's collectives;
    ``gemm_out``: Collective's symmetric GEMM output buffer (zero copy) for fused and weave."""
    from weave_nvshmem.overlap import LayerShape, candidates

    cfg = model.cfg
    shape = LayerShape(cfg.hidden, cfg.intermediate, cfg.heads, cfg.kv_heads, model.world, cfg.head_dim)
    sms = torch.cuda.get_device_properties(model.device).multi_processor_count
    comm.reserve(max(tokens_list) * cfg.hidden * model.dtype.itemsize)
    rows = []
    for tokens in tokens_list:
        x = _input(model, tokens)
        ref = model.forward(x, Collective("nccl", cfg.eps))
        planned = next((c.split for c in candidates(shape, tokens, sms=sms, comm_ctas=ctas) if c.mode == "weave"), 0)
        for mode, rm, split in check_cases(tokens, planned):
            row = {"tokens": tokens, "mode": mode, "residual_mode": rm, "split": split, "error": None,
                   "zero_copy": gemm_out is not None and mode in ("fused", "weave")}
            out, err = None, None
            try:
                coll = Collective(mode, cfg.eps, comm=comm, ctas=ctas if mode == "weave" else None, residual_mode=rm,
                                  gemm_out=gemm_out)
                out = model.forward(x, coll, split)
                comm.synchronize()
            except Exception as exc:  # noqa: BLE001 - recorded in the row, agreed by all ranks
                err = err_text(exc)
            row["error"] = testing.first_error(err)
            if row["error"] is None:
                row["rel_err"], row["max_row_rel_err"] = errors(out, ref)
                row["replicated"] = testing.same_on_ranks(out)
                row["ok"] = row["rel_err"] <= tol and row["max_row_rel_err"] <= row_tol and row["replicated"]
            else:
                row["ok"] = False
            rows.append(row)
            if log:
                log(_describe(row))
    return rows


def check_graph(model, comm, tokens: int, split: int, residual_mode: str, *, ctas=8, tol=CHECK_TOL,
                row_tol=CHECK_ROW_TOL, gemm_out=None) -> dict:
    """Capture the woven forward in one CUDA graph and replay it twice: the replays must be bitwise
    equal and match the eager forward (``eager_bitwise`` says whether exactly). Collective."""
    cfg = model.cfg
    row = {"tokens": tokens, "mode": "weave-graph", "residual_mode": residual_mode, "split": split, "error": None}
    x = _input(model, tokens)
    coll = Collective("weave", cfg.eps, comm=comm, ctas=ctas, residual_mode=residual_mode, gemm_out=gemm_out)
    comm.reserve(tokens * cfg.hidden * model.dtype.itemsize)  # no workspace growth inside the capture
    graph = torch.cuda.CUDAGraph()
    got = {}

    def warm_up():
        got["eager"] = model.forward(x, coll, split)
        side = torch.cuda.Stream()  # warm up off the capture's stream too, as torch recommends
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model.forward(x, coll, split)
        torch.cuda.current_stream().wait_stream(side)
        comm.synchronize()

    def capture():
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            got["static"] = model.forward(x, coll, split)
        torch.cuda.synchronize()

    def replay():
        got["replays"] = []
        for _ in range(2):
            graph.replay()
            comm.synchronize()
            got["replays"].append(got["static"].clone())

    try:
        for stage, fn in (("warm-up", warm_up), ("capture", capture), ("replay", replay)):
            err = None
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - recorded in the row, agreed by all ranks
                err = f"{stage}: {err_text(exc)}"
            row["error"] = testing.first_error(err)
            if row["error"]:
                row["ok"] = False
                return row
    finally:
        graph.reset()
    first, second = got["replays"]
    row["replays_equal"] = torch.equal(first, second)
    row["eager_bitwise"] = torch.equal(first, got["eager"])
    row["rel_err"], row["max_row_rel_err"] = errors(first, got["eager"])
    row["ok"] = row["replays_equal"] and row["rel_err"] <= tol and row["max_row_rel_err"] <= row_tol
    return row


def _describe(row: dict) -> str:
    what = f"tokens={row['tokens']:<5} {row['mode']:11s} {row['residual_mode']:10s} split={row['split']:<4}" \
           f"{' zero-copy' if row.get('zero_copy') else ''}"
    if row.get("error"):
        return f"{what} FAIL {row['error']}"
    extra = (f" replays equal {row['replays_equal']}, eager bitwise {row['eager_bitwise']}"
             if "replays_equal" in row else f" replicated {row['replicated']}")
    return (f"{what} {'ok  ' if row['ok'] else 'FAIL'} rel err {row['rel_err']:.2e}, "
            f"worst row {row['max_row_rel_err']:.2e},{extra}")


def _single_process_env() -> None:
    """Defaults that let a plain ``python`` run act as one rank (torchrun sets them all)."""
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", "29518")):
        os.environ.setdefault(k, v)


def check(args) -> int:
    """``check``: every mode vs nccl and the woven forward's CUDA graph; exit status 1 on any failure."""
    import torch.distributed as dist

    import weave_nvshmem as wn

    _single_process_env()
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    rank, world = dist.get_rank(), dist.get_world_size()
    wn.init()
    comm = wn.Communicator(wn.CommOptions(timeout_s=args.timeout_s, channels=1))  # one collective at a time
    log = print if rank == 0 else None
    gemm_out = None
    try:
        cfg = dataclasses.replace(CONFIGS[args.config], layers=args.layers)
        model = TPModel(cfg, world, rank, torch.device("cuda", local))
        opts = dict(ctas=args.ctas, tol=args.tol, row_tol=args.row_tol)
        # the GEMMs write straight into symmetric memory (zero copy), as an engine would; one size
        # also with ordinary GEMM outputs (the fused op then pushes them)
        gemm_out = wn.empty((max(CHECK_TOKENS + GRAPH_TOKENS), cfg.hidden), model.dtype)
        rows = check_modes(model, comm, CHECK_TOKENS, log=log, gemm_out=gemm_out, **opts)
        rows += check_modes(model, comm, (1000,), log=log, **opts)
        graphs = []
        for tokens in GRAPH_TOKENS:
            for rm in RESIDUAL_MODES:
                graphs.append(check_graph(model, comm, tokens, odd_split(tokens), rm, gemm_out=gemm_out, **opts))
                if log:
                    log(_describe(graphs[-1]))
        ok = testing.all_true(all(r["ok"] for r in rows + graphs))
        if rank == 0:
            doc = provenance.describe("tp_llama-check", torch.cuda.get_device_name(local), world)
            doc.update(schema="weave_nvshmem.tp_llama_check/1", config=dataclasses.asdict(cfg), weave_ctas=args.ctas,
                       tol=args.tol, row_tol=args.row_tol, ok=ok, cases=rows, graphs=graphs)
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"tp_llama-check-{doc['device_slug']}-w{world}.json"
            path.write_text(json.dumps(doc, indent=1) + "\n")
            print(f"{'PASS' if ok else 'FAIL'}: {sum(not r['ok'] for r in rows + graphs)} of {len(rows + graphs)} "
                  f"checks failed; wrote {path}", flush=True)
    finally:
        if gemm_out is not None:
            wn.free(gemm_out)
        comm.close()
        wn.finalize()
        dist.destroy_process_group()
    return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    """The example's command line: ``check`` and ``bench`` (the layer benchmark's own options)."""
    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node=N examples/tp_llama.py",
                                description="TP Llama decoder with TokenWeave overlap: correctness check of every "
                                            "mode against nccl, or the end-to-end layer benchmark.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="every mode vs nccl (tokens 1, 3, 7, 1000, 2049; odd and planned splits; "
                                     "replicated and sharded residual) and CUDA-graph replays of the woven forward",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--out", default="bench", help="directory of the JSON report (rank 0)")
    c.add_argument("--config", choices=sorted(CONFIGS), default="llama3-70b")
    c.add_argument("--layers", type=int, default=2)
    c.add_argument("--ctas", type=int, default=8, help="CTAs of weave's fused collectives")
    c.add_argument("--tol", type=float, default=CHECK_TOL, help="normwise relative error bound vs nccl")
    c.add_argument("--row-tol", type=float, default=CHECK_ROW_TOL, help="worst row's relative error bound")
    c.add_argument("--timeout-s", type=float, default=30.0, help="weave_nvshmem cross-rank wait timeout")
    b = sub.add_parser("bench", help="graph-timed forward of every mode at Llama-3-70B shapes (see bench_layer.py)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench_layer.add_arguments(b)
    return p


def main(argv=None) -> int:
    """``check`` or ``bench``; the exit status."""
    args = parser().parse_args(argv)
    return check(args) if args.command == "check" else bench_layer.run(args)


if __name__ == "__main__":
    sys.exit(main())
