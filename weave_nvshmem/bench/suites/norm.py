"""The norm suite (one GPU, world 1): ours vs every fused add + RMSNorm candidate, against HBM.

Ours is ``fused_allreduce_rmsnorm`` at world 1 (the single-pass local kernel), on an
``EmulatedWorld(1)`` communicator (no NVSHMEM needed) or, with ``--nvshmem``, on a real world-1
Communicator. Every candidate of ``baselines.NORM_CANDIDATES``, and with a residual the in-place
reference ``baselines.INDUCTOR_IN_PLACE``, is timed beside it by the same harness (CUDA graphs,
fresh random inputs rotated over sets beyond the L2, L2 evicted before each replay, every call
writing fresh memory). Bytes per call = read x + read residual + read weight + write residual +
write out (no residual: read x + read weight + write out); the device's copy rate (a 1 GiB
device-to-device copy, read + write counted) is measured in the same run, at its start and end.
"""
from __future__ import annotations

from .. import baselines, variants
from ..harness import MB, InputSets, plan_sets, replicated_weight
from .common import allocate, norm_timer, plan_dict, release

NAME = "norm"
COPY_BYTES = 1 << 30


def call_bytes(tokens: int, hidden: int, itemsize: int, residual: bool) -> int:
    """Bytes one call must move: x, (residual in and out,) weight, out."""
    return ((4 if residual else 2) * tokens * hidden + hidden) * itemsize


def cases(s: dict) -> list:
    """(dtype name, hidden, tokens, residual) of every row, most informative first (bf16 first),
    then the no-residual row set."""
    out = [(dt, hd, t, True) for dt in s["dtypes"] for hd in s["hiddens"] for t in s["tokens"]]
    nr = s["no_residual"]
    return out + [(nr["dtype"], nr["hidden"], t, False) for t in s["tokens"]]


def copy_rate(h) -> dict:
    """The device's copy rate over ``COPY_BYTES``: {"series": "copy", "us", "gbps", "memcpy_gbps"}
    (bytes read plus bytes written per second). The roofline is an SM copy kernel (an elementwise
    fp32 copy); a memcpy node in a CUDA graph is recorded beside it, since it measured slower
    (2.7 TB/s against 4.2 TB/s for the kernel on one H200 at commit e94ffea)."""
    import torch

    src = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device=h.device)
    src.uniform_(-1, 1)
    dst = torch.empty_like(src)
    res = h.measure(lambda i: torch.mul(src, 1.0, out=dst), lambda: None, 1, 4, 2, 10)
    memcpy = h.measure(lambda i: dst.copy_(src), lambda: None, 1, 4, 2, 10)
    r = {"series": "copy", "bytes": 2 * COPY_BYTES, **res}
    if r.get("us"):
        r["gbps"] = r["bytes"] / r["us"] / 1e3
        h.log(f"device copy: {r['gbps']:.0f} GB/s (SM copy kernel, read + write, {COPY_BYTES >> 20} MB)")
    if memcpy.get("us"):
        r["memcpy_gbps"] = r["bytes"] / memcpy["us"] / 1e3
    del src, dst
    release()
    return r


def local_world(max_bytes: int, timeout_s: float):
    """An ``EmulatedWorld(1)`` able to take rows of up to ``max_bytes`` (no NVSHMEM): its rank 0 runs
    our world-1 kernel."""
    from ...collectives.channel import workspace_bytes
    from ...collectives.communicator import CommOptions
    from ...collectives.emulated import EmulatedWorld

    opts = CommOptions(timeout_s=timeout_s, channels=1)
    arena = workspace_bytes(1, max_bytes) + workspace_bytes(1, opts.initial_bytes) + 64 * MB
    world = EmulatedWorld(1, arena_bytes=arena, options=opts)
    world.reserve(max_bytes)
    return world


class _Ours:
    """Our world-1 communicator: EmulatedWorld(1)'s rank 0, or ``h.comm`` (a real NVSHMEM one)."""

    def __init__(self, h, max_bytes: int, nvshmem: bool):
        self.world = None
        if nvshmem:
            h.start_ours(max_bytes)
            self.comm, self.err, self.fabric = h.comm, h.comm_err, "NVSHMEM, world 1"
            return
        self.fabric = "EmulatedWorld(1) (one process, no NVSHMEM)"
        try:
            self.world = local_world(max_bytes, h.timeout_s)
            self.comm, self.err = self.world.ranks[0], None
        except Exception as exc:  # noqa: BLE001 - recorded in every row
            self.comm, self.err = None, f"EmulatedWorld(1) failed: {type(exc).__name__}: {exc}"

    def close(self):
        if self.world is not None:
            self.world.close()
            self.world = None


def _row(h, ours, dt_name, hidden, tokens, residual, s) -> dict:
    import torch

    dtype = getattr(torch, dt_name)
    itemsize = torch.empty((), dtype=dtype).element_size()
    r = {"series": "norm", "tokens": tokens, "hidden": hidden, "dtype": dt_name, "residual": residual,
         "bytes": call_bytes(tokens, hidden, itemsize, residual)}
    if h.budget_exhausted():
        return dict(r, us=None, error="skipped: --budget-s exhausted")
    counts = plan_sets(tokens * hidden * itemsize, s)
    made, err = allocate(h, lambda: (
        InputSets(h, (tokens, hidden), counts[0], key=7000 + tokens + hidden, residual=residual, dtype=dtype),
        replicated_weight(h, hidden, dtype),
        [torch.empty((tokens, hidden), dtype=dtype, device=h.device) for _ in range(counts[0])]))
    if err:
        return dict(r, us=None, error=err)
    sets, weight, outs = made  # one output per input set: every call writes fresh memory (harness)
    eps = variants.EPS
    if ours.comm is None:
        res = {"error": ours.err}
    else:
        comm = ours.comm
        r["plan"] = plan_dict(comm.plan, "fused_allreduce_rmsnorm", sets.xs[0], sets.rs[0] if residual else None,
                              weight, eps, out=outs[0])
        res = h.measure(lambda i: comm.fused_allreduce_rmsnorm(sets.xs[i], sets.rs[i] if residual else None, weight,
                                                               eps, out=outs[i]), sets.refresh, *counts)
    r.update(res)
    timer = norm_timer(h, sets, weight, eps, counts)
    rec = baselines.fused_add_rmsnorm.choose(tokens, hidden, dtype, timer, residual=residual)
    r.update(candidates_us=rec["us"], fastest=rec["chosen"])
    if residual:  # the reference with our contract: the residual updated in place
        r["inductor_in_place_us"] = timer(baselines.make_candidate(baselines.INDUCTOR_IN_PLACE))
    summarise(r)
    h.log(describe(r))
    made = sets = weight = outs = None
    release()
    return r


def summarise(r: dict) -> dict:
    """Add to row ``r`` the fastest baseline's and Inductor's times, GB/s, the speed ratios
    (baseline us / ours us: > 1 means ours is faster; also against ``inductor_in_place_us``, the
    Inductor formula with our in-place residual contract) and whether ours reaches ``NORM_TARGET``
    of Inductor's speed. Pure; None where a figure is missing."""
    times = {k: v for k, v in (r.get("candidates_us") or {}).items() if isinstance(v, (int, float))}
    ind = baselines.pick_fastest({k: times[k] for k in baselines.INDUCTOR if k in times})
    r["inductor"] = ind
    r["inductor_us"] = times.get(ind)
    r["fastest_us"] = times.get(r.get("fastest"))
    us = None if r.get("error") else r.get("us")

    def gbps(t):
        return r["bytes"] / t / 1e3 if t else None

    r.update(ours_gbps=gbps(us), fastest_gbps=gbps(r["fastest_us"]), inductor_gbps=gbps(r["inductor_us"]))
    r["speed_vs_fastest"] = r["fastest_us"] / us if us and r["fastest_us"] else None
    r["speed_vs_inductor"] = r["inductor_us"] / us if us and r["inductor_us"] else None
    r["target_met"] = None if r["speed_vs_inductor"] is None else r["speed_vs_inductor"] >= variants.NORM_TARGET
    in_place = r.get("inductor_in_place_us")
    r["speed_vs_inductor_in_place"] = in_place / us if us and isinstance(in_place, (int, float)) else None
    return r


def describe(r: dict) -> str:
    """One log line of a norm row."""
    what = f"{r['dtype']:8s} H={r['hidden']:<5} T={r['tokens']:<6}{'' if r['residual'] else ' no-res'}"
    if r.get("error") or not r.get("us"):
        return f"{what} ours ERROR {str(r.get('error'))[:160]}"
    ratio = f"{r['speed_vs_inductor']:.2f}x Inductor" if r.get("speed_vs_inductor") else "no Inductor time"
    return f"{what} ours {r['us']:8.2f} us ({r['ours_gbps'] or 0:6.0f} GB/s); fastest {r['fastest']} " \
           f"{r['fastest_us'] or float('nan'):8.2f} us; {ratio}"


def run(h, s: dict) -> list:
    """The copy rate, every row of ``cases(s)``, then the copy rate again. One process, world 1."""
    import torch

    if h.world != 1:
        raise ValueError(f"norm suite: runs at world 1, one process (got world {h.world}); "
                         "run it without torchrun or with --nproc-per-node=1")
    max_bytes = max(t * hd * torch.empty((), dtype=getattr(torch, dt)).element_size()
                    for dt, hd, t, _ in cases(s))
    ours = _Ours(h, max_bytes, s["nvshmem"])
    s["ours_fabric"] = ours.fabric
    rows = [dict(copy_rate(h), when="start")]
    try:
        for dt_name, hidden, tokens, residual in cases(s):
            rows.append(_row(h, ours, dt_name, hidden, tokens, residual, s))
    finally:
        ours.close()
    rows.append(dict(copy_rate(h), when="end"))
    return rows
