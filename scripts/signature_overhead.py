"""What the call signature adds at decode sizes: the same calls with the signature on and off
(``CommOptions(call_signature=...)``; off = signature 0 = the plain 0/1 handshake, no descriptor),
on one GPU with two emulated ranks.

    python scripts/signature_overhead.py --out DIR [--replays 200] [--rounds 3]

Cases: 1, 2, 4, 8, 16 tokens x hidden 8192 bf16; all_reduce and fused_allreduce_rmsnorm; the
planner's algorithm ("auto": Lamport at these sizes, which has no handshake) and the two handshake
algorithms forced ("oneshot", "twoshot"). Each case is a CUDA graph of ``STEPS`` steps (every
rank's call); a round times ``--replays`` replays of the "on" and the "off" graph alternately and
takes the median of each; the result is the median over rounds of (on - off) per step. Target:
<= 0.3 us per call. Writes signature-overhead-<device>.{json,md} under --out. Emulated ranks share
one HBM: the figure is the handshake's own cost, not an NVLink figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # before CUDA starts: see collectives/emulated.py
os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")  # no lazy load inside world.run: see emulated.py

HIDDEN = 8192
TOKENS = (1, 2, 4, 8, 16)
OPS = ("all_reduce", "fused")
ALGORITHMS = ("auto", "oneshot", "twoshot")
STEPS = 20
WORLD = 2
TARGET_US = 0.3


def _graph(world, side, fn):
    import torch

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


def _time(g, replays: int) -> list:
    import torch

    out = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) * 1e3 / STEPS)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="directory for the JSON and markdown")
    ap.add_argument("--replays", type=int, default=200, help="replays per graph per round (default 200)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating on/off rounds (default 3)")
    args = ap.parse_args(argv)

    import torch

    from weave_nvshmem import CommOptions
    from weave_nvshmem.testing.runner import emulated_world

    need = max(TOKENS) * HIDDEN * 2
    worlds = {on: emulated_world(WORLD, need, options=CommOptions(timeout_s=10.0, call_signature=on))
              for on in (True, False)}
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
                    chosen = worlds[True].ranks[0].plan("fused_allreduce_rmsnorm" if op == "fused" else "all_reduce",
                                                        *((xs[0], res[0], weight) if op == "fused" else (xs[0],)),
                                                        **({"algorithm": alg}))
                    graphs = {on: _graph(w, side, fn) for on, w in worlds.items()}
                    per = {True: [], False: []}
                    for _ in range(args.rounds):
                        for on in (True, False):
                            per[on].append(statistics.median(_time(graphs[on], args.replays)))
                    for w in worlds.values():
                        w.check()
                    delta = statistics.median(a - b for a, b in zip(per[True], per[False]))
                    rows.append({"op": op, "algorithm": alg, "ran": chosen.algorithm, "grid": chosen.grid,
                                 "tokens": t, "hidden": HIDDEN, "us_on": statistics.median(per[True]),
                                 "us_off": statistics.median(per[False]), "us_added": delta,
                                 "rounds_on": per[True], "rounds_off": per[False]})
                    print(f"{op:10s} {alg:8s} ({chosen.algorithm}, {chosen.grid} CTAs) t={t:2d}: "
                          f"on {rows[-1]['us_on']:.2f} us, off {rows[-1]['us_off']:.2f} us, added {delta:+.3f} us",
                          flush=True)
                    del graphs
    finally:
        for w in worlds.values():
            w.close()
    device = torch.cuda.get_device_name()
    handshake = [r["us_added"] for r in rows if r["ran"] != "lamport"]
    worst = max(handshake) if handshake else 0.0
    doc = {"device": device, "commit": os.environ.get("WEAVE_NVSHMEM_COMMIT", "unknown"), "world": WORLD,
           "dtype": "bfloat16", "steps_per_graph": STEPS, "replays": args.replays, "rounds": args.rounds,
           "target_us": TARGET_US, "worst_added_us_with_handshake": worst, "within_target": worst <= TARGET_US,
           "rows": rows}
    lines = [f"# Call signature overhead ({device}, {WORLD} emulated ranks, bf16, hidden {HIDDEN})", "",
             f"Median µs per call, CUDA graph of {STEPS} steps, {args.replays} replays x {args.rounds} alternating "
             f"rounds; added = median over rounds of (on - off). Target <= {TARGET_US} µs. Lamport calls have no "
             "handshake (their added time is noise).", "",
             "| op | requested | ran (CTAs) | tokens | on (µs) | off (µs) | added (µs) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['algorithm']} | {r['ran']} ({r['grid']}) | {r['tokens']} | {r['us_on']:.2f} | "
                     f"{r['us_off']:.2f} | {r['us_added']:+.3f} |")
    lines += ["", f"Worst added time of a call with a handshake: {worst:+.3f} µs "
                  f"({'within' if worst <= TARGET_US else 'ABOVE'} the {TARGET_US} µs target)."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
    (out / f"signature-overhead-{slug}.json").write_text(json.dumps(doc, indent=1))
    (out / f"signature-overhead-{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
