"""End-to-end benchmark of the TP Llama example: every mode's whole forward in one CUDA graph.

Entry point ``tp_llama.py bench``, one process per GPU::

    torchrun --nproc-per-node=N examples/tp_llama.py bench --out bench/ [--quick] [--budget-s N]

Llama-3-70B shapes (hidden 8192, intermediate 28672, 64 heads, 8 kv heads), ``--layers`` random bf16
layers. At each token count the modes nccl, fused, weave and no_comm run in the same process on the
same weights; each forward is captured whole in a CUDA graph and timed by ``weave_nvshmem.bench``'s
``Ctx.measure`` (fresh random inputs, L2 flush and a device barrier before every replay, median over
replays on rank 0), so these figures compare with the collective benchmarks'. weave runs TokenWeave's
schedule: ``overlap.candidates`` proposes fused / plain / split schedules, ``SplitTuner`` times each
one's graph and keeps rank 0's pick (broadcast); the pick and every candidate's time are recorded.
Rank 0 writes <out>/layer-<device>-w<world>.{json,md,png} and prints the markdown table.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tp_llama  # noqa: E402
from weave_nvshmem import bench  # noqa: E402
from weave_nvshmem.overlap import LayerShape, SplitTuner, candidates  # noqa: E402

SCHEMA = "weave_nvshmem.bench_layer/1"
TOKENS_FULL = (1, 16, 128, 512, 1024, 2048, 4096, 8192, 16384)
TOKENS_QUICK = (1, 128, 1024, 8192)
#: the example's mode that runs each SplitTuner candidate ("plain": all-reduce, then add + RMSNorm)
CANDIDATE_MODE = {"fused": "fused", "plain": "nccl", "weave": "weave"}
LABELS = {"nccl": "NCCL", "fused": "fused", "weave": "weave", "no_comm": "no comm"}
RATIOS = (("nccl_over_weave", "NCCL / weave"), ("nccl_over_fused", "NCCL / fused"),
          ("weave_over_no_comm", "weave / no comm"))


def add_arguments(p) -> None:
    p.add_argument("--out", default="bench", help="output directory (rank 0 writes layer-<device>-w<world>.*)")
    p.add_argument("--quick", action="store_true", help=f"tokens {TOKENS_QUICK}, fewer replays")
    p.add_argument("--tokens", type=int, nargs="+", help=f"token counts (default {TOKENS_FULL})")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip the remaining token counts after this many seconds (default 190 quick, 420 full; "
                        "0: no limit)")
    p.add_argument("--layers", type=int, default=2, help="decoder layers in the forward")
    p.add_argument("--comm-ctas", type=int, default=8, help="CTAs of weave's fused collectives")
    p.add_argument("--residual", choices=tp_llama.RESIDUAL_MODES, default="replicated",
                   help="residual mode of the fused and weave forwards")
    p.add_argument("--replays", type=int, default=0, help="timed replays per mode (0: 20, quick 10)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="weave_nvshmem cross-rank wait timeout")
    p.add_argument("--nccl-timeout-s", type=float, default=300.0, help="torch.distributed (NCCL/gloo) timeout")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of recorded errors")


def settings(args) -> dict:
    quick = bool(args.quick)
    replays = args.replays or (10 if quick else 20)
    cfg = dataclasses.replace(tp_llama.LLAMA3_70B, layers=args.layers)
    return {
        "quick": quick, "dtype": "bfloat16", "config": dataclasses.asdict(cfg), "layers": cfg.layers,
        "tokens": list(args.tokens or (TOKENS_QUICK if quick else TOKENS_FULL)),
        "comm_ctas": args.comm_ctas, "residual_mode": args.residual,
        "warmup": 2, "replays": replays, "tune_replays": max(3, replays // 3),
        "budget_s": args.budget_s, "timeout_s": args.timeout_s,
        "graphs": "one CUDA graph per (mode, tokens) of graph_calls(tokens) whole forwards (4 up to 1024 tokens, "
                  "2 up to 4096, else 1), each on its own input set",
        "timing": "weave_nvshmem.bench Ctx.measure: per replay, inputs regenerated, 2xL2 rewritten, device barrier, "
                  "then CUDA events around graph.replay(); us = median over replays of replay time / forwards "
                  "(rank 0); us_per_layer = us / layers; tokens_per_s_per_layer = tokens / us_per_layer",
        "zero_copy": "fused and weave: o_proj and down write into a symmetric buffer (weave_nvshmem.empty), "
                     "which the fused op reads on the peers in place",
        "weave": "overlap.candidates (fused, plain = NCCL, best-predicted splits) each timed as a graph with "
                 "tune_replays replays by SplitTuner (rank 0 decides, broadcast_object_list); the weave row "
                 "times the chosen schedule with the full replays",
    }


def graph_calls(tokens: int) -> int:
    """Forwards per graph (and input sets): several for short forwards, so launch gaps average out."""
    return 4 if tokens <= 1024 else 2 if tokens <= 4096 else 1


# ---------------------------------------------------------------------------------------------
# measurement (collective)
# ---------------------------------------------------------------------------------------------
def _broadcast(ctx, obj):
    """Rank 0's ``obj`` on every rank (the SplitTuner's verdict)."""
    import torch.distributed as dist

    box = [obj]
    if ctx.world > 1:
        dist.broadcast_object_list(box, src=0, group=ctx.ctrl)
    return box[0]


def _tune(s, tuner, shape, sms, tokens, timed):
    """TokenWeave's schedule at ``tokens``: (SplitTuner's pick, every candidate's timing record)."""
    cands = candidates(shape, tokens, sms=sms, comm_ctas=s["comm_ctas"])
    tried = []

    def measure(c):
        res = timed(CANDIDATE_MODE[c.mode], c.split, s["tune_replays"])
        tried.append({"mode": c.mode, "split": c.split, "us": res.get("us"), "error": res.get("error")})
        return res["us"] if res.get("us") and not res.get("error") else float("inf")

    key = tuner.key(tokens=tokens, layers=s["layers"], comm_ctas=s["comm_ctas"], residual=s["residual_mode"],
                    **dataclasses.asdict(shape))
    return tuner.choose(key, cands, measure), tried


def _finish(ctx, row, res):
    row.update(res)
    what = f"T={row['tokens']:<6} {row['mode']:8s}"
    if row.get("error"):
        ctx.log(f"{what} ERROR {row['error'][:160]}")
        return row
    row["us_per_layer"] = row["us"] / row["layers"]
    row["tokens_per_s_per_layer"] = row["tokens"] / row["us_per_layer"] * 1e6
    sched = f" [{schedule_text(row['schedule'])}]" if row.get("schedule") else ""
    ctx.log(f"{what} {row['us_per_layer']:10.1f} us/layer (max over ranks {row['us_max_rank'] / row['layers']:.1f})"
            f"{sched}")
    return row


def bench_tokens(ctx, s, model, shape, sms, tuner, tokens) -> list:
    """The four modes' rows at ``tokens`` (weave after its tuning). Collective; never raises for one
    (mode, size): failures become the row's error, agreed by all ranks."""
    import torch

    cfg = model.cfg
    specs = [{"tokens": tokens, "mode": m, "layers": cfg.layers, "hidden": cfg.hidden} for m in tp_llama.MODES]
    if bench._budget_exhausted(ctx):
        return bench._skip_all(ctx, specs, "skipped: --budget-s exhausted", False)
    calls = graph_calls(tokens)
    made = {}
    err = ctx.agree(ctx._try(lambda: made.update(pool=bench.Pool(ctx, (tokens, cfg.hidden), calls, key=tokens))))
    if err:
        made.clear()
        torch.cuda.empty_cache()
        return bench._skip_all(ctx, specs, f"input allocation failed: {err}", False)
    pool = made.pop("pool")

    def timed(mode, split, replays):
        """Graph-timed forwards in ``mode`` (``split``: weave only); bench's result dict."""
        fused = mode in ("fused", "weave")
        if fused and ctx.comm is None:
            return {"error": ctx.comm_err or "communicator unavailable"}
        gemm_out = ctx.zc_flat[:tokens * cfg.hidden].view(tokens, cfg.hidden) if ctx.zc_flat is not None else None
        coll = tp_llama.Collective(mode, cfg.eps, comm=ctx.comm, ctas=s["comm_ctas"] if mode == "weave" else None,
                                   residual_mode=s["residual_mode"] if fused else "replicated", gemm_out=gemm_out)
        return ctx.measure(lambda i: model.forward(pool.xs[i], coll, split), pool.refresh, calls, calls,
                           s["warmup"], replays)

    rows = []
    for row in specs:
        if row["mode"] == "weave" and ctx.comm is None:  # else the tuner could pick plain and time NCCL
            res = {"error": ctx.comm_err or "communicator unavailable"}
        elif row["mode"] == "weave":
            chosen, tried = _tune(s, tuner, shape, sms, tokens, timed)
            row.update(schedule={"mode": chosen.mode, "split": chosen.split}, candidates=tried,
                       comm_ctas=s["comm_ctas"])
            res = timed(CANDIDATE_MODE[chosen.mode], chosen.split, s["replays"])
        else:
            res = timed(row["mode"], 0, s["replays"])
        rows.append(_finish(ctx, row, res))
    pool = None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return rows


def bench_layers(ctx, s, rows: list, after_size=None) -> None:
    """Every token count of ``s`` into ``rows`` (appended as they finish, kept if a later one raises);
    ``after_size()`` runs after each token count."""
    import torch

    cfg = tp_llama.LlamaConfig(**s["config"])
    made = {}
    err = ctx.agree(ctx._try(lambda: made.update(model=tp_llama.TPModel(cfg, ctx.world, ctx.rank, ctx.device))))
    if err:
        raise RuntimeError(f"building the model failed: {err}")
    model = made.pop("model")
    shape = LayerShape(cfg.hidden, cfg.intermediate, cfg.heads, cfg.kv_heads, ctx.world, cfg.head_dim)
    sms = torch.cuda.get_device_properties(ctx.device).multi_processor_count
    with tempfile.TemporaryDirectory() as tmp:  # an empty tuner cache: every candidate is timed in this run
        tuner = SplitTuner(ctx.device_name, path=Path(tmp) / "splits.json", broadcast=lambda o: _broadcast(ctx, o),
                           rank=ctx.rank)
        for tokens in s["tokens"]:
            rows += bench_tokens(ctx, s, model, shape, sms, tuner, tokens)
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
    s, rows = doc["settings"], doc["results"]
    cfg = s["config"]
    by = {(r["tokens"], r["mode"]): r for r in rows}
    rat = {x["tokens"]: x for x in doc.get("ratios") or ratios(rows)}
    lines = [f"**TP Llama decoder layer** (hidden {cfg['hidden']}, intermediate {cfg['intermediate']}, "
             f"{cfg['heads']} heads, {cfg['kv_heads']} kv heads; {s['layers']} random bf16 layer(s)) on "
             f"{doc['world_size']}x {doc['device']}, commit {str(doc.get('git_commit', '?'))[:10]}: median us per "
             f"layer, whole forward in one CUDA graph (rank 0); weave = SplitTuner's schedule with "
             f"{s['comm_ctas']} comm CTAs; {s['residual_mode']} residual"
             f"{'; fused/weave GEMMs write to symmetric memory (zero copy)' if s.get('zero_copy') else ''}.\n",
             "| tokens | " + " | ".join(LABELS[m] + " us" for m in tp_llama.MODES) + " | weave schedule | "
             + " | ".join(label for _, label in RATIOS) + " | weave tokens/s per layer |",
             "|---:|" + "---:|" * len(tp_llama.MODES) + ":---|" + "---:|" * (len(RATIOS) + 1)]
    for t in dict.fromkeys(r["tokens"] for r in rows):
        cells = [str(t)]
        for m in tp_llama.MODES:
            r = by.get((t, m), {})
            cells.append(bench._f(None if r.get("error") else r.get("us_per_layer")))
        weave = by.get((t, "weave"), {})
        cells.append(schedule_text(weave.get("schedule")))
        cells += [bench._x(rat.get(t, {}).get(key)) for key, _ in RATIOS]
        cells.append(_rate(None if weave.get("error") else weave.get("tokens_per_s_per_layer")))
        lines.append("| " + " | ".join(cells) + " |")
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
    if (mpl := bench.pyplot()) is None:
        return None
    plt, FuncFormatter = mpl
    rows = [r for r in doc["results"] if not r.get("error") and r.get("us_per_layer")]
    fig, (lat, rat) = plt.subplots(1, 2, figsize=(12.4, 4.8))
    for m in tp_llama.MODES:
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
    fig.suptitle(f"TP Llama layer: {doc['world_size']}x {doc['device']} ({str(doc.get('git_commit', '?'))[:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def write_outputs(doc: dict, out_dir, plotted: bool = True) -> dict:
    """JSON, markdown and (``plotted``, with matplotlib) PNG of ``doc`` under ``out_dir``; their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"layer-{doc['device_slug']}-w{doc['world_size']}"
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    doc["ratios"] = ratios(doc["results"])
    paths["json"].write_text(json.dumps(doc, indent=1, default=str) + "\n")
    paths["md"].write_text(markdown(doc))
    if plotted:
        try:
            if plot(doc, out_dir / f"{stem}.png") is not None:
                paths["png"] = out_dir / f"{stem}.png"
        except Exception as exc:  # noqa: BLE001
            print(f"warning: plot failed ({bench._err(exc)})", file=sys.stderr, flush=True)
    return {k: str(v) for k, v in paths.items()}


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def run(args) -> int:
    """``bench``: the whole benchmark; 1 if it stopped early (rows keep per-size errors otherwise)."""
    if args.budget_s is None:
        args.budget_s = 190.0 if args.quick else 420.0
    s = settings(args)
    reserve = max(s["tokens"]) * s["config"]["hidden"] * 2
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # one channel of (2*world + 2) staging slots, the GEMM output buffer (zero copy) plus slack
    os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE",
                          str(8192 + (2 * world + 3) * ((reserve + 255) // 256 * 256) + 512 * bench.MB))
    ctx = bench.Ctx(args, s)
    rc = 0
    try:
        ctx.log(f"TP Llama layer bench{' --quick' if s['quick'] else ''}: world {ctx.world}, {ctx.device_name}, "
                f"tokens {s['tokens']}, {s['layers']} layer(s), reserve {bench._fmt_bytes(reserve)}")
        ctx.start_ours(reserve)
        ctx.start_zero_copy(reserve)  # fused/weave: the row-parallel GEMMs write here (symmetric)
        rows = []
        doc = {"schema": SCHEMA, "name": "layer", "device": ctx.device_name,
               "device_slug": bench._slug(ctx.device_name), "world_size": ctx.world,
               "git_commit": bench._git_commit(), "versions": bench._versions(),
               "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "settings": dict(s, reserved_bytes=reserve, env=bench._env_snapshot()),
               "setup_errors": {"ours": ctx.comm_err}, "results": rows, "fatal": None}
        t0 = time.perf_counter()

        def save(plotted=False):
            """Rank 0 writes what is measured so far (a run killed by a timeout keeps its sizes)."""
            doc["elapsed_s"] = time.perf_counter() - t0
            doc["communicator_rebuilds"] = ctx.rebuilds
            return write_outputs(doc, args.out, plotted=plotted) if ctx.rank == 0 else {}

        try:
            bench_layers(ctx, s, rows, after_size=save)
        except Exception as exc:  # noqa: BLE001 - the rows so far are still written
            doc["fatal"], rc = bench._err(exc), 1
            traceback.print_exc()
        paths = save(plotted=True)
        if ctx.rank == 0:
            print("\n" + markdown(doc), flush=True)
            ctx.log(f"wrote {', '.join(paths.values())}")
    except Exception:  # noqa: BLE001
        rc = 1
        traceback.print_exc()
    finally:
        bench._shutdown(ctx)
    return rc
