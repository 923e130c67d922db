"""Pieces every microbenchmark suite shares: row records, logging, skips, allocation, the norm timer."""
from __future__ import annotations

from ..harness import fmt_bytes


def row(series: str, variant: str, *, tokens=None, hidden=None, nbytes: int, ctas=None, **extra) -> dict:
    """A result row before measurement."""
    return {"series": series, "variant": variant, "tokens": tokens, "hidden": hidden, "bytes": nbytes, "ctas": ctas,
            **extra}


def finish(h, r: dict, res: dict, bus: int | None) -> dict:
    """Record measurement ``res`` in row ``r`` (algbw; NCCL's busbw when ``bus`` is its factor and
    world > 1) and log it on rank 0."""
    r.update(res)
    if r.get("us"):
        r["algbw_gbps"] = r["bytes"] / r["us"] / 1e3
        if bus and h.world > 1:
            r["busbw_gbps"] = r["algbw_gbps"] * bus * (h.world - 1) / h.world
    what = f"{r['series']:9s} " + (f"T={r['tokens']:<6}" if r["tokens"] else f"{fmt_bytes(r['bytes']):>8s}")
    if r.get("hidden") and not bus:
        what += f" H={r['hidden']}"
    name = r["variant"] + (f"[ctas={r['ctas']}]" if r.get("ctas") else "")
    if r.get("error"):
        h.log(f"{what} {name:28s} ERROR {r['error'][:160]}")
    else:
        h.log(f"{what} {name:28s} {r['us']:10.2f} us (max over ranks {r['us_max_rank']:.2f})")
    return r


def skip_all(h, rows: list, reason: str) -> list:
    """Mark every row of ``rows`` skipped for ``reason``; returns them."""
    for r in rows:
        r.update(error=reason, us=None)
    if rows:
        h.log(f"skipped {len(rows)} rows: {reason}")
    return rows


def allocate(h, make):
    """``(make(), None)`` if it succeeded on every rank, else ``(None, agreed error)``. Collective."""
    import torch

    made = []
    err = h.first_error(h.try_run(lambda: made.append(make())))
    if err:
        made.clear()
        torch.cuda.empty_cache()
        return None, f"input allocation failed: {err}"
    return made[0], None


def release() -> None:
    """Free what a size's inputs and graphs cached (between sizes)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def plan_dict(fn, *args, **kw) -> dict:
    """The planner's launch ``fn(*args, **kw)`` as a dict (with the rule that chose it), or {"error": why}."""
    try:
        p = fn(*args, **kw)
        return {"algorithm": p.algorithm, "grid": p.grid, "block": p.block, "vpt": p.vpt, "reason": p.reason}
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


def norm_timer(h, sets, weight, eps: float, counts):
    """``timer(fn) -> us or error text`` for ``FusedAddRMSNorm.choose``: ``fn`` on ``sets``' x and
    residual, timed by ``h.measure`` with ``counts`` = (sets, calls, warm-up, replays)."""
    def timer(fn):
        res = h.measure(lambda i: fn(sets.xs[i], sets.rs[i] if sets.rs else None, weight, eps), sets.refresh, *counts)
        return res["error"] if res.get("error") else res["us"]

    return timer
