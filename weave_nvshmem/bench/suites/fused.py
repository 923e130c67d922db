"""Fused all-reduce + residual add + RMSNorm, tokens x {8192, 5120} bf16: ours vs what an engine runs
(NCCL or torch SymmetricMemory all-reduce, then the shared fused add+RMSNorm)."""
from __future__ import annotations

from .. import baselines, variants
from ..harness import InputSets, fmt_bytes, plan_sets, replicated_weight
from .common import allocate, finish, norm_timer, plan_dict, release, row, skip_all

NAME = "fused"
#: variants that run the shared fused norm after (or without) an all-reduce
NORMED = ("nccl_norm", "symm_norm", "ours_ar_norm", "norm_only")


def _specs(tokens, hidden, nbytes):
    specs = [(row("tokens", v, tokens=tokens, hidden=hidden, nbytes=nbytes), v, None) for v in variants.names(NAME)]
    if tokens >= variants.FUSED_CTA_MIN_TOKENS and hidden == variants.AR_HIDDEN:
        specs += [(row("cta_sweep", v, tokens=tokens, hidden=hidden, nbytes=nbytes, ctas=c), v, c)
                  for v in variants.SWEPT[NAME] for c in variants.SWEEP_CTAS]
    return specs


def baseline_fn(h, v: str):
    """The callable ``fn(x, residual, weight, eps)`` of baseline or bound ``v`` (one of ``NORMED``);
    ``x`` is the symmetric copy for ``symm_norm``."""
    norm = baselines.fused_add_rmsnorm
    if v == "nccl_norm":
        return baselines.then_norm(baselines.nccl_all_reduce, norm)
    if v == "symm_norm":
        return baselines.then_norm(lambda y: baselines.symm_two_shot(y, h.group_name), norm)
    if v == "ours_ar_norm":
        return baselines.then_norm(lambda x: h.comm.all_reduce(x, out=x), norm)
    if v == "norm_only":
        return norm
    raise ValueError(f"fused suite: {v!r} is not a baseline (expected one of {NORMED})")


def _call(h, sets, outs, weight, r, v, ctas, tokens, hidden, nbytes):
    """(call(i), copy_to) of variant ``v``, or (why it cannot run, None)."""
    from ...collectives import plan as planning

    eps = variants.EPS
    if v in NORMED:
        if v == "symm_norm" and sets.ys is None:
            return sets.symm_err or "torch symm_mem unavailable", None
        if v == "ours_ar_norm":
            r["plan"] = plan_dict(planning.plan_all_reduce, sets.n, "bf16", h.world, "auto", None)
            if h.comm is None:
                return h.comm_err or "communicator unavailable", None
        fn, xs = baseline_fn(h, v), sets.ys if v == "symm_norm" else sets.xs
        return (lambda i: fn(xs[i], sets.rs[i], weight, eps)), sets.y if v == "symm_norm" else None
    alg = variants.ALGORITHM.get(v, "auto")
    mode = "sharded" if v == "ours_sharded" else "replicated"
    r.update(algorithm=alg, residual_mode=mode,
             plan=plan_dict(planning.plan_fused, tokens, hidden, "bf16", h.world, alg, ctas, sharded=mode == "sharded"))
    if h.comm is None:
        return h.comm_err or "communicator unavailable", None
    if alg == "lamport" and nbytes > planning.LAMPORT_SLOT:
        return f"skipped: lamport takes up to {fmt_bytes(planning.LAMPORT_SLOT)}", None
    xs = sets.xs
    if v in variants.ZERO_COPY:
        r["zero_copy"] = True
        if sets.zs is None:
            return sets.zc_err or "no symmetric input buffer", None
        xs = sets.zs
    return (lambda i: h.comm.fused_allreduce_rmsnorm(xs[i], sets.rs[i], weight, eps, residual_mode=mode,
                                                     algorithm=alg, ctas=ctas, out=outs[i])), \
        sets.z if v in variants.ZERO_COPY else None


def run(h, s: dict) -> list:
    """Every (hidden, tokens) of ``s`` (collective). Before a size's variants, the shared fused norm
    is chosen for it by measurement (rank 0's choice on every rank); the baseline rows name it."""
    import torch

    rows, idx = [], 0
    for hidden in s["fused_hiddens"]:
        weight = replicated_weight(h, hidden)
        for tokens in s["tokens"]:
            idx += 1
            nbytes = tokens * hidden * 2
            specs = _specs(tokens, hidden, nbytes)
            if h.budget_exhausted():
                rows += skip_all(h, [sp[0] for sp in specs], "skipped: --budget-s exhausted")
                continue
            counts = plan_sets(nbytes, s)
            made, err = allocate(h, lambda: (
                InputSets(h, (tokens, hidden), counts[0], key=1000 + idx, residual=True),
                [torch.empty((tokens, hidden), dtype=torch.bfloat16, device=h.device) for _ in range(counts[0])]))
            if err:
                rows += skip_all(h, [sp[0] for sp in specs], err)
                continue
            sets, outs = made  # one output per input set: every call writes fresh memory (harness)
            rec = baselines.fused_add_rmsnorm.choose(tokens, hidden, torch.bfloat16,
                                                     norm_timer(h, sets, weight, variants.EPS, counts), decide=h.rank0)
            h.log(f"T={tokens:<6} H={hidden} fused norm: {rec['chosen']} "
                  f"({', '.join(f'{k} {v:.1f}' for k, v in rec['us'].items() if isinstance(v, float))} us)")
            for r, v, ctas in specs:
                if v in NORMED:
                    r["norm"] = rec["chosen"]
                call, copy_to = _call(h, sets, outs, weight, r, v, ctas, tokens, hidden, nbytes)
                res = {"error": call} if isinstance(call, str) else \
                    h.measure(call, lambda copy_to=copy_to: sets.refresh(copy_to), *counts)
                rows.append(finish(h, r, res, None))
            made = sets = outs = None
            release()
    return rows
