"""Fuzz every collective on emulated ranks (one GPU): randomised calls, each checked against the
references (weave_nvshmem.testing) and across ranks; one line per failure, ending in the command
that reruns that call alone.

    python scripts/fuzz.py [--world 2 4 8] [--calls N] [--seed S] [--out FILE] [--budget-s S] [--only K]

Call K of a run is a pure function of (seed, world, K) (weave_nvshmem.testing.fuzz). Every op,
dtype and algorithm of the kernel table (through the planner's lists, so new algorithms join),
compression (every format, block and gather: the result must have the bits of the float-exact
model collectives/quantize.py, the same on every rank, within its bound of float64), copied and
zero-copy (symmetric) inputs, shapes with 0 and 1 element, CTA counts, channels, eager and
CUDA-graph execution; each result is checked against the float64 references and across ranks. Prints, per world size, the calls,
failures, seconds and what the calls covered; with --budget-s the calls of each world size stop
at an even share of the budget (the summary says how many ran). Exit status 1 when a call
failed. The checks run on the GPU (float64 references and error norms on the outputs' device,
one scalar back per check), so the host keeps up with the calls.

The long run (10000 calls per world size) runs the three world sizes as three processes sharing
one GPU (no MPS: each process's ranks must be resident together, which time-slicing keeps), each
with its log in bench/; a world reserves ``MAX_BYTES`` of staging on each of its ``CHANNELS``
channels and ``MAX_BYTES`` a rank for symmetric inputs, about 0.25, 0.8 and 2.9 GiB of arenas at
2, 4 and 8 ranks, plus the calls' tensors and a CUDA context:

    for w in 2 4 8; do python scripts/fuzz.py --world $w --calls 10000 --budget-s 540 \\
        --out bench/fuzz-nvidia-h200-w$w.log & done; wait
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # before CUDA starts: see collectives/emulated.py

import torch  # noqa: E402

from weave_nvshmem.testing import fuzz  # noqa: E402
from weave_nvshmem.testing.runner import Fuzzer  # noqa: E402


def main(argv=None) -> int:
    args = fuzz.parser().parse_args(argv)
    log = open(args.out, "w") if args.out else None

    def say(line: str) -> None:
        print(line, flush=True)
        if log:
            log.write(line + "\n")
            log.flush()

    say(f"# {fuzz.SCRIPT} {' '.join(sys.argv[1:] if argv is None else argv)} on {torch.cuda.get_device_name()}, "
        f"commit {os.environ.get('WEAVE_NVSHMEM_COMMIT', 'unknown')}")
    failed = 0
    start = time.perf_counter()
    for i, world in enumerate(args.world):
        indices = [args.only] if args.only is not None else range(args.calls)
        deadline = fuzz.world_deadline(start, time.perf_counter(), args.budget_s, len(args.world) - i)
        calls, failures, t0 = [], 0, time.perf_counter()
        with Fuzzer(world, timeout_s=args.timeout) as fuzzer:
            for k in indices:
                if deadline is not None and calls and time.perf_counter() > deadline:
                    say(f"world {world}: budget reached after {len(calls)} of {len(indices)} calls")
                    break
                call = fuzz.fuzz_call(args.seed, world, k)
                calls.append(call)
                problems = fuzzer.run(call)
                if problems:
                    failures += 1
                    say(fuzz.failure_line(call, problems))
                elif args.only is not None:
                    say(f"PASS world {world}: {call.describe()}")
                if len(calls) % 1000 == 0:
                    say(f"world {world}: {len(calls)} calls, {failures} failed, {time.perf_counter() - t0:.1f} s")
        covered = ", ".join(f"{key}: {n}" for key, n in sorted(fuzz.coverage(calls).items()))
        say(f"world {world}: {len(calls)} calls, {failures} failed, {time.perf_counter() - t0:.1f} s; covered {covered}")
        failed += failures
    if log:
        log.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
