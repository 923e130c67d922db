"""End-to-end benchmark of the TP Llama example: every mode's whole forward in one CUDA graph.

Entry point ``tp_llama.py bench``, one process per GPU (the repository root on PYTHONPATH)::

    torchrun --nproc-per-node=N examples/tp_llama.py bench --out bench/ [--quick] [--budget-s N]
    torchrun --nproc-per-node=1 examples/tp_llama.py bench --modes nccl no_comm   # one GPU, no NVSHMEM

Llama-3-70B shapes (hidden 8192, intermediate 28672, 64 heads, 8 kv heads), ``--layers`` random bf16
layers. At each token count the modes run in the same process on the same weights; each forward is
captured whole in a CUDA graph and timed by the public harness (``weave_nvshmem.bench.harness``:
fresh random inputs, L2 flush and a device barrier before every replay, median over replays on rank
0), so these figures compare with the collective benchmarks'. Every norm outside our fused op (the
nccl and no_comm modes' norms, every mode's first norm) is the shared fused add + RMSNorm, chosen by
measurement for each token count before the modes run (``baselines.fused_add_rmsnorm``; the choice
is recorded). weave runs TokenWeave's schedule: ``overlap.candidates`` proposes fused / plain /
split schedules, ``SplitTuner`` times each one's graph and keeps rank 0's pick (broadcast); the pick
and every candidate's time are recorded. At world 1 the NCCL all-reduce is a no-op: the nccl rows
there are not link figures. Rank 0 writes <out>/layer-<device>-w<world>.{json,md,png}.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from examples.llama import LLAMA3_70B, MODES, RESIDUAL_MODES, Collective, LlamaConfig, TPModel
from weave_nvshmem.bench import baselines, provenance, report
from weave_nvshmem.bench.harness import Harness, InputSets, err_text, fmt_bytes, heap_bytes
from weave_nvshmem.bench.suites.common import allocate, norm_timer, release, skip_all
from weave_nvshmem.collectives.plan import FUSED_ALGORITHMS
from weave_nvshmem.overlap import LayerShape, SplitTuner, candidates, variants

SCHEMA = "weave_nvshmem.bench_layer/2"
TOKENS_FULL = (1, 16, 128, 512, 1024, 2048, 4096, 8192, 16384)
TOKENS_QUICK = (1, 128, 1024, 8192)
#: the example's mode that runs each SplitTuner candidate ("plain": NCCL all-reduce + the shared norm)
CANDIDATE_MODE = {"fused": "fused", "plain": "nccl", "weave": "weave"}
LABELS = {"nccl": "NCCL", "fused": "fused", "weave": "weave", "no_comm": "no comm"}
RATIOS = (("nccl_over_weave", "NCCL / weave"), ("nccl_over_fused", "NCCL / fused"),
          ("weave_over_no_comm", "weave / no comm"))
#: the fused op's transports the tuner may try by name (every multi-rank one of plan.FUSED_ALGORITHMS)
TUNE_ALGORITHMS = tuple(a for a in FUSED_ALGORITHMS if a not in ("auto", "local"))
#: modes that need our communicator (weave_nvshmem.init: NVSHMEM)
OURS = ("fused", "weave")


def add_arguments(p) -> None:
    """The benchmark's options on parser ``p`` (``tp_llama.py bench``)."""
    p.add_argument("--out", default="bench", help="output directory (rank 0 writes layer-<device>-w<world>.*)")
    p.add_argument("--quick", action="store_true", help=f"tokens {TOKENS_QUICK}, fewer replays")
    p.add_argument("--tokens", type=int, nargs="+", help=f"token counts (default {TOKENS_FULL})")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                   help="modes to time (nccl and no_comm alone need no NVSHMEM and run on one GPU)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip the remaining token counts after this many seconds (default 190 quick, 420 full; "
                        "0: no limit)")
    p.add_argument("--layers", type=int, default=2, help="decoder layers in the forward")
    p.add_argument("--shard-of", type=int, default=None, metavar="N",
                   help="time rank 0's shard of a TP=N model (default: the process world size); N other than the "
                        "world size only with modes nccl and no_comm (one GPU: rank 0's compute, no link)")
    p.add_argument("--comm-ctas", type=int, default=8, help="CTAs of weave's fused collectives")
    p.add_argument("--tune-ctas", type=int, nargs="*", default=[],
                   help="further CTA budgets of weave's collectives the tuner tries (overlap.variants)")
    p.add_argument("--tune-algorithms", nargs="*", default=[], choices=TUNE_ALGORITHMS,
                   help="fused-op algorithms the tuner tries besides the planner's (overlap.variants)")
    p.add_argument("--residual", choices=RESIDUAL_MODES, default="replicated",
                   help="residual mode of the fused and weave forwards")
    p.add_argument("--replays", type=int, default=0, help="timed replays per mode (0: 20, quick 10)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="weave_nvshmem cross-rank wait timeout")
    p.add_argument("--nccl-timeout-s", type=float, default=300.0, help="torch.distributed (NCCL/gloo) timeout")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of recorded errors")


def settings(args) -> dict:
    """What the run measures, recorded in its document."""
    quick = bool(args.quick)
    replays = args.replays or (10 if quick else 20)
    cfg = dataclasses.replace(LLAMA3_70B, layers=args.layers)
    return {
        "quick": quick, "dtype": "bfloat16", "config": dataclasses.asdict(cfg), "layers": cfg.layers,
        "tokens": list(args.tokens or (TOKENS_QUICK if quick else TOKENS_FULL)),
        "modes": [m for m in MODES if m in args.modes],
        "comm_ctas": args.comm_ctas, "tune_ctas": list(getattr(args, "tune_ctas", None) or []),
        "tune_algorithms": list(getattr(args, "tune_algorithms", None) or []),
        "residual_mode": args.residual, "shard_of": args.shard_of,
        "warmup": 2, "replays": replays, "tune_replays": max(3, replays // 3),
        "budget_s": args.budget_s, "timeout_s": args.timeout_s,
        "graphs": "one CUDA graph per (mode, tokens) of graph_calls(tokens) whole forwards (4 up to 1024 tokens, "
                  "2 up to 4096, else 1), each on its own input set",
        "timing": "weave_nvshmem.bench.harness Harness.measure: per replay, inputs regenerated, 2xL2 rewritten, "
                  "device barrier, then CUDA events around graph.replay(); us = median over replays of replay "
                  "time / forwards (rank 0); us_per_layer = us / layers; tokens_per_s_per_layer = tokens / "
                  "us_per_layer",
        "norm": "every norm outside the fused op (nccl and no_comm modes, every first norm): the shared fused "
                "add+RMSNorm (weave_nvshmem.bench.baselines.fused_add_rmsnorm), the fastest of "
                f"{list(baselines.NORM_CANDIDATES)} measured at each token count",
        "zero_copy": "fused and weave: o_proj and down write into a symmetric buffer (weave_nvshmem.empty), "
                     "which the fused op reads on the peers in place",
        "weave": "overlap.candidates (fused, plain = NCCL, best-predicted splits) each timed as a graph with "
                 "tune_replays replays by SplitTuner (rank 0 decides and broadcasts); the weave row "
                 "times the chosen schedule with the full replays",
    }


def graph_calls(tokens: int) -> int:
    """Forwards per graph (and input sets): several for short forwards, so launch gaps average out."""
    return 4 if tokens <= 1024 else 2 if tokens <= 4096 else 1


# ---------------------------------------------------------------------------------------------
# measurement (collective)
# ---------------------------------------------------------------------------------------------
def _tune(s, tuner, shape, sms, tokens, timed):
    """TokenWeave's schedule at ``tokens``: (SplitTuner's pick, every candidate's timing record)."""
    algorithms = s.get("tune_algorithms") or ()
    cands = variants(candidates(shape, tokens, sms=sms, comm_ctas=s["comm_ctas"]), ctas=s.get("tune_ctas") or (),
                     algorithms=("auto", *algorithms) if algorithms else ())
    tried = []

    def measure(c):
        budget = ({} if c.ctas is None else {"ctas": c.ctas}) | ({} if c.algorithm == "auto" else
                                                                  {"algorithm": c.algorithm})
        res = timed(CANDIDATE_MODE[c.mode], c.split, s["tune_replays"], **budget)
        tried.append({"mode": c.mode, "split": c.split, **budget, "us": res.get("us"), "error": res.get("error")})
        return res["us"] if res.get("us") and not res.get("error") else float("inf")

    key = tuner.key(tokens=tokens, layers=s["layers"], comm_ctas=s["comm_ctas"], residual=s["residual_mode"],
                    tune_ctas=",".join(map(str, s.get("tune_ctas") or ())), tune_algorithms=",".join(algorithms),
                    **dataclasses.asdict(shape))
    return tuner.choose(key, cands, measure), tried


def _finish(h, row, res):
    row.update(res)
    what = f"T={row['tokens']:<6} {row['mode']:8s}"
    if row.get("error"):
        h.log(f"{what} ERROR {row['error'][:160]}")
        return row
    row["us_per_layer"] = row["us"] / row["layers"]
    row["tokens_per_s_per_layer"] = row["tokens"] / row["us_per_layer"] * 1e6
    sched = f" [{schedule_text(row['schedule'])}]" if row.get("schedule") else ""
    h.log(f"{what} {row['us_per_layer']:10.1f} us/layer (max over ranks {row['us_max_rank'] / row['layers']:.1f})"
          f"{sched}")
    return row


def choose_norms(h, s, hidden: int, tokens: int, sets, weight, eps: float) -> dict:
    """The shared fused norm for this token count, with and without a residual (the first norm),
    chosen by measurement on rank 0 for every rank. {"residual": record, "first": record}."""
    import torch

    counts = (sets.n_sets, sets.n_sets, s["warmup"], s["tune_replays"])
    norm = baselines.fused_add_rmsnorm
    first = InputSets(h, (tokens, hidden), sets.n_sets, key=9000 + tokens)
    out = {"residual": norm.choose(tokens, hidden, torch.bfloat16, norm_timer(h, sets, weight, eps, counts),
                                   decide=h.rank0),
           "first": norm.choose(tokens, hidden, torch.bfloat16, norm_timer(h, first, weight, eps, counts),
                                residual=False, decide=h.rank0)}
    h.log(f"T={tokens:<6} shared norm: {out['residual']['chosen']} (first norm: {out['first']['chosen']})")
    return out


def bench_tokens(h, s, model, shape, sms, tuner, tokens) -> list:
    """The modes' rows at ``tokens`` (weave after its tuning). Collective; never raises for one
    (mode, size): failures become the row's error, agreed by all ranks."""
    cfg = model.cfg
    specs = [{"tokens": tokens, "mode": m, "layers": cfg.layers, "hidden": cfg.hidden} for m in s["modes"]]
    if h.budget_exhausted():
        return skip_all(h, specs, "skipped: --budget-s exhausted")
    calls = graph_calls(tokens)
    sets, err = allocate(h, lambda: InputSets(h, (tokens, cfg.hidden), calls, key=tokens, residual=True))
    if err:
        return skip_all(h, specs, err)
    norms = choose_norms(h, s, cfg.hidden, tokens, sets, model.layers[0]["post_norm"], cfg.eps)

    def timed(mode, split, replays, ctas=None, algorithm="auto"):
        """Graph-timed forwards in ``mode`` (``split``: weave only; ``ctas``, ``algorithm``: the fused
        collectives' budget, default ``comm_ctas``, and algorithm); the harness's result dict."""
        fused = mode in OURS
        if fused and h.comm is None:
            return {"error": h.comm_err or "communicator unavailable"}
        gemm_out = h.zc_flat[:tokens * cfg.hidden].view(tokens, cfg.hidden) if h.zc_flat is not None else None
        budget = ctas if ctas is not None else s["comm_ctas"] if mode == "weave" else None
        coll = Collective(mode, cfg.eps, comm=h.comm, ctas=budget,
                          residual_mode=s["residual_mode"] if fused else "replicated", gemm_out=gemm_out,
                          algorithm=algorithm if fused else "auto")
        return h.measure(lambda i: model.forward(sets.xs[i], coll, split), sets.refresh, calls, calls,
                         s["warmup"], replays)

    rows = []
    for row in specs:
        row["norm"] = {"residual": norms["residual"]["chosen"], "first": norms["first"]["chosen"]}
        if row["mode"] == "weave" and h.comm is None:  # else the tuner could pick plain and time NCCL
            res = {"error": h.comm_err or "communicator unavailable"}
        elif row["mode"] == "weave":
            chosen, tried = _tune(s, tuner, shape, sms, tokens, timed)
            row.update(schedule={"mode": chosen.mode, "split": chosen.split, "algorithm": chosen.algorithm},
                       candidates=tried, comm_ctas=s["comm_ctas"] if chosen.ctas is None else chosen.ctas)
            res = timed(CANDIDATE_MODE[chosen.mode], chosen.split, s["replays"], chosen.ctas, chosen.algorithm)
        else:
            res = timed(row["mode"], 0, s["replays"])
        if row["mode"] == "nccl" and h.world == 1:
            row["note"] = "world 1: the NCCL all-reduce is a no-op, not a link figure"
        rows.append(_finish(h, row, res))
    sets = None
    release()
    return rows


def bench_layers(h, s, rows: list, after_size=None) -> None:
    """Every token count of ``s`` into ``rows`` (appended as they finish, kept if a later one raises);
    ``after_size()`` runs after each token count."""
    cfg = LlamaConfig(**s["config"])
    tp = s.get("shard_of") or h.world
    if tp != h.world and any(m in OURS for m in s["modes"]):
        raise ValueError(f"bench: --shard-of {tp} differs from the world size {h.world}; only modes nccl and no_comm "
                         f"can time another TP degree's shard (got modes {s['modes']})")
    model, err = allocate(h, lambda: TPModel(cfg, tp, h.rank if tp == h.world else 0, h.device))
    if err:
        raise RuntimeError(f"building the model failed: {err}")
    shape = LayerShape(cfg.hidden, cfg.intermediate, cfg.heads, cfg.kv_heads, tp, cfg.head_dim)
    with tempfile.TemporaryDirectory() as tmp:  # an empty tuner cache: every candidate is timed in this run
        tuner = SplitTuner(h.device_name, path=Path(tmp) / "splits.json", broadcast=h.rank0, rank=h.rank)
        for tokens in s["tokens"]:
            rows += bench_tokens(h, s, model, shape, h.sms, tuner, tokens)
            if after_size:
                after_size()


# ---------------------------------------------------------------------------------------------
# ratios, markdown, plot (pure functions of the JSON document; no GPU)
# ---------------------------------------------------------------------------------------------
def ratios(rows: list) -> list:
    """Per token count: weave / no_comm (how close to the no-communication bound), NCCL / weave and
    NCCL / fused (speedups); None where a figure is missing."""
    us = {(r["tokens"], r["mode"]): r.get("us") for r in rows if not r.get("error")}
    out = []
    for t in dict.fromkeys(r["tokens"] for r in rows):
        def div(a, b):
            a, b = us.get((t, a)), us.get((t, b))
            return a / b if a and b else None

        out.append({"tokens": t, "weave_over_no_comm": div("weave", "no_comm"), "nccl_over_weave": div("nccl", "weave"),
                    "nccl_over_fused": div("nccl", "fused")})
    return out


def schedule_text(sched) -> str:
    """A weave schedule in a table cell."""
    if not sched:
        return "-"
    if sched["mode"] == "weave":
        return f"split {sched['split']}"
    return "plain (NCCL)" if sched["mode"] == "plain" else sched["mode"]


def _rate(v) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k"


def markdown(doc: dict) -> str:
    """The layer table: us per layer per mode, weave's schedule, the ratios, weave's token rate."""
    s, rows = doc["settings"], doc["results"]
    cfg, modes = s["config"], s.get("modes", MODES)
    by = {(r["tokens"], r["mode"]): r for r in rows}
    rat = {x["tokens"]: x for x in doc.get("ratios") or ratios(rows)}
    note = report.scope_note(doc)
    norms = {r["tokens"]: r["norm"]["residual"] for r in rows if r.get("norm")}
    tp = s.get("shard_of")
    shard = f" (rank 0's shard of TP={tp})" if tp and tp != doc["world_size"] else ""
    lines = [f"**TP Llama decoder layer** (hidden {cfg['hidden']}, intermediate {cfg['intermediate']}, "
             f"{cfg['heads']} heads, {cfg['kv_heads']} kv heads; {s['layers']} random bf16 layer(s)) on "
             f"{doc['world_size']}x {doc['device']}{shard}, commit {report.commit_of(doc)}: median us per "
             f"layer, whole forward in one CUDA graph (rank 0); weave = SplitTuner's schedule with "
             f"{s['comm_ctas']} comm CTAs; {s['residual_mode']} residual"
             f"{'; fused/weave GEMMs write to symmetric memory (zero copy)' if s.get('zero_copy') else ''}"
             f"; norms outside the fused op: the shared fused add+RMSNorm (fastest measured)"
             f"{'; ' + note if note else ''}.\n",
             "| tokens | " + " | ".join(LABELS[m] + " us" for m in modes) + " | weave schedule | "
             + " | ".join(label for _, label in RATIOS) + " | weave tokens/s per layer |",
             "|---:|" + "---:|" * len(modes) + ":---|" + "---:|" * (len(RATIOS) + 1)]
    for t in dict.fromkeys(r["tokens"] for r in rows):
        cells = [str(t)]
        for m in modes:
            r = by.get((t, m), {})
            cells.append(report.fmt_us(None if r.get("error") else r.get("us_per_layer")))
        weave = by.get((t, "weave"), {})
        cells.append(schedule_text(weave.get("schedule")))
        cells += [report.fmt_ratio(rat.get(t, {}).get(key)) for key, _ in RATIOS]
        cells.append(_rate(None if weave.get("error") else weave.get("tokens_per_s_per_layer")))
        lines.append("| " + " | ".join(cells) + " |")
    if norms:
        lines.append("\nshared fused norm by token count: " + ", ".join(f"{t}: {n}" for t, n in norms.items()))
    errs = {}
    for r in rows:
        if r.get("error"):
            errs.setdefault((r["mode"], r["error"][:200]), []).append(r["tokens"])
        for c in r.get("candidates") or []:  # a failed split falls back silently in the table
            if c.get("error"):
                errs.setdefault((f"weave candidate {schedule_text(c)}", c["error"][:200]), []).append(r["tokens"])
    if errs:
        lines.append("\nErrors / skips:\n")
        lines += [f"- {m} at tokens {toks}: {e}" for (m, e), toks in errs.items()]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path) -> str | None:
    """PNG: us per layer vs tokens per mode (log-log), and the ratios vs tokens."""
    if (mpl := report.pyplot()) is None:
        return None
    plt, FuncFormatter = mpl
    rows = [r for r in doc["results"] if not r.get("error") and r.get("us_per_layer")]
    fig, (lat, rat) = plt.subplots(1, 2, figsize=(12.4, 4.8))
    for m in doc["settings"].get("modes", MODES):
        pts = sorted((r["tokens"], r["us_per_layer"]) for r in rows if r["mode"] == m)
        if pts:
            lat.plot([p[0] for p in pts], [p[1] for p in pts], "--" if m == "no_comm" else "-", marker="o", ms=3,
                     label=LABELS[m])
    lat.set_xscale("log", base=2)
    lat.set_yscale("log")
    lat.set_ylabel("us per layer (median, rank 0)")
    lat.set_title("forward latency per layer")
    for key, label in RATIOS:
        pts = [(x["tokens"], x[key]) for x in doc.get("ratios") or ratios(doc["results"]) if x.get(key)]
        if pts:
            rat.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
    rat.axhline(1.0, color="gray", lw=0.8)
    rat.set_xscale("log", base=2)
    rat.set_ylabel("ratio of latencies")
    rat.set_title("speedups and distance to the no-communication bound")
    for ax in (lat, rat):
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("tokens")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    note = report.scope_note(doc)
    return report.save_figure(plt, fig, path, f"TP Llama layer: {doc['world_size']}x {doc['device']} "
                                              f"({report.commit_of(doc)})" + (f"\n{note}" if note else ""))


def write_outputs(doc: dict, out_dir, plotted: bool = True) -> dict:
    """JSON, markdown and (``plotted``, with matplotlib) PNG of ``doc`` under ``out_dir``; their paths."""
    doc["ratios"] = ratios(doc["results"])
    return report.write_outputs(doc, out_dir, markdown=markdown, plot=plot, plotted=plotted)


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def run(args) -> int:
    """``bench``: the whole benchmark; 1 if it stopped early (rows keep per-size errors otherwise), 2
    with one line naming what is missing when this machine cannot run it (no CUDA GPU, no Hopper)."""
    from weave_nvshmem import preflight
    from weave_nvshmem.errors import WeaveError

    try:
        preflight.require_gpu("tp_llama bench")
    except WeaveError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.budget_s is None:
        args.budget_s = 190.0 if args.quick else 420.0
    s = settings(args)
    reserve = max(s["tokens"]) * s["config"]["hidden"] * 2
    ours = any(m in OURS for m in s["modes"])
    if ours:  # one channel staging the largest input, plus the GEMM output buffer (zero copy)
        os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE",
                              str(heap_bytes(int(os.environ.get("WORLD_SIZE", "1")), reserve, reserve)))
    h = Harness(timeout_s=args.timeout_s, nccl_timeout_s=args.nccl_timeout_s, budget_s=args.budget_s,
                verbose=args.verbose)
    rc = 0
    try:
        h.log(f"TP Llama layer bench{' --quick' if s['quick'] else ''}: world {h.world}, {h.device_name}, "
              f"tokens {s['tokens']}, modes {s['modes']}, {s['layers']} layer(s), reserve {fmt_bytes(reserve)}")
        if ours:
            h.start_ours(reserve)
            h.start_zero_copy(reserve)  # fused/weave: the row-parallel GEMMs write here (symmetric)
        s["zero_copy"] = h.zc_flat is not None
        rows = []
        doc = provenance.describe("layer", h.device_name, h.world)
        doc.update(schema=SCHEMA, settings=dict(s, reserved_bytes=reserve), setup_errors={"ours": h.comm_err},
                   results=rows, fatal=None, fused_norm=baselines.fused_add_rmsnorm.records())
        t0 = time.perf_counter()

        def save(plotted=False):
            """Rank 0 writes what is measured so far (a run killed by a timeout keeps its sizes)."""
            doc.update(elapsed_s=time.perf_counter() - t0, communicator_rebuilds=h.rebuilds,
                       fused_norm=baselines.fused_add_rmsnorm.records())
            return write_outputs(doc, args.out, plotted=plotted) if h.rank == 0 else {}

        try:
            bench_layers(h, s, rows, after_size=save)
        except Exception as exc:  # noqa: BLE001 - the rows so far are still written
            doc["fatal"], rc = err_text(exc), 1
            traceback.print_exc()
        paths = save(plotted=True)
        if h.rank == 0:
            print("\n" + markdown(doc), flush=True)
            h.log(f"wrote {', '.join(paths.values())}")
    except Exception:  # noqa: BLE001
        rc = 1
        traceback.print_exc()
    finally:
        h.close()
    return rc
