"""weave-bench (python -m weave_nvshmem.bench): one subcommand per suite, each with its own --help.

Collective suites run one process per GPU::

    torchrun --nproc-per-node=N -m weave_nvshmem.bench {allreduce,fused,reducescatter,allgather,all,tune} --out bench/
    python -m weave_nvshmem.bench norm --out bench/ [--quick]      # one GPU, one process, no torchrun
    python -m weave_nvshmem.bench plot bench/allreduce-nvidia-h200-w4.json   # redraw markdown + PNG, no GPU

Rank 0 writes ``<out>/<suite>-<device>-w<world>.{json,md,png}`` (norm: ``<out>/norm-<device>.*``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from . import baselines, provenance, report, tables, variants
from .harness import Harness, fmt_bytes, heap_bytes, plan_sets, timing_settings

COLLECTIVE = ("allreduce", "fused", "reducescatter", "allgather")
HELP = {
    "allreduce": "all_reduce of tokens x 8192 bf16 (and raw sizes 4 KB..256 MB): ours vs NCCL and torch "
                 "SymmetricMemory, CTA sweeps",
    "fused": "fused all-reduce + residual add + RMSNorm at hidden 8192 and 5120: ours vs NCCL / SymmetricMemory "
             "all-reduce + the shared fused add+RMSNorm (fastest measured)",
    "reducescatter": "reduce_scatter of a tokens x 8192 bf16 tensor: ours vs NCCL",
    "allgather": "all_gather into a tokens x 8192 bf16 tensor: ours vs NCCL",
    "all": "allreduce, fused, reducescatter and allgather in one run",
    "tune": "time every algorithm x CTA count of all_reduce and the fused op; install this device's tuning table",
    "norm": "one GPU, world 1: ours fused_allreduce_rmsnorm vs every fused add+RMSNorm candidate (Inductor, eager "
            "F.rms_norm, vLLM, FlashInfer), GB/s against the device copy rate; no torchrun needed",
    "plot": "redraw the markdown and PNG of saved result JSON files (no GPU)",
}


def _timing_args(p) -> None:
    p.add_argument("--out", default="bench", help="output directory")
    p.add_argument("--quick", action="store_true", help="fewer sizes and replays")
    p.add_argument("--calls", type=int, default=0,
                   help="calls per graph (0: 20; more when more input sets are needed, up to 128; >=64 MB sets: 10)")
    p.add_argument("--replays", type=int, default=0, help="timed replays (0: 25, quick 12)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up replays (default 3, quick 2)")
    p.add_argument("--max-sets", type=int, default=0, help="cap on distinct input sets per size (0: 128, quick 64)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip the remaining sizes after this many seconds, recording why (default: 190 quick, "
                        "420 full; norm 240 quick, 540 full; 0: no limit)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="weave_nvshmem cross-rank wait timeout")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of recorded errors")


def parser() -> argparse.ArgumentParser:
    """The command line: a subparser per suite, each listing only its own options."""
    p = argparse.ArgumentParser(prog="weave-bench", description=__doc__.split("\n\n")[0],
                                epilog="Run 'weave-bench <command> --help' for a command's options.")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    for name in (*COLLECTIVE, "all", "tune"):
        c = sub.add_parser(name, help=HELP[name], description=HELP[name],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        _timing_args(c)
        c.add_argument("--nccl-timeout-s", type=float, default=300.0, help="torch.distributed (NCCL/gloo) timeout")
        if name != "tune":
            c.add_argument("--no-symm", action="store_true", help="skip the torch SymmetricMemory baselines")
    n = sub.add_parser("norm", help=HELP["norm"], description=HELP["norm"],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _timing_args(n)
    n.add_argument("--nvshmem", action="store_true",
                   help="run ours on a real world-1 Communicator (weave_nvshmem.init) instead of EmulatedWorld(1)")
    n.add_argument("--tokens", type=int, nargs="+", help=f"token counts (default {variants.NORM_TOKENS}, quick "
                                                         f"{variants.NORM_TOKENS_QUICK})")
    n.add_argument("--hiddens", type=int, nargs="+", default=list(variants.NORM_HIDDENS), help="hidden sizes")
    n.add_argument("--dtypes", nargs="+", choices=variants.NORM_DTYPES, default=list(variants.NORM_DTYPES),
                   help="dtypes")
    pl = sub.add_parser("plot", help=HELP["plot"], description=HELP["plot"])
    pl.add_argument("files", nargs="+", help="result JSON files; each one's .md and .png are rewritten beside it")
    return p


def settings(args) -> dict:
    """Everything a run's suites read, recorded in every document it writes."""
    quick = bool(args.quick)
    s = timing_settings(quick=quick, calls=args.calls, replays=args.replays, warmup=args.warmup,
                        max_sets=args.max_sets)
    s.update(quick=quick, eps=variants.EPS, timeout_s=args.timeout_s, budget_s=args.budget_s,
             timing="per replay: refresh inputs, rewrite a 2xL2 buffer, device barrier, then CUDA events around "
                    "graph.replay(); us = median over replays of replay_time / calls_per_graph (rank 0)",
             residual_policy="reset: before every replay (untimed) all input sets are regenerated from fixed "
                             "per-(size, rank) seeds, so values stay finite and every variant sees the same data")
    if args.command == "norm":
        s.update(tokens=list(args.tokens or (variants.NORM_TOKENS_QUICK if quick else variants.NORM_TOKENS)),
                 hiddens=list(args.hiddens), dtypes=list(args.dtypes), nvshmem=args.nvshmem,
                 no_residual={"dtype": "bfloat16", "hidden": max(args.hiddens)},
                 candidates=list(baselines.NORM_CANDIDATES), target=variants.NORM_TARGET)
        return s
    s.update(dtype="bfloat16", tokens=list(variants.TOKENS_QUICK if quick else variants.TOKENS_FULL),
             allreduce_hidden=variants.AR_HIDDEN, raw_bytes=[] if quick else list(variants.RAW_BYTES),
             fused_hiddens=list(variants.FUSED_HIDDENS),
             scatter_gather_tokens=list(variants.SG_TOKENS_QUICK if quick else variants.SG_TOKENS),
             cta_sweep={"ctas": list(variants.SWEEP_CTAS), "allreduce_tokens": list(variants.AR_CTA_TOKENS),
                        "fused_min_tokens": variants.FUSED_CTA_MIN_TOKENS, "variants": variants.SWEPT},
             inplace="ours all_reduce out=x, NCCL all_reduce and symm two_shot_all_reduce_ in place; symm "
                     "one_shot_all_reduce out of place; fused ops write a separate out and update the residual",
             fused_norm="the shared baseline (weave_nvshmem.bench.baselines.fused_add_rmsnorm): the fastest "
                        f"of {list(baselines.NORM_CANDIDATES)} measured at each size, rank 0's choice")
    return s


def max_bytes(suites, s) -> int:
    """The largest input of any size of ``suites`` (our staging must hold it)."""
    m = 16
    if {"allreduce", "tune"} & set(suites):
        m = max([m, max(s["tokens"]) * variants.AR_HIDDEN * 2] + s["raw_bytes"])
    if "fused" in suites:
        m = max(m, max(s["tokens"]) * max(variants.FUSED_HIDDENS) * 2)
    if {"reducescatter", "allgather"} & set(suites):
        m = max(m, max(s["scatter_gather_tokens"]) * variants.AR_HIDDEN * 2)
    return m


def symm_bytes(suites, s) -> int:
    """Bytes of the symmetric input sets (zero-copy and torch symm_mem variants) of ``suites``."""
    sizes = []
    if "allreduce" in suites:
        sizes += [t * variants.AR_HIDDEN * 2 for t in s["tokens"]] + s["raw_bytes"]
    if "fused" in suites:
        sizes += [t * h * 2 for t in s["tokens"] for h in variants.FUSED_HIDDENS]
    if "reducescatter" in suites:
        sizes += [t * variants.AR_HIDDEN * 2 for t in s["scatter_gather_tokens"]]
    return max((plan_sets(b, s)[0] * b for b in sizes), default=16)  # allgather, tune: none


def _suite(name):
    from .suites import allreduce, fused, norm, scatter_gather, tune

    return {"allreduce": allreduce.run, "fused": fused.run, "norm": norm.run, "tune": tune.run,
            "reducescatter": lambda h, s: scatter_gather.run(h, s, "reducescatter"),
            "allgather": lambda h, s: scatter_gather.run(h, s, "allgather")}[name]


def _document(h, name: str, s: dict, rows: list, extra: dict) -> dict:
    doc = provenance.describe(name, h.device_name, h.world)
    doc.update(schema=variants.SCHEMA, settings=s, results=rows, **extra)
    if name in variants.SUITES:
        doc.update(variants.describe(name))
    if name in ("fused", "norm"):
        doc["fused_norm"] = baselines.fused_add_rmsnorm.records()
    if name == "norm":
        doc["stem"] = f"norm-{doc['device_slug']}"
    return doc


def run(args) -> int:
    """Measure the suites of ``args.command`` and write their documents (rank 0). Exit status 1 if
    a suite stopped early; per-size failures are recorded in the rows instead."""
    from ..collectives import tuning

    if args.budget_s is None:
        args.budget_s = (240.0 if args.quick else 540.0) if args.command == "norm" else \
            (190.0 if args.quick else 420.0)
    s = settings(args)
    names = list(COLLECTIVE) if args.command == "all" else [args.command]
    distributed = args.command != "norm"
    extra = {"baseline_availability": {"symm_fused_ops": baselines.symm_fused_ops(),
                                       "nccl_symmetric_window": baselines.nccl_window_status()}}
    if distributed:
        reserve, zero_copy = max_bytes(names, s), (symm_bytes(names, s) if args.command != "tune" else 0)
        os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE",
                              str(heap_bytes(int(os.environ.get("WORLD_SIZE", "1")), reserve, zero_copy)))
    h = Harness(distributed=distributed, timeout_s=args.timeout_s, budget_s=args.budget_s, verbose=args.verbose,
                **({"nccl_timeout_s": args.nccl_timeout_s} if distributed else {}))
    rc, tables_md = 0, []
    try:
        h.log(f"weave_nvshmem.bench {args.command}{' --quick' if s['quick'] else ''}: world {h.world}, "
              f"{h.device_name}" + (f", reserve {fmt_bytes(reserve)}, NVSHMEM_SYMMETRIC_SIZE="
                                    f"{os.environ['NVSHMEM_SYMMETRIC_SIZE']}" if distributed else ""))
        if distributed:
            h.start_ours(reserve)
            if args.command != "tune":
                h.start_zero_copy(zero_copy)
                if args.no_symm:
                    h.disable_symm("disabled by --no-symm")
                else:
                    h.start_symm(zero_copy)
            s.update(reserved_bytes=reserve, comm_channels=1, tuning_table=tuning.read() or None)
            extra["setup_errors"] = {"ours": h.comm_err, "symm_mem": h.symm_err, "zero_copy": h.zc_err}
        for name in names:
            t0 = time.perf_counter()
            h.log(f"=== {name} ===")
            fatal, rows = None, []
            try:
                rows = _suite(name)(h, s)
            except Exception as exc:  # noqa: BLE001 - the document records it
                fatal, rc = f"{type(exc).__name__}: {exc}", 1
                traceback.print_exc()
            doc = _document(h, name, s, rows, dict(extra, fatal=fatal, elapsed_s=time.perf_counter() - t0,
                                                   communicator_rebuilds=h.rebuilds))
            if h.rank == 0:
                if name == "tune" and rows:
                    doc["tuning_table"] = tuning.merge(None, rows, h.world)
                    h.log(f"tune: installed {tuning.install(rows, h.world)}")
                paths = report.write_outputs(doc, args.out)
                md = open(paths["md"]).read()
                tables_md.append(tables.markdown(doc, full=False) if name in COLLECTIVE else md)
                h.log(f"{name}: wrote {', '.join(paths.values())}")
            if fatal:
                break
    except Exception:  # noqa: BLE001
        rc = 1
        traceback.print_exc()
    finally:
        if h.rank == 0 and tables_md:
            print("\n" + "\n".join(tables_md), flush=True)
        h.close()
    h.log(f"done (rc={rc})")
    return rc


def main(argv=None) -> int:
    """Entry point of ``weave-bench`` and ``python -m weave_nvshmem.bench``; the exit status (2 and
    one line naming what is missing when this machine cannot run the suite: no CUDA GPU, no Hopper)."""
    from .. import preflight
    from ..errors import WeaveError

    args = parser().parse_args(argv)
    if args.command == "plot":
        return report.replot(args.files)
    try:
        preflight.require_gpu(f"bench {args.command}")
    except WeaveError as exc:
        print(f"weave-bench: {exc}", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
