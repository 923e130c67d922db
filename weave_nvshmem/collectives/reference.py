"""Float64 reference math for the collectives (what the tests compare against).

The math runs in torch float64 on the inputs' device: CUDA tensors stay on their GPU (only the
scalar of ``rel_error`` comes back to the host), NumPy arrays and array-likes run on the CPU and
come back as NumPy arrays.
"""
from __future__ import annotations

import numpy as np
import torch


def _device(arrays):
    """The device of the first torch tensor among ``arrays``; None when there is none (NumPy in, NumPy out)."""
    return next((a.device for a in arrays if isinstance(a, torch.Tensor)), None)


def _float64(a, device) -> torch.Tensor:
    """``a`` as a float64 tensor on ``device`` (the CPU for None); may be ``a`` itself."""
    if isinstance(a, torch.Tensor):
        return a.detach().to(device=device, dtype=torch.float64)
    return torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)


def _sum(inputs, device) -> torch.Tensor:
    """Float64 sum in rank order 0..W-1 (a new tensor)."""
    acc = _float64(inputs[0], device).clone()
    for x in inputs[1:]:
        acc += _float64(x, device)
    return acc


def all_reduce(inputs):
    """Sum of the ranks' arrays in float64.

    Parameters
    ----------
    inputs : sequence of torch.Tensor or array-like
        W arrays `[...]` of one shape, any dtype.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        `[...]` float64: a tensor on the first tensor input's device, or a NumPy array when no
        input is a tensor.
    """
    device = _device(inputs)
    s = _sum(inputs, device)
    return s if device is not None else s.numpy()


def fused_allreduce_rmsnorm(inputs, residual, weight, eps):
    """(out, new residual) in float64: s = sum + residual; out = s / sqrt(mean(s^2) + eps) * w.

    Parameters
    ----------
    inputs : sequence of torch.Tensor or array-like
        W arrays `[T, H]`, any dtype.
    residual : torch.Tensor, array-like or None
        `[T, H]`.
    weight : torch.Tensor or array-like
        `[H]`.
    eps : float

    Returns
    -------
    out, s : torch.Tensor or numpy.ndarray
        `[T, H]` float64, on the first tensor argument's device (NumPy arrays when none is a
        tensor). Inf and NaN rows propagate, as in the kernels.
    """
    device = _device([*inputs, residual, weight])
    s = _sum(inputs, device)
    if residual is not None:
        s += _float64(residual, device)
    rstd = 1.0 / torch.sqrt(torch.mean(s * s, dim=-1, keepdim=True) + eps)
    out = s * rstd * _float64(weight, device)
    return (out, s) if device is not None else (out.numpy(), s.numpy())


def rel_error(got, ref) -> float:
    """||got - ref|| / ||ref|| (0 when both are zero); NaN anywhere in got gives inf.

    Parameters
    ----------
    got, ref : torch.Tensor or array-like
        Shapes that broadcast, any dtype. Positions where ``ref`` is not finite are skipped when
        ``got`` is not finite there either; ``got`` not finite exactly where ``ref`` is not gives
        inf. Computed on the first tensor's device; one scalar transfer to the host.

    Returns
    -------
    float
    """
    device = _device((got, ref))
    g, r = _float64(got, device), _float64(ref, device)
    finite = torch.isfinite(r)
    mismatch = (torch.isfinite(g) != finite).any()
    num = torch.linalg.vector_norm(torch.where(finite, g - r, 0.0))  # inf - inf where both are inf: masked
    den = torch.linalg.vector_norm(torch.where(finite, r, 0.0))
    mismatch, num, den = torch.stack([mismatch.double(), num, den]).tolist()
    if mismatch:
        return float("inf")
    return num / den if den else num


#: relative-norm tolerance per dtype name
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
