"""A pure-Python model of fused_pull.ptx's job arithmetic (pulljob.ptxinc and the phase loops).

It replays the kernel's integer formulas -- the block's rows [jn*b/grid, jn*(b+1)/grid) of every
segment, phase 2's jobs of rj rows x one column chunk of CV vectors, phase 3's flat 64 KB chunks
(sharded) or groups of rj3 rows (replicated) -- and checks what the kernel relies on: every own
row's columns are consumed exactly once and in column order (each virtual thread's chain sees
its columns t, t+vthreads, ... in order, so the bits are the one-row kernels'), every stage fits
its 64 KB, every other segment's rows are gathered exactly once by every rank, and a block only
reads what the same block index of the peer wrote before the barrier between them.
"""
from __future__ import annotations

import pytest

from weave_nvshmem.collectives import plan
from weave_nvshmem.ptx.catalog import VEC_ELEMS

STAGE = 64 * 1024
SV = 4096


def block_rows(rows, world, b, grid):
    jn = -(-rows // world)
    return jn * b // grid, jn * (b + 1) // grid


def seg(rows, world, r):
    return rows * r // world, rows * (r + 1) // world


def phase2_jobs(rows, hvec, world, rank, b, grid):
    """(first row, rows, c0, n) of each phase-2 job of block b on rank, in job order."""
    cv = plan.pull_chunk_vectors(world)
    lo, hi = block_rows(rows, world, b, grid)
    rlo, rhi = seg(rows, world, rank)
    nown = 0 if rlo + lo >= rhi else min(rhi - (rlo + lo), hi - lo)
    nj = -(-hvec // cv)
    rj = max(1, cv // hvec)
    jobs = []
    for m in range(-(-nown // rj) * nj):
        g, jc = divmod(m, nj)
        first = g * rj
        nr = min(nown - first, rj)
        c0 = jc * cv
        jobs.append((rlo + lo + first, nr, c0, min(cv, hvec - c0)))
    return jobs


def phase3_jobs(rows, hvec, world, rank, b, grid, sharded, row_bytes):
    """(owner, first vector, vectors) of each non-empty phase-3 job of block b on rank."""
    lo, hi = block_rows(rows, world, b, grid)
    nb = hi - lo
    rj3 = STAGE // row_bytes
    njs = -(-nb * hvec // SV) if sharded else -(-nb // rj3)
    jobs = []
    for m in range(njs * (world - 1)):
        si, jj = divmod(m, njs)
        s = si + (si >= rank)
        seg0, seg1 = seg(rows, world, s)
        row = seg0 + lo
        if sharded:
            nvs = max(0, min(seg1 - row, nb)) * hvec
            g0 = jj * SV
            if g0 < nvs:
                jobs.append((s, row * hvec + g0, min(SV, nvs - g0)))
        else:
            first = jj * rj3
            row += first
            if row < seg1:
                nr = min(seg1 - row, nb - first, rj3)
                jobs.append((s, row * hvec, nr * hvec))
    return jobs


CASES = [(rows, hidden, dtype, world, grid)
         for world in (2, 4, 8)
         for rows, hidden, dtype in ((1, 4096, "bf16"), (7, 5120, "bf16"), (13, 1024, "f16"), (300, 8192, "f32"),
                                     (100, 8192, "bf16"), (37, 7168, "f32"), (64, 256, "bf16"), (9, 32768, "bf16"))
         for grid in (1, 2, 3, 8)]


@pytest.mark.parametrize("rows, hidden, dtype, world, grid", CASES)
def test_fused_pull_jobs_cover_every_row_once_in_column_order(rows, hidden, dtype, world, grid):
    hvec = hidden // VEC_ELEMS[dtype]
    row_bytes = hvec * 16
    vthreads = plan.fused_block(hidden, dtype)[0]
    cv = plan.pull_chunk_vectors(world)
    for rank in range(world):
        rlo, rhi = seg(rows, world, rank)
        chains = {}  # (row, virtual thread) -> columns in the order the chain takes them
        for b in range(grid):
            lo, hi = block_rows(rows, world, b, grid)
            for first, nr, c0, n in phase2_jobs(rows, hvec, world, rank, b, grid):
                assert nr >= 1 and 1 <= n <= cv and nr * n * 16 * world <= STAGE  # one stage
                assert nr == 1 or (c0 == 0 and n == hvec)  # several rows only when whole
                for row in range(first, first + nr):
                    # the block's own rows, which every peer's block b copied (staged) for it
                    assert rlo + lo <= row < min(rlo + hi, rhi)
                    for t in range(vthreads):
                        chains.setdefault((row, t), []).extend(range(c0 + (t - c0) % vthreads, c0 + n, vthreads))
        for row in range(rlo, rhi):
            for t in range(vthreads):
                assert chains.pop((row, t), []) == list(range(t, hvec, vthreads)), (row, t)
        assert not chains
    for sharded in (False, True):
        for rank in range(world):
            pieces = []
            for b in range(grid):
                lo, hi = block_rows(rows, world, b, grid)
                for s, v0, n in phase3_jobs(rows, hvec, world, rank, b, grid, sharded, row_bytes):
                    assert s != rank and 0 < n * 16 <= STAGE and (sharded or n % hvec == 0)
                    seg0, seg1 = seg(rows, world, s)
                    # owner s's block b reduced exactly these rows before barrier 1
                    assert (seg0 + lo) * hvec <= v0 and v0 + n <= min(seg0 + hi, seg1) * hvec
                    pieces.append((v0, n))
            rlo, rhi = seg(rows, world, rank)
            want = [(0, rlo * hvec), (rhi * hvec, rows * hvec)]  # every other row exactly once
            pos, spans = 0, []
            for v0, n in sorted(pieces):
                assert v0 >= pos  # no vector twice
                if spans and spans[-1][1] == v0:
                    spans[-1][1] = v0 + n
                else:
                    spans.append([v0, v0 + n])
                pos = v0 + n
            assert [tuple(s) for s in spans] == [w for w in want if w[1] > w[0]] or \
                (rlo == 0 and rhi == rows and not spans)
