"""A pure-numpy model of the P2P kernels' data partition (allreduce.ptx, fused_twoshot.ptx).

It replays the index arithmetic of the kernels' loops -- segment r = vectors [ss_r, ss_{r+1}),
ss_r = nvec*r//W; block b, thread t handles segment-local j = b*ntid + t + k*grid*ntid, j < jn =
ceil(nvec/W) -- and checks what the protocol relies on: every vector is pushed exactly once to its
owner by every rank, reduced once by its owner, gathered exactly once by each other rank, and all
of that by the same block index on every rank (so block-pairwise barriers suffice). It also runs
the data through the model (fp32 sums in rank order) to check results, including partial last
vectors.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from weave_nvshmem.collectives import plan
from weave_nvshmem.collectives.plan import owned_rows, plan_all_reduce


def segments(nvec, world):
    return [nvec * r // world for r in range(world + 1)]


def thread_js(b, t, grid, ntid, jn):
    j = b * ntid + t
    while j < jn:
        yield j
        j += grid * ntid


def twoshot_model(nvec, world, grid, ntid):
    """(pushes, reduces, gathers) as the twoshot kernel would perform them.

    pushes[(src, dst, v)] / reduces[(rank, v)] / gathers[(rank, v)] count operations;
    block_of[(phase, rank, v)] is the block that did it.
    """
    ss = segments(nvec, world)
    jn = -(-nvec // world)
    pushes, reduces, gathers = Counter(), Counter(), Counter()
    block_of = {}
    for rank in range(world):
        for b in range(grid):
            for t in range(ntid):
                # phase 1: push vector ss_r + j to its owner r (r != rank: the own segment is
                # summed from the input)
                for j in thread_js(b, t, grid, ntid, jn):
                    for r in range(world):
                        v = ss[r] + j
                        if v < ss[r + 1] and r != rank:
                            pushes[(rank, r, v)] += 1
                            block_of[("push", rank, v)] = b
                # phase 2: the owner sums v = ss_rank + j while v < ss_{rank+1} (no jn bound)
                j = b * ntid + t
                while ss[rank] + j < ss[rank + 1]:
                    v = ss[rank] + j
                    reduces[(rank, v)] += 1
                    block_of[("reduce", rank, v)] = b
                    j += grid * ntid
                # phase 3: pull every other owner's segment
                for j in thread_js(b, t, grid, ntid, jn):
                    for r in range(world):
                        v = ss[r] + j
                        if v < ss[r + 1] and r != rank:
                            gathers[(rank, v)] += 1
                            block_of[("gather", rank, v)] = b
    return ss, pushes, reduces, gathers, block_of


def owner(v, ss):
    return next(r for r in range(len(ss) - 1) if ss[r] <= v < ss[r + 1])


CASES = [(nvec, world, grid, ntid)
         for nvec in (1, 3, 7, 37, 129, 1001)
         for world in (1, 2, 3, 4, 8)
         for grid, ntid in ((1, 32), (3, 32), (2, 64))]


@pytest.mark.parametrize("nvec,world,grid,ntid", CASES)
def test_twoshot_partition(nvec, world, grid, ntid):
    ss, pushes, reduces, gathers, block_of = twoshot_model(nvec, world, grid, ntid)
    assert ss[0] == 0 and ss[-1] == nvec
    for src in range(world):
        for v in range(nvec):
            o = owner(v, ss)
            assert pushes[(src, o, v)] == (0 if o == src else 1), (src, v)
            if o != src:
                # the pushing block of every rank is the reducing block of the owner
                assert block_of[("push", src, v)] == block_of[("reduce", o, v)]
    assert sum(pushes.values()) == (world - 1) * nvec  # nothing pushed to a non-owner
    assert sorted(reduces) == sorted((owner(v, ss), v) for v in range(nvec))
    assert set(reduces.values()) == ({1} if nvec else set())
    for rank in range(world):
        for v in range(nvec):
            o = owner(v, ss)
            assert gathers[(rank, v)] == (0 if o == rank else 1), (rank, v)
            if o != rank:
                # the gathering block waited (barrier 1) for the block of the owner that wrote v
                assert block_of[("gather", rank, v)] == block_of[("reduce", o, v)]


@pytest.mark.parametrize("world", [1, 2, 4, 8])
@pytest.mark.parametrize("nelem", [1, 5, 9, 8 * 13 + 3, 999, 4099])
@pytest.mark.parametrize("algorithm", ["oneshot", "twoshot"])
def test_allreduce_dataflow_bitwise_identical(world, nelem, algorithm):
    """Run data through the model: bf16-like vectors of VE=8, partial last vector zero-filled."""
    ve = 8
    launch = plan_all_reduce(nelem, "bf16", world, algorithm)
    grid, ntid = min(launch.grid, 4), 32  # a smaller block keeps the model fast; the partition is generic
    nvec = -(-nelem // ve)
    rng = np.random.default_rng(nelem * 31 + world)
    inputs = rng.standard_normal((world, nelem)).astype(np.float32)
    padded = np.zeros((world, nvec * ve), np.float32)
    padded[:, :nelem] = inputs
    vecs = padded.reshape(world, nvec, ve)
    # staging[dst][src] holds what src pushed to dst
    staging = np.full((world, world, nvec, ve), np.nan, np.float32)
    out = np.full((world, nvec, ve), np.nan, np.float32)
    if algorithm == "oneshot":
        for src in range(world):
            staging[:, src] = vecs[src]
        for rank in range(world):
            acc = staging[rank, 0].copy()
            for p in range(1, world):
                acc = acc + staging[rank, p]
            out[rank] = acc
    else:
        ss, pushes, reduces, gathers, _ = twoshot_model(nvec, world, grid, ntid)
        for (src, dst, v) in pushes:
            staging[dst, src, v] = vecs[src, v]
        # the owner reads its own share straight from its input: whatever lies past nelem (NaN
        # here) may enter the partial last vector's spare lanes, which are never stored
        raw = np.full((world, nvec * ve), np.nan, np.float32)
        raw[:, :nelem] = inputs
        for rank in range(world):
            staging[rank, rank] = raw[rank].reshape(nvec, ve)
        result = np.full((world, nvec, ve), np.nan, np.float32)
        for (rank, v) in reduces:
            acc = staging[rank, 0, v].copy()
            for p in range(1, world):
                acc = acc + staging[rank, p, v]
            out[rank, v] = result[rank, v] = acc
        for (rank, v) in gathers:
            out[rank, v] = result[owner(v, ss), v]
    flat = out.reshape(world, -1)[:, :nelem]
    assert not np.isnan(flat).any()
    for rank in range(1, world):
        assert np.array_equal(flat[rank].view(np.uint32), flat[0].view(np.uint32))
    np.testing.assert_allclose(flat[0], inputs.astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("chunk_vecs", [1, 3, 17])
def test_reduce_scatter_and_all_gather_chunks(world, chunk_vecs):
    """flags&1 / flags&2: with whole-vector chunks, segment r is exactly rank r's chunk."""
    nvec = world * chunk_vecs
    ss, pushes, reduces, gathers, _ = twoshot_model(nvec, world, 3, 32)
    for r in range(world):
        assert (ss[r], ss[r + 1]) == (r * chunk_vecs, (r + 1) * chunk_vecs)
        mine = sorted(v for (rank, v) in reduces if rank == r)
        assert mine == list(range(r * chunk_vecs, (r + 1) * chunk_vecs))
        # the chunk-local index j = v - ss_r addresses rank r's reduce-scatter output / gather input
        assert [v - ss[r] for v in mine] == list(range(chunk_vecs))


def fused_twoshot_model(rows, world, grid, groups):
    """fused_twoshot.ptx's row loops: block b takes segment-local rows [jn*b//grid, jn*(b+1)//grid)
    of every segment (jn = ceil(rows/W)); its ``groups`` row groups stride over them (phase 2: own
    rows; phase 3: index m over the W-1 other segments, segment by segment, short ones skipped).
    Returns {(phase, rank, row): [(block, group), ...]}."""
    jn = -(-rows // world)
    seg = [rows * r // world for r in range(world + 1)]
    done = defaultdict(list)
    for rank in range(world):
        for b in range(grid):
            lo, hi = jn * b // grid, jn * (b + 1) // grid
            nb = hi - lo
            for r in range(world):  # phase 1 (and sharded phase 3): flat copies of those rows
                if r != rank:
                    for row in range(seg[r] + lo, min(seg[r] + hi, seg[r + 1])):
                        done[("push", rank, row)].append((b, None))
            for g in range(groups):
                for m in range(g, nb, groups):  # phase 2: stops at the end of our segment
                    row = seg[rank] + lo + m
                    if row >= seg[rank + 1]:
                        break
                    done[("reduce", rank, row)].append((b, g))
                for m in range(g, nb * (world - 1), groups):  # phase 3, replicated
                    ri, rr = divmod(m, nb)
                    r = ri + (ri >= rank)
                    row = seg[r] + lo + rr
                    if row < seg[r + 1]:
                        done[("gather", rank, row)].append((b, g))
    return seg, done


@pytest.mark.parametrize("rows", [0, 1, 3, 7, 64, 1000])
@pytest.mark.parametrize("world", [1, 2, 4, 8])
@pytest.mark.parametrize("grid", [1, 3, 8, 64])
def test_fused_twoshot_rows(rows, world, grid):
    """Every row: pushed once to its owner by every other rank, reduced once by its owner, gathered
    once by every other rank, all by the same block index (block-pairwise barriers suffice)."""
    groups = 16 // plan.row_group(-(-(-(-rows // world)) // grid))
    seg, done = fused_twoshot_model(rows, world, grid, groups)
    for rank in range(world):
        mine = owned_rows(rows, rank, world)
        assert range(seg[rank], seg[rank + 1]) == mine
        for row in range(rows):
            owner = next(r for r in range(world) if row in owned_rows(rows, r, world))
            if row in mine:
                assert len(done[("reduce", rank, row)]) == 1 and not done[("push", rank, row)]
                assert not done[("gather", rank, row)]
            else:
                assert len(done[("push", rank, row)]) == 1 and len(done[("gather", rank, row)]) == 1
                assert not done[("reduce", rank, row)]
                # the owner reduces the row in the block that pushed it and that gathers it
                (b_push, _), = done[("push", rank, row)]
                (b_red, _), = done[("reduce", owner, row)]
                (b_gat, _), = done[("gather", rank, row)]
                assert b_push == b_red == b_gat
