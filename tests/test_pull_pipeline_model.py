"""A pure-Python model of pull.ptx's warp-specialised pipeline (phases 2 and 3, pullwait.ptxinc).

It replays the kernel's mbarrier protocol under random interleavings: 3 stages, each with a full
barrier (count 1: the producer's arrive.expect_tx, completed when the bytes land) and an empty
barrier (count: the consumer warps); job k uses stage k%3; consumers wait for full parity
(k/3)&1, the producer refills a stage for job k >= 3 after empty parity ((k/3)&1)^1. It checks
what the kernel relies on: no interleaving deadlocks, every consumer warp reads job k's data (the
stage was not refilled under it, nor read before it landed), and a try_wait never sees a barrier
two phases ahead (the parity test would then be ambiguous).
"""
from __future__ import annotations

import random

import pytest

STAGES = 3


class Mbarrier:
    """mbarrier.init / arrive / try_wait.parity: a phase completes when its arrivals (and the
    expected bytes) are in."""

    def __init__(self, count):
        self.count, self.pending, self.phase = count, count, 0

    def arrive(self):
        self.pending -= 1
        if self.pending == 0:
            self.phase, self.pending = self.phase + 1, self.count

    def try_wait_parity(self, parity, want_phase):
        # want_phase: the phase index the waiter means; parity alone must identify it
        assert self.phase - want_phase in (0, 1), "a barrier ran two phases ahead of a waiter"
        return (self.phase & 1) != parity


def run(jobs, warps, seed):
    rng = random.Random(seed)
    full = [Mbarrier(1) for _ in range(STAGES)]
    empty = [Mbarrier(warps) for _ in range(STAGES)]
    stage = [None] * STAGES  # the job whose bytes sit in the stage
    in_flight = []  # (stage, job): issued bulk loads not landed yet
    issued, done = 0, [0] * warps
    steps = 0
    while min(done) < jobs or in_flight:
        steps += 1
        assert steps < 100000, "deadlock"
        actors = ["land"] * bool(in_flight) + ["producer"] * (issued < jobs) + \
            [w for w in range(warps) if done[w] < jobs]
        who = rng.choice(actors)
        if who == "land":
            s, k = in_flight.pop(rng.randrange(len(in_flight)))
            stage[s] = k
            full[s].arrive()
        elif who == "producer":
            k = issued
            s = k % STAGES
            if k >= STAGES and not empty[s].try_wait_parity(((k // STAGES) & 1) ^ 1, k // STAGES - 1):
                continue
            assert all(d > k - STAGES for d in done), "a stage refilled before every warp released it"
            in_flight.append((s, k))
            issued += 1
        else:
            k = done[who]
            s = k % STAGES
            if not full[s].try_wait_parity((k // STAGES) & 1, k // STAGES):
                continue
            assert stage[s] == k, "a warp read a stage that does not hold its job"
            done[who] += 1
            empty[s].arrive()
    return issued


@pytest.mark.parametrize("jobs", [0, 1, 2, 3, 4, 7, 20])
@pytest.mark.parametrize("warps", [1, 2, 15])
def test_pull_pipeline_never_deadlocks_and_reads_each_job_once(jobs, warps):
    for seed in range(30):
        assert run(jobs, warps, seed) == jobs
