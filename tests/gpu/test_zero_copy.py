"""Symmetric inputs (weave_nvshmem.empty, the same tensor on every rank): the two-shot kernels read
them on the peers in place. Results must match the references and be bitwise identical to the
staged path with the same launch (same kernel, same reduction order)."""
import pytest
import torch

import weave_nvshmem as wn
from weave_nvshmem.testing import (DTYPES, all_true, poisoned, rank_input, reference_all_reduce, reference_fused,
                                   rel_err, same_on_ranks, tolerance)
from conftest import all_inputs, rank, world

EPS = 1e-6


def symmetric_copy(t):
    s = wn.empty(t.shape, t.dtype)
    s.copy_(t)
    return s


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", [(1,), (13, 5), (1000, 5120), (8191, 4096)])
def test_all_reduce_zero_copy(comm, dtype, shape):
    dt = DTYPES[dtype]
    xs = all_inputs(31, shape, dt)
    ref = reference_all_reduce(xs)
    sx = symmetric_copy(xs[rank()])
    staged = comm.all_reduce(xs[rank()], algorithm="twoshot", ctas=3)
    out = comm.all_reduce(sx, out=poisoned(shape, dt), algorithm="twoshot", ctas=3)
    rs = None
    if shape[0] % world() == 0 and (sx.numel() // world() * sx.element_size()) % 16 == 0:
        rs = comm.reduce_scatter(sx)
    comm.all_reduce(sx, out=sx, algorithm="twoshot")  # in place on the symmetric tensor
    comm.synchronize()
    same_out, same_sx = same_on_ranks(out), same_on_ranks(sx)
    ok = rel_err(out, ref) <= tolerance(dt) and torch.equal(out, staged) and same_out
    ok &= rel_err(sx, ref) <= tolerance(dt) and same_sx
    if rs is not None:
        n = rs.shape[0]
        ok &= rel_err(rs, ref[rank() * n:(rank() + 1) * n]) <= tolerance(dt)
    wn.free(sx)
    assert all_true(ok)


@pytest.mark.parametrize("mode", ["replicated", "sharded"])
@pytest.mark.parametrize("tokens, hidden", [(1, 4096), (7, 8192), (1000, 5120), (4099, 8192)])
def test_fused_zero_copy(comm, mode, tokens, hidden):
    dt = torch.bfloat16
    xs = all_inputs(41, (tokens, hidden), dt)
    res0 = rank_input(42, 0, (tokens, hidden), dt)
    w = rank_input(43, 0, (hidden,), dt)
    sx = symmetric_copy(xs[rank()])
    o1, r1 = comm.fused_allreduce_rmsnorm(xs[rank()], res0.clone(), w, EPS, residual_mode=mode,
                                          algorithm="twoshot")
    o2, r2 = comm.fused_allreduce_rmsnorm(sx, res0.clone(), w, EPS, residual_mode=mode, algorithm="twoshot",
                                          out=poisoned(o1.shape, dt))
    comm.synchronize()
    keep = wn.owned_rows(tokens, rank(), world()) if mode == "sharded" else range(tokens)
    ok = torch.equal(o1, o2) and torch.equal(r1[keep.start:keep.stop], r2[keep.start:keep.stop])
    ok &= same_on_ranks(o2)
    ref_s = reference_fused(xs, res0, w, EPS)[1]
    ok &= rel_err(r2[keep.start:keep.stop], ref_s[keep.start:keep.stop]) <= tolerance(dt) if len(keep) else True
    wn.free(sx)
    assert all_true(ok)
