"""The float64 reference math the GPU tests compare against, checked independently."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from weave_nvshmem.collectives import reference


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_all_reduce_is_elementwise_sum(rng, world):
    inputs = [rng.standard_normal((5, 7)).astype(np.float32) for _ in range(world)]
    got = reference.all_reduce(inputs)
    assert got.dtype == np.float64 and got.shape == (5, 7)
    expect = np.zeros((5, 7))
    for x in inputs:
        for i in range(5):
            for j in range(7):
                expect[i, j] += float(x[i, j])
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-12)


def test_all_reduce_accepts_lists_and_low_precision(rng):
    a = rng.standard_normal(16).astype(np.float16)
    b = list(rng.standard_normal(16))
    np.testing.assert_allclose(reference.all_reduce([a, b]), a.astype(np.float64) + np.array(b), rtol=0, atol=0)


def _rmsnorm_rows(s, w, eps):
    out = np.empty_like(s)
    for i, row in enumerate(s):
        ms = sum(float(v) * float(v) for v in row) / len(row)
        out[i] = [float(v) / math.sqrt(ms + eps) * float(g) for v, g in zip(row, w)]
    return out


@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("eps", [1e-6, 1e-5, 0.0])
def test_fused_allreduce_rmsnorm(rng, with_residual, eps):
    rows, hidden, world = 6, 24, 4
    inputs = [rng.standard_normal((rows, hidden)).astype(np.float32) for _ in range(world)]
    residual = rng.standard_normal((rows, hidden)).astype(np.float32) if with_residual else None
    weight = rng.uniform(0.5, 1.5, hidden).astype(np.float32)
    out, new_res = reference.fused_allreduce_rmsnorm(inputs, residual, weight, eps)
    s = np.zeros((rows, hidden))
    for x in inputs:
        s += x.astype(np.float64)
    if with_residual:
        s += residual.astype(np.float64)
    np.testing.assert_allclose(new_res, s, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(out, _rmsnorm_rows(s, weight, eps), rtol=1e-12, atol=1e-12)
    assert out.dtype == np.float64 and new_res.dtype == np.float64


def test_fused_output_has_unit_rms_with_unit_weight(rng):
    x = [rng.standard_normal((3, 64)) * 10 for _ in range(2)]
    out, _ = reference.fused_allreduce_rmsnorm(x, None, np.ones(64), 0.0)
    np.testing.assert_allclose(np.sqrt(np.mean(out * out, axis=-1)), 1.0, rtol=1e-12)


def test_fused_zero_rows_with_eps_are_zero():
    out, s = reference.fused_allreduce_rmsnorm([np.zeros((2, 8))] * 2, np.zeros((2, 8)), np.ones(8), 1e-6)
    assert not np.any(out) and not np.any(s)


# ---- rel_error -------------------------------------------------------------------------------

def test_rel_error_exact_and_scaled():
    ref = np.array([3.0, 4.0])
    assert reference.rel_error(ref, ref) == 0.0
    assert reference.rel_error(ref * 1.01, ref) == pytest.approx(0.01)
    assert reference.rel_error(np.array([3.0, 4.5]), ref) == pytest.approx(0.5 / 5.0)


def test_rel_error_both_zero_is_zero_and_zero_ref_gives_abs_norm():
    assert reference.rel_error(np.zeros(4), np.zeros(4)) == 0.0
    assert reference.rel_error(np.array([3.0, 4.0]), np.zeros(2)) == pytest.approx(5.0)


def test_rel_error_nan_or_inf_in_got_is_inf():
    ref = np.ones(4)
    for bad in (np.nan, np.inf, -np.inf):
        got = ref.copy()
        got[2] = bad
        assert reference.rel_error(got, ref) == math.inf


@pytest.mark.filterwarnings("error")  # inf - inf where both are inf is masked, not warned about
def test_rel_error_nonfinite_only_where_ref_is():
    ref = np.array([1.0, np.nan, 2.0, np.inf])
    got = np.array([1.0, np.nan, 2.0, np.inf])
    assert reference.rel_error(got, ref) == 0.0  # non-finite positions match and are skipped
    got2 = np.array([1.1, np.nan, 2.0, -np.inf])
    assert reference.rel_error(got2, ref) == pytest.approx(0.1 / math.sqrt(5.0))
    assert reference.rel_error(np.array([1.0, 1.0, 2.0, np.inf]), ref) == math.inf  # finite where ref is NaN


def test_rel_error_accepts_low_precision_and_lists():
    assert reference.rel_error(np.array([1, 2], dtype=np.float16), [1.0, 2.0]) == 0.0


def test_tensors_stay_tensors_on_their_device_and_agree_with_numpy(rng):
    """Tensor inputs compute in torch float64 on their device (CUDA tensors stay on the GPU) and
    give tensors; NumPy inputs give NumPy arrays; both give the same numbers."""
    inputs = [rng.standard_normal((3, 16)).astype(np.float32) for _ in range(3)]
    residual, weight = rng.standard_normal((3, 16)), rng.uniform(0.5, 1.5, 16)
    want_out, want_s = reference.fused_allreduce_rmsnorm(inputs, residual, weight, 1e-6)
    tensors = [torch.from_numpy(x).to(torch.bfloat16) for x in inputs]
    out, s = reference.fused_allreduce_rmsnorm(tensors, residual, torch.from_numpy(weight), 1e-6)
    assert isinstance(out, torch.Tensor) and out.dtype == s.dtype == torch.float64 and out.device == tensors[0].device
    rounded = [x.float().numpy() for x in tensors]
    np.testing.assert_allclose(s.numpy(), reference.all_reduce(rounded) + residual, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(reference.all_reduce(tensors).numpy(), reference.all_reduce(rounded), rtol=0, atol=0)
    assert reference.rel_error(torch.from_numpy(want_out), want_out) == 0.0
    got = want_out * (1 + 1e-3 * rng.standard_normal(want_out.shape))
    assert reference.rel_error(torch.from_numpy(got), want_out) == pytest.approx(reference.rel_error(got, want_out),
                                                                               rel=1e-12)
    assert reference.rel_error(got, torch.from_numpy(want_s)) == pytest.approx(reference.rel_error(got, want_s),
                                                                              rel=1e-12)


def test_all_reduce_returns_a_new_array():
    x = np.ones(3)
    got = reference.all_reduce([x])
    got[0] = 5.0
    assert x.tolist() == [1.0, 1.0, 1.0]


def test_tolerances_cover_the_supported_dtypes():
    assert set(reference.TOLERANCE) == {"float32", "float16", "bfloat16"}
    assert reference.TOLERANCE["float32"] < reference.TOLERANCE["float16"] < reference.TOLERANCE["bfloat16"]
