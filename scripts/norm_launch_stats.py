"""Launch shapes of the world-1 fused kernel (fused_local.ptx) and Inductor's add+RMSNorm kernels,
read by Nsight Compute: grid, block, registers, waves per SM, occupancy.

    ncu --clock-control none --section LaunchStats --section Occupancy \
        -k regex:'triton|wn_fused_local' python scripts/norm_launch_stats.py run > ncu.log
    python scripts/norm_launch_stats.py table ncu.log            # no GPU: the markdown table

Why: ours keeps a row in registers across one barrier; where it trails Inductor at 256-512
tokens, the question is whether registers (CTAs per SM, waves) explain it
(bench/norm-local-registers-nvidia-h200.md). ``run`` calls each kernel ``CALLS`` times per shape,
eagerly on fresh tensors, in the order of ``SHAPES`` x ``KERNELS``: ncu's durations compare launch
shapes, not the benchmark's figures (no CUDA graph, no L2 flush).
"""
from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: (dtype, hidden, tokens, residual given)
SHAPES = (("bfloat16", 4096, 512, True), ("float32", 8192, 256, True), ("bfloat16", 8192, 1, False),
          ("bfloat16", 8192, 16384, False), ("bfloat16", 8192, 64, True))
#: the Inductor candidates, then ours, per shape
KERNELS = ("inductor_formula", "inductor_rms_norm", "ours")
CALLS = 3
_METRICS = {"us": r"Duration\s+(us|ms)\s+([\d.]+)", "registers": r"Registers Per Thread\s+\S+\s+(\d+)",
            "waves": r"Waves Per SM\s+([\d.]+)", "occupancy": r"Achieved Occupancy\s+%\s+([\d.]+)"}


def run() -> None:
    """Every kernel of ``KERNELS``, ``CALLS`` times, at every shape of ``SHAPES`` (one GPU)."""
    import torch

    from weave_nvshmem.bench import baselines
    from weave_nvshmem.bench.suites.norm import local_world

    world = local_world(max(t * h for _, h, t, _ in SHAPES) * 4, timeout_s=30.0)
    comm = world.ranks[0]
    try:
        for dt, hidden, tokens, residual in SHAPES:
            dtype = getattr(torch, dt)
            x = torch.randn(tokens, hidden, dtype=dtype, device="cuda")
            r = torch.randn(tokens, hidden, dtype=dtype, device="cuda") if residual else None
            w = 1 + 0.1 * torch.randn(hidden, dtype=dtype, device="cuda")
            out = torch.empty_like(x)
            print(f"{dt} H={hidden} T={tokens}: {comm.plan('fused_allreduce_rmsnorm', x, r, w, 1e-6, out=out)}")
            for name in KERNELS:
                fn = (lambda a, b: comm.fused_allreduce_rmsnorm(a, b, w, 1e-6, out=out)) if name == "ours" else \
                    (lambda a, b, f=baselines.make_candidate(name): f(a, b, w, 1e-6))
                for _ in range(CALLS):
                    fn(x.clone(), None if r is None else r.clone())
            torch.cuda.synchronize()
    finally:
        world.close()


def parse(text: str) -> list:
    """ncu's report text -> one dict per profiled launch, in launch order: kernel, grid, block and
    ``_METRICS`` (us in microseconds)."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s+(\w+) \((\d+), 1, 1\)x\((\d+), 1, 1\)", line)
        if m:
            rows.append({"kernel": m[1], "grid": int(m[2]), "block": int(m[3])})
            continue
        for key, pat in _METRICS.items():
            found = re.search(pat, line) if rows else None
            if found and key == "us":
                rows[-1]["us"] = float(found[2]) * (1000.0 if found[1] == "ms" else 1.0)
            elif found:
                rows[-1][key] = float(found[1])
    return rows


def table(rows: list) -> str:
    """Markdown: one line per (shape, kernel), medians over its ``CALLS`` launches."""
    per_shape = len(KERNELS) * CALLS
    if len(rows) != len(SHAPES) * per_shape:
        raise ValueError(f"expected {len(SHAPES) * per_shape} launches ({len(SHAPES)} shapes x {len(KERNELS)} "
                         f"kernels x {CALLS}), got {len(rows)}: profile with the -k filter of the module docstring")
    out = ["| shape | kernel | grid x block | registers | waves per SM | achieved occupancy % | us (ncu, median) |",
           "|---|---|---|---:|---:|---:|---:|"]
    for i in range(0, len(rows), CALLS):
        group = rows[i:i + CALLS]
        dt, hidden, tokens, residual = SHAPES[i // per_shape]
        r = group[0]
        out.append(f"| {dt} H={hidden} T={tokens}{'' if residual else ' no residual'} | {r['kernel']} | "
                   f"{r['grid']} x {r['block']} | {int(r['registers'])} | {r['waves']:.2f} | "
                   f"{statistics.median(g['occupancy'] for g in group):.0f} | "
                   f"{statistics.median(g['us'] for g in group):.2f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        run()
    elif sys.argv[1:2] == ["table"] and len(sys.argv) == 3:
        print(table(parse(Path(sys.argv[2]).read_text())), end="")
    else:
        sys.exit(__doc__)
