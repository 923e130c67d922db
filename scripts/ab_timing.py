"""Time the same collectives under two package trees in one run (one GPU, emulated ranks).

What it shows: whether a change left the kernels' speed alone. Each tree's ``weave_nvshmem`` runs
in a child process of its own (same environment, PYTHONPATH pointing at the tree), the children
alternate (A, B, A, B, ...) so drift hits both, and each op is a CUDA graph of 5 steps of every
rank's call, median of 15 replays over 2 random input sets, bf16. Emulated ranks share one HBM:
compare the trees with each other, never with link figures.

    python scripts/ab_timing.py --tree before=/path/to/old/tree --tree after=. [--rounds 2] [--out DIR]

Writes ab-timing-<device>.{json,md} under --out. Only public APIs are used (EmulatedWorld and the
Communicator ops), so any two trees that have them can be compared.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

#: (op, algorithm, world, tokens): the all-reduce and fused kernels at decode and prefill sizes
CASES = [(op, alg, w, t) for op in ("all_reduce", "fused") for alg in ("auto", "twoshot") for w in (2, 4)
         for t in (1, 128, 1024, 8192)]
HIDDEN = 8192


def _child() -> None:
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")
    import torch

    from weave_nvshmem import CommOptions
    from weave_nvshmem.collectives.emulated import EmulatedWorld

    results = {}
    for w in (2, 4):
        need = 8192 * HIDDEN * 2
        world = EmulatedWorld(w, arena_bytes=2 * (2 * w + 3) * need + (64 << 20), options=CommOptions(timeout_s=10.0))
        world.reserve(need)
        side = torch.cuda.Stream()
        for op, alg, ww, tokens in CASES:
            if ww != w:
                continue
            sets = [[torch.randn(tokens, HIDDEN, device="cuda").to(torch.bfloat16) for _ in range(w)] for _ in range(2)]
            res = [torch.randn(tokens, HIDDEN, device="cuda").to(torch.bfloat16) for _ in range(w)]
            outs = [torch.empty(tokens, HIDDEN, device="cuda", dtype=torch.bfloat16) for _ in range(w)]
            weight = torch.randn(HIDDEN, device="cuda").to(torch.bfloat16)
            graphs = []
            side.wait_stream(torch.cuda.current_stream())
            ctas = 32 if w > 2 else None  # every rank's grid resident at once (EmulatedWorld's rule)
            for xs in sets:
                if op == "fused":
                    fn = (lambda xs: lambda r, c: c.fused_allreduce_rmsnorm(xs[r], res[r], weight, 1e-6, algorithm=alg,
                                                                            ctas=ctas, out=outs[r]))(xs)
                else:
                    fn = (lambda xs: lambda r, c: c.all_reduce(xs[r], out=outs[r], algorithm=alg,
                                                          ctas=ctas))(xs)
                world.run(fn)
                torch.cuda.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
                    for _ in range(5):
                        world.run(fn)
                graphs.append(g)
            torch.cuda.synchronize()
            times = []
            for i in range(15):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                graphs[i % 2].replay()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) * 1e3 / 5)
            world.check()
            results[f"{op}/{alg}/w{w}/t{tokens}"] = statistics.median(times)
            del graphs
        world.close()
    results["_device"] = torch.cuda.get_device_name()
    print("AB_RESULT " + json.dumps(results), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=DIR",
                    help="a package tree to time (twice or more)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="bench")
    args = ap.parse_args(argv)
    trees = [t.split("=", 1) for t in args.tree]
    runs: dict = {name: [] for name, _ in trees}
    device = "unknown"
    for _ in range(args.rounds):
        for name, path in trees:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(path).resolve())] +
                                                              [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
            proc = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("AB_RESULT ")]
            if proc.returncode or not line:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"ab_timing: tree {name} ({path}) failed")
            res = json.loads(line[0][len("AB_RESULT "):])
            device = res.pop("_device")
            runs[name].append(res)
    names = [n for n, _ in trees]
    doc = {"device": device, "trees": dict(trees), "commit": os.environ.get("WEAVE_NVSHMEM_COMMIT", "unknown"),
           "rounds": args.rounds, "hidden": HIDDEN, "dtype": "bfloat16", "runs": runs}
    lines = [f"# Same ops, two trees: {' vs '.join(names)} ({device}, emulated ranks, bf16, hidden {HIDDEN})", "",
             "Median µs of one step (every rank's call), per round; ratio = mean of last over mean of first tree.", "",
             "| case | " + " | ".join(f"{n} (µs, each round)" for n in names) + f" | {names[-1]} / {names[0]} |",
             "|---|" + "---:|" * (len(names) + 1)]
    for key in runs[names[0]][0]:
        cells = [" / ".join(f"{r[key]:.1f}" for r in runs[n]) for n in names]
        means = [statistics.mean(r[key] for r in runs[n]) for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {means[-1] / means[0]:.3f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
    (out / f"ab-timing-{slug}.json").write_text(json.dumps(doc, indent=1))
    (out / f"ab-timing-{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child()
    else:
        sys.exit(main())
