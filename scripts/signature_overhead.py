"""What the call signature adds at decode sizes: the same calls with the signature on and off
(``CommOptions(call_signature=...)``; off = signature 0 = the plain 0/1 handshake, no descriptor),
on one GPU with two emulated ranks.

    python scripts/signature_overhead.py [--out DIR] [--rounds 60] [--replays 50]
    python scripts/signature_overhead.py --replot DIR/signature-overhead-<device>.json

Cases: 1, 2, 4, 8, 16 tokens x hidden 8192 bf16; all_reduce and fused_allreduce_rmsnorm; the
planner's algorithm ("auto": Lamport at these sizes, which has no handshake: a control whose added
time is noise alone) and the two handshake algorithms forced ("oneshot", "twoshot").

Each case is a pair of CUDA graphs of ``STEPS`` steps (every rank's call), both captured from one
world: the option changes nothing but the kernels' ``p_sig`` argument, which a graph fixes when it
is captured, so every rank's options are switched between the two captures and the graphs share
arenas, buffers and channels (two worlds would differ in where their memory lies, and that showed
as much as the signature). A round times ``--replays`` on/off pairs of replays, the order
alternating from pair to pair, and gives one paired difference: median(on) - median(off) per step.
A case reports the median of its ``--rounds`` differences, their interquartile range and a
bootstrap 90% interval of that median, and a verdict: "within target" (the interval's top is at
most ``TARGET_US`` = 0.3 us), "above target" (its bottom is above) or "not resolved" (the noise
spans the target). About 1 minute of GPU with the defaults. Writes
signature-overhead-<device>.{json,md} under --out (default bench). Emulated ranks share one HBM:
the figure is the handshake's own cost, not an NVLink figure.
"""
from __future__ import annotations

import dataclasses
import os
import random
import statistics
import sys

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # before CUDA starts: see collectives/emulated.py
os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")  # no lazy load inside world.run: see emulated.py

HIDDEN = 8192
TOKENS = (1, 2, 4, 8, 16)
OPS = ("all_reduce", "fused")
ALGORITHMS = ("auto", "oneshot", "twoshot")
STEPS = 20
WORLD = 2
TARGET_US = 0.3
#: the bootstrap interval of a case's median difference: its level, resamples and seed
LEVEL = 0.9
RESAMPLES = 2000
SEED = 0
VERDICTS = ("within target", "above target", "not resolved")


def paired_summary(diffs, target: float = TARGET_US, *, level: float = LEVEL, resamples: int = RESAMPLES,
                   seed: int = SEED) -> dict:
    """The statistics of one case's per-round differences (on - off, us per call).

    Parameters
    ----------
    diffs : sequence of float
        One paired difference per round (at least 2).
    target : float
        The most the signature may add, us per call.
    level : float
        Coverage of the bootstrap interval of the median (percentile method, ``resamples``
        resamples drawn with ``random.Random(seed)``: the same diffs give the same interval).

    Returns
    -------
    dict
        ``added`` (median), ``q1``, ``q3`` (interquartile range), ``lo``, ``hi`` (the interval),
        ``verdict``: "within target" when ``hi <= target``, "above target" when ``lo > target``,
        else "not resolved".
    """
    diffs = [float(d) for d in diffs]
    if len(diffs) < 2:
        raise ValueError(f"paired_summary: need at least 2 rounds (got {len(diffs)})")
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    tail = (1.0 - level) / 2
    lo = medians[int(tail * (resamples - 1))]
    hi = medians[int(round((1.0 - tail) * (resamples - 1)))]
    q1, _, q3 = statistics.quantiles(diffs, n=4, method="inclusive")
    verdict = VERDICTS[0] if hi <= target else VERDICTS[1] if lo > target else VERDICTS[2]
    return {"added": statistics.median(diffs), "q1": q1, "q3": q3, "lo": lo, "hi": hi, "verdict": verdict}


def summary(rows, target: float = TARGET_US) -> dict:
    """What the rows say together: the verdict counts and the worst interval top of the calls with a
    handshake (``ran`` other than "lamport"), their overall verdict (any "above target" rules, then
    any "not resolved"), and the largest |median| of the Lamport controls (the noise floor)."""
    shake = [r for r in rows if r["ran"] != "lamport"]
    counts = {v: sum(r["verdict"] == v for r in shake) for v in VERDICTS}
    overall = VERDICTS[1] if counts[VERDICTS[1]] else VERDICTS[2] if counts[VERDICTS[2]] else VERDICTS[0]
    controls = [abs(r["added"]) for r in rows if r["ran"] == "lamport"]
    return {"target_us": target, "handshake_cases": len(shake), "verdicts": counts, "verdict": overall,
            "worst_hi_us": max((r["hi"] for r in shake), default=0.0),
            "worst_added_us": max((r["added"] for r in shake), default=0.0),
            "control_abs_added_us": max(controls, default=0.0)}


def _signature(world, on: bool) -> None:
    """Every rank of ``world`` makes its next calls with the signature ``on`` (or off): the option
    sets only the kernels' ``p_sig`` (``Communicator._common``), fixed in a graph at capture."""
    for comm in world.ranks:
        comm.options = dataclasses.replace(comm.options, call_signature=on)


def _graph(world, side, fn, on: bool):
    import torch

    _signature(world, on)
    world.run(fn)
    torch.cuda.synchronize()
    world.check()
    side.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
        for _ in range(STEPS):
            world.run(fn)
    torch.cuda.synchronize()
    return g


def _replay_us(g) -> float:
    """One replay of ``g`` from an idle GPU, us per step."""
    import torch

    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    g.replay()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) * 1e3 / STEPS


def _round(graphs, replays: int, flip: int) -> tuple:
    """(median on, median off) over ``replays`` on/off pairs, the order alternating from pair to pair."""
    times = {True: [], False: []}
    for i in range(replays):
        for on in ((True, False) if (i + flip) % 2 == 0 else (False, True)):
            times[on].append(_replay_us(graphs[on]))
    return statistics.median(times[True]), statistics.median(times[False])


def measure(args) -> dict:
    import torch

    from weave_nvshmem import CommOptions
    from weave_nvshmem.bench import provenance
    from weave_nvshmem.testing.runner import emulated_world

    if args.rounds < 2 or args.replays < 1:
        raise SystemExit("signature_overhead: --rounds must be >= 2 and --replays >= 1")
    need = max(TOKENS) * HIDDEN * 2
    world = emulated_world(WORLD, need, options=CommOptions(timeout_s=10.0))
    side = torch.cuda.Stream()
    dt = torch.bfloat16
    rows = []
    try:
        for op in OPS:
            for alg in ALGORITHMS:
                for t in TOKENS:
                    xs = [torch.randn(t, HIDDEN, device="cuda").to(dt) for _ in range(WORLD)]
                    res = [torch.randn(t, HIDDEN, device="cuda").to(dt) for _ in range(WORLD)]
                    outs = [torch.empty(t, HIDDEN, device="cuda", dtype=dt) for _ in range(WORLD)]
                    weight = torch.randn(HIDDEN, device="cuda").to(dt)
                    if op == "fused":
                        def fn(r, c):
                            c.fused_allreduce_rmsnorm(xs[r], res[r], weight, 1e-6, algorithm=alg, out=outs[r])
                    else:
                        def fn(r, c):
                            c.all_reduce(xs[r], out=outs[r], algorithm=alg)
                    chosen = world.ranks[0].plan("fused_allreduce_rmsnorm" if op == "fused" else "all_reduce",
                                                 *((xs[0], res[0], weight) if op == "fused" else (xs[0],)),
                                                 algorithm=alg)
                    graphs = {on: _graph(world, side, fn, on) for on in (True, False)}
                    rounds = [_round(graphs, args.replays, k) for k in range(args.rounds)]
                    world.check()
                    on_us, off_us = [a for a, _ in rounds], [b for _, b in rounds]
                    stats = paired_summary([a - b for a, b in rounds])
                    rows.append({"op": op, "algorithm": alg, "ran": chosen.algorithm, "grid": chosen.grid,
                                 "tokens": t, "hidden": HIDDEN, "us_on": statistics.median(on_us),
                                 "us_off": statistics.median(off_us), **stats,
                                 "rounds_on": on_us, "rounds_off": off_us})
                    print(f"{op:10s} {alg:8s} ({chosen.algorithm}, {chosen.grid} CTAs) t={t:2d}: "
                          f"on {rows[-1]['us_on']:.2f} us, off {rows[-1]['us_off']:.2f} us, added "
                          f"{stats['added']:+.3f} us [{stats['lo']:+.3f}, {stats['hi']:+.3f}]: {stats['verdict']}",
                          flush=True)
                    del graphs
    finally:
        world.close()
    doc = provenance.describe("signature-overhead", torch.cuda.get_device_name(), WORLD, emulated=True)
    doc.update(stem=f"signature-overhead-{doc['device_slug']}", dtype="bfloat16", hidden=HIDDEN,
               steps_per_graph=STEPS, replays=args.replays, rounds=args.rounds, level=LEVEL, resamples=RESAMPLES,
               rows=rows, summary=summary(rows))
    return doc


def markdown(doc: dict) -> str:
    from weave_nvshmem.bench import report

    s = doc["summary"]
    pct = f"{doc['level']:.0%}"
    lines = [f"# Call signature overhead ({doc['device']}, {doc['world_size']} emulated ranks, {doc['dtype']}, "
             f"hidden {doc['hidden']})", "",
             f"Commit {report.commit_of(doc)}. Emulated ranks share one HBM: the figures are the handshake's own "
             f"cost, not NVLink figures. µs per call, CUDA graphs of "
             f"{doc['steps_per_graph']} steps captured from one world with the signature on and off; "
             f"{doc['rounds']} rounds of {doc['replays']} alternating on/off replay pairs; added = median over "
             f"rounds of the paired difference median(on) - median(off), with its interquartile range and a "
             f"bootstrap {pct} interval of the median. Target <= {s['target_us']} µs: within (interval top <= "
             "target), above (interval bottom > target), not resolved (the interval spans it). Lamport calls "
             "have no handshake: their added time is the noise floor.", "",
             f"| op | requested | ran (CTAs) | tokens | on (µs) | off (µs) | added (µs) | IQR (µs) | {pct} interval "
             "(µs) | verdict |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["rows"]:
        verdict = "control" if r["ran"] == "lamport" else r["verdict"]
        lines.append(f"| {r['op']} | {r['algorithm']} | {r['ran']} ({r['grid']}) | {r['tokens']} | {r['us_on']:.2f} | "
                     f"{r['us_off']:.2f} | {r['added']:+.3f} | {r['q1']:+.3f}..{r['q3']:+.3f} | "
                     f"{r['lo']:+.3f}..{r['hi']:+.3f} | {verdict} |")
    counts = ", ".join(f"{n} {v}" for v, n in s["verdicts"].items())
    lines += ["", f"Calls with a handshake ({s['handshake_cases']}): {counts}; overall **{s['verdict']}**. Worst "
                  f"median added {s['worst_added_us']:+.3f} µs, worst interval top {s['worst_hi_us']:+.3f} µs; "
                  f"Lamport controls within ±{s['control_abs_added_us']:.3f} µs."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from weave_nvshmem.bench import report

    options = (("--rounds", dict(type=int, default=60, help="rounds of paired on/off replays per case (default 60)")),
               ("--replays", dict(type=int, default=50, help="on/off replay pairs per round (default 50)")))
    return report.script_main(argv, __doc__.split("\n")[0], measure, markdown, None, options)


if __name__ == "__main__":
    sys.exit(main())
