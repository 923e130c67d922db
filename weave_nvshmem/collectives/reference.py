"""Float64 reference math for the collectives (what the tests compare against)."""
from __future__ import annotations

import numpy as np


def all_reduce(inputs):
    """Sum of the ranks' arrays in float64."""
    return np.sum([np.asarray(x, dtype=np.float64) for x in inputs], axis=0)


def fused_allreduce_rmsnorm(inputs, residual, weight, eps):
    """(out, new residual) in float64: s = sum + residual; out = s / sqrt(mean(s^2) + eps) * w."""
    s = all_reduce(inputs)
    if residual is not None:
        s = s + np.asarray(residual, dtype=np.float64)
    rstd = 1.0 / np.sqrt(np.mean(s * s, axis=-1, keepdims=True) + eps)
    return s * rstd * np.asarray(weight, dtype=np.float64), s


def rel_error(got, ref) -> float:
    """||got - ref|| / ||ref|| (0 when both are zero); NaN anywhere in got gives inf."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if not np.all(np.isfinite(got) == np.isfinite(ref)):
        return float("inf")
    mask = np.isfinite(ref)
    num = np.linalg.norm((got - ref)[mask])
    den = np.linalg.norm(ref[mask])
    return float(num / den) if den else float(num)


#: relative-norm tolerance per dtype name
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
