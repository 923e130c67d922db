"""all_reduce of tokens x 8192 bf16 (and raw sizes in full runs): ours vs NCCL and torch SymmetricMemory."""
from __future__ import annotations

from .. import baselines, variants
from ..harness import InputSets, fmt_bytes, plan_sets
from .common import allocate, finish, plan_dict, release, row, skip_all

NAME = "allreduce"


def cases(s: dict) -> list:
    """(series, tokens, bytes, shape) of every size the suite times."""
    out = [("tokens", t, t * variants.AR_HIDDEN * 2, (t, variants.AR_HIDDEN)) for t in s["tokens"]]
    return out + [("bytes", None, b, (b // 2,)) for b in s["raw_bytes"]]


def _specs(series, tokens, nbytes):
    hidden = variants.AR_HIDDEN if tokens else None
    specs = [(row(series, v, tokens=tokens, hidden=hidden, nbytes=nbytes), v, None) for v in variants.names(NAME)]
    if series == "tokens" and tokens in variants.AR_CTA_TOKENS:
        specs += [(row("cta_sweep", v, tokens=tokens, hidden=hidden, nbytes=nbytes, ctas=c), v, c)
                  for v in variants.SWEPT[NAME] for c in variants.SWEEP_CTAS]
    return specs


def _call(h, sets, r, v, ctas, nbytes):
    """(call(i), copy_to) of variant ``v``, or (why it cannot run, None)."""
    from ...collectives import plan as planning

    if v.startswith("symm"):
        if sets.ys is None:
            return sets.symm_err or "torch symm_mem unavailable", None
        op = baselines.symm_one_shot if v == "symm_oneshot" else baselines.symm_two_shot
        return (lambda i: op(sets.ys[i], h.group_name)), sets.y
    if v == "nccl":
        return (lambda i: baselines.nccl_all_reduce(sets.xs[i])), None
    alg = variants.ALGORITHM.get(v, "auto")
    r.update(algorithm=alg, plan=plan_dict(planning.plan_all_reduce, sets.n, "bf16", h.world, alg, ctas))
    if h.comm is None:
        return h.comm_err or "communicator unavailable", None
    if v in variants.ZERO_COPY:
        r["zero_copy"] = True
        if sets.zs is None:
            return sets.zc_err or "no symmetric input buffer", None
        return (lambda i: h.comm.all_reduce(sets.zs[i], out=sets.zs[i], algorithm=alg, ctas=ctas)), sets.z
    if alg == "oneshot" and nbytes > variants.ONESHOT_MAX_BYTES:
        return f"skipped: oneshot only up to {fmt_bytes(variants.ONESHOT_MAX_BYTES)}", None
    if alg == "lamport" and nbytes > planning.LAMPORT_SLOT:
        return f"skipped: lamport takes up to {fmt_bytes(planning.LAMPORT_SLOT)}", None
    return (lambda i: h.comm.all_reduce(sets.xs[i], out=sets.xs[i], algorithm=alg, ctas=ctas)), None


def run(h, s: dict) -> list:
    """Every size of ``s`` (collective); one row per (size, variant) and per swept CTA count."""
    rows = []
    for idx, (series, tokens, nbytes, shape) in enumerate(cases(s)):
        specs = _specs(series, tokens, nbytes)
        if h.budget_exhausted():
            rows += skip_all(h, [sp[0] for sp in specs], "skipped: --budget-s exhausted")
            continue
        counts = plan_sets(nbytes, s)
        sets, err = allocate(h, lambda: InputSets(h, shape, counts[0], key=100 + idx))
        if err:
            rows += skip_all(h, [sp[0] for sp in specs], err)
            continue
        for r, v, ctas in specs:
            call, copy_to = _call(h, sets, r, v, ctas, nbytes)
            res = {"error": call} if isinstance(call, str) else \
                h.measure(call, lambda copy_to=copy_to: sets.refresh(copy_to), *counts)
            rows.append(finish(h, r, res, variants.BUS_FACTOR[NAME]))
        sets = None
        release()
    return rows
