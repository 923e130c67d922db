"""The tune suite: every algorithm x CTA count of all_reduce and the fused op at tokens x 8192 bf16;
rank 0's pick per size (the fewest CTAs within ``TUNE_TOLERANCE`` of the fastest) is installed as
this device's tuning table by ``weave_nvshmem.collectives.tuning.install``, where the planner reads it."""
from __future__ import annotations

from .. import variants
from ..harness import InputSets, plan_sets, replicated_weight
from .common import allocate, release

OPS = ("all_reduce", "fused_allreduce_rmsnorm")


def tune_pick(times: dict, tolerance: float = variants.TUNE_TOLERANCE):
    """The (algorithm, ctas) to use from ``times`` {(algorithm, ctas): us or None}: the fewest CTAs
    within ``tolerance`` of the fastest, then the faster; None if nothing ran."""
    ok = {k: v for k, v in times.items() if v}
    if not ok:
        return None
    best = min(ok.values())
    return min((k for k, v in ok.items() if v <= best * (1 + tolerance)), key=lambda k: (k[1], ok[k]))


def _candidates(op, tokens, world):
    """(algorithm, ctas) pairs the planner accepts at this size."""
    from ...collectives import plan as planning

    nbytes = tokens * variants.AR_HIDDEN * 2
    out = []
    for alg in variants.TUNE_ALGORITHMS:
        for c in variants.TUNE_CTAS:
            if alg == "oneshot" and nbytes > variants.ONESHOT_MAX_BYTES:
                continue
            try:
                if op == "all_reduce":
                    planning.plan_all_reduce(tokens * variants.AR_HIDDEN, "bf16", world, alg, c)
                else:
                    planning.plan_fused(tokens, variants.AR_HIDDEN, "bf16", world, alg, c)
            except ValueError:  # this algorithm cannot take this size
                continue
            out.append((alg, c))
    return out


def run(h, s: dict) -> list:
    """One row per (op, tokens) with every configuration's time and rank 0's pick. Collective."""
    import torch

    rows = []
    hidden = variants.AR_HIDDEN
    weight = replicated_weight(h, hidden)
    for op in OPS:
        for idx, tokens in enumerate(s["tokens"]):
            nbytes = tokens * hidden * 2
            r = {"op": op, "tokens": tokens, "hidden": hidden, "bytes": nbytes, "measured": {}}
            rows.append(r)
            if h.budget_exhausted():
                r["error"] = "skipped: --budget-s exhausted"
                continue
            if h.comm is None:
                r["error"] = h.comm_err or "no communicator"
                continue
            counts = plan_sets(nbytes, s)
            made, err = allocate(h, lambda: (
                InputSets(h, (tokens, hidden), counts[0], key=5000 + idx, residual=op != "all_reduce"),
                torch.empty((tokens, hidden), dtype=torch.bfloat16, device=h.device)))
            if err:
                r["error"] = err
                continue
            sets, out = made
            times = {}
            for alg, c in _candidates(op, tokens, h.world):
                if op == "all_reduce":
                    def call(i, alg=alg, c=c):
                        h.comm.all_reduce(sets.xs[i], out=sets.xs[i], algorithm=alg, ctas=c)
                else:
                    def call(i, alg=alg, c=c):
                        h.comm.fused_allreduce_rmsnorm(sets.xs[i], sets.rs[i], weight, variants.EPS, algorithm=alg,
                                                       ctas=c, out=out)
                res = h.measure(call, sets.refresh, *counts)
                times[(alg, c)] = None if res.get("error") else res.get("us")
                r["measured"][f"{alg}:{c}"] = times[(alg, c)] or res.get("error")
            pick = h.rank0(tune_pick(times))
            if pick is None:
                r["error"] = "no configuration ran"
            else:
                r.update(algorithm=pick[0], ctas=pick[1], us=times.get(tuple(pick)))
                h.log(f"tune {op} T={tokens}: {pick[0]} x {pick[1]} CTAs, {r['us']} us")
            made = sets = out = None
            release()
    return rows
