"""reduce_scatter / all_gather of a tokens x 8192 bf16 tensor: ours vs NCCL."""
from __future__ import annotations

from .. import variants
from ..harness import InputSets, plan_sets
from .common import allocate, finish, plan_dict, release, row, skip_all


def _zero_copy(name: str, v: str) -> bool:
    """Whether variant ``v`` reads symmetric inputs in place (all_gather reads none in place)."""
    return v in variants.ZERO_COPY and name == "reducescatter"


def _call(h, name, sets, out, r, v, ctas, tokens):
    """call(i) of variant ``v``, or why it cannot run."""
    import torch.distributed as dist

    from ...collectives import plan as planning

    if v == "nccl":
        if name == "reducescatter":
            return lambda i: dist.reduce_scatter_tensor(out, sets.xs[i])
        return lambda i: dist.all_gather_into_tensor(out, sets.xs[i])
    alg, zero_copy = variants.ALGORITHM.get(v, "auto"), _zero_copy(name, v)
    op_name = "reduce_scatter" if name == "reducescatter" else "all_gather"
    r.update(algorithm=alg, zero_copy=zero_copy,
             plan=plan_dict(planning.plan_scatter_gather, op_name, tokens * variants.AR_HIDDEN, "bf16", h.world, ctas,
                            zero_copy=zero_copy, algorithm=alg))
    inputs = sets.zs if zero_copy else sets.xs
    if h.comm is None:
        return h.comm_err or "communicator unavailable"
    if inputs is None:
        return sets.zc_err or "no symmetric input buffer"
    op = h.comm.reduce_scatter if name == "reducescatter" else h.comm.all_gather
    return lambda i: op(inputs[i], out=out, ctas=ctas, algorithm=alg)


def run(h, s: dict, name: str) -> list:
    """``name`` = "reducescatter" or "allgather" at every size of ``s`` (collective)."""
    import torch

    rows = []
    w, hidden = h.world, variants.AR_HIDDEN
    for idx, tokens in enumerate(s["scatter_gather_tokens"]):
        nbytes = tokens * hidden * 2
        full, part = (tokens, hidden), (tokens // w, hidden)
        specs = [(row("tokens", v, tokens=tokens, hidden=hidden, nbytes=nbytes), v, None) for v in variants.names(name)]
        if tokens in variants.AR_CTA_TOKENS:
            specs += [(row("cta_sweep", v, tokens=tokens, hidden=hidden, nbytes=nbytes, ctas=c), v, c)
                      for v in variants.SWEPT[name] for c in variants.SWEEP_CTAS]
        if tokens % w:
            rows += skip_all(h, [sp[0] for sp in specs], f"skipped: {tokens} tokens do not split over {w} ranks")
            continue
        if h.budget_exhausted():
            rows += skip_all(h, [sp[0] for sp in specs], "skipped: --budget-s exhausted")
            continue
        counts = plan_sets(nbytes, s)
        made, err = allocate(h, lambda: (
            InputSets(h, full if name == "reducescatter" else part, counts[0], key=2000 + idx),
            torch.empty(part if name == "reducescatter" else full, dtype=torch.bfloat16, device=h.device)))
        if err:
            rows += skip_all(h, [sp[0] for sp in specs], err)
            continue
        sets, out = made
        for r, v, ctas in specs:
            call = _call(h, name, sets, out, r, v, ctas, tokens)
            copy_to = sets.z if _zero_copy(name, v) else None
            res = {"error": call} if isinstance(call, str) else \
                h.measure(call, lambda copy_to=copy_to: sets.refresh(copy_to), *counts)
            rows.append(finish(h, r, res, variants.BUS_FACTOR[name]))
        made = sets = out = None
        release()
    return rows
