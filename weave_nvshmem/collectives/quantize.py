"""Float-exact CPU model of compressed.ptx: each format's quantize/dequantize, the compressed
all-reduce as the kernel computes it, and the error bound the tests hold the kernels to.

Every step is an IEEE fp32 operation the kernel does the same way (``div.rn``, ``rcp.rn``,
``mul.rn``, round-to-nearest-even conversions, sums in rank order), so on any device this model
gives the kernel's bits. Formats and policies: docs/compression.md.
"""
from __future__ import annotations

import torch

from .compression import CompressionSpec

__all__ = ["quantize", "dequantize", "roundtrip", "element_bound", "compressed_all_reduce", "all_reduce_bound",
           "compressed_fused",
           "fused_bound", "QMAX"]

#: largest code magnitude: e4m3 448, int8 127, e2m1 6
QMAX = {"fp8": 448.0, "int8": 127.0, "mxfp4": 6.0}
_TINY = 2.0 ** -126  # fp8/int8: a scale below the smallest normal fp32 makes the block zero
#: e2m1 magnitudes by code 0..7, and the round-to-nearest-even thresholds between them
_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_E2M1_UP = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    x = x.reshape(-1).float()
    if x.numel() % block:
        raise ValueError(f"quantize: {x.numel()} elements are not whole blocks of {block}")
    return x.view(x.numel() // block, block)  # also no elements: [0, block]


def _amax(xb: torch.Tensor) -> torch.Tensor:
    """Per-block max |x|, NaN if the block holds one (max.NaN.f32)."""
    a = xb.abs().amax(dim=1)
    return torch.where(torch.isnan(xb).any(dim=1), torch.full_like(a, float("nan")), a)


def quantize(x: torch.Tensor, spec: CompressionSpec):
    """``(codes, scales)`` of ``x`` (any shape, numel a multiple of ``spec.block``).

    Returns
    -------
    codes : torch.Tensor
        ``[nblk, block]``: fp8 ``float8_e4m3fn``; int8 ``int8``; mxfp4 ``uint8`` codes 0..15
        (bit 3 the sign).
    scales : torch.Tensor
        ``[nblk]``: fp8/int8 ``float32`` scales; mxfp4 ``uint8`` E8M0 codes (255: NaN).
    """
    xb = _blocks(x, spec.block)
    amax = _amax(xb)
    if spec.format == "mxfp4":
        be = (amax.view(torch.int32) >> 23) & 255
        code = torch.clamp(be, min=2) - 2
        code = torch.where(be == 255, torch.full_like(code, 255), code)
        inv = ((254 - code) << 23).view(torch.float32)
        inv = torch.where(code == 255, torch.full_like(inv, float("nan")), inv)
        v = xb * inv[:, None]
        a = v.abs()
        q = torch.zeros_like(xb, dtype=torch.int32)
        for thr, inclusive in _E2M1_UP:
            q += (a >= thr if inclusive else a > thr).to(torch.int32)
        q = torch.where(v < 0, q | 8, q)
        return q.to(torch.uint8), code.to(torch.uint8)
    # a tensor divisor: torch turns "/ python scalar" into a multiply by its rounded reciprocal
    s = amax / torch.full_like(amax, QMAX[spec.format])
    tiny = s < _TINY
    s = torch.where(tiny, torch.zeros_like(s), s)
    inv = torch.where(tiny, torch.zeros_like(s), torch.reciprocal(s))
    v = xb * inv[:, None]
    if spec.format == "fp8":
        return torch.clamp(v, -448.0, 448.0).to(torch.float8_e4m3fn), s
    v = torch.nan_to_num(v, nan=0.0)
    return torch.clamp(torch.round(v), -128, 127).to(torch.int8), s


def dequantize(codes: torch.Tensor, scales: torch.Tensor, spec: CompressionSpec) -> torch.Tensor:
    """fp32 ``[nblk * block]`` values of ``quantize``'s result (``q * scale`` in fp32)."""
    if spec.format == "mxfp4":
        mag = torch.tensor(_E2M1, dtype=torch.float32, device=codes.device)[(codes & 7).long()]
        mag = torch.where((codes & 8) != 0, -mag, mag)
        c = scales.to(torch.int32)
        s = (c << 23).view(torch.float32)
        s = torch.where(c == 0, torch.full_like(s, 2.0 ** -127), s)
        return (mag * s[:, None]).reshape(-1)
    return (codes.float() * scales[:, None]).reshape(-1)


def roundtrip(x: torch.Tensor, spec: CompressionSpec) -> torch.Tensor:
    """``dequantize(quantize(x))`` in fp32, ``x``'s shape."""
    return dequantize(*quantize(x, spec), spec).view(x.shape)


def element_bound(x: torch.Tensor, spec: CompressionSpec) -> torch.Tensor:
    """Per-element bound on ``|x - roundtrip(x)|`` (fp32 values ``x``, float64 result).

    fp8: ``2^-4 |x| + 2^-10 * amax/448`` (3 mantissa bits; e4m3's subnormal step 2^-9 scaled);
    int8: ``amax/254``; mxfp4: ``max(|x|/4, amax/16)`` (e2m1's spacing is at most half the value,
    0.5 below 1, and the scale puts amax in [4, 8): saturation at 6 loses at most 2); each plus
    ``2^-21 |x|`` for the fp32 rounding of the scale and of ``x * rcp(s)``.
    """
    xb = _blocks(x, spec.block).double()
    amax = xb.abs().amax(dim=1, keepdim=True)
    a = xb.abs()
    if spec.format == "fp8":
        b = 2.0 ** -4 * a + 2.0 ** -10 * amax / 448.0
    elif spec.format == "int8":
        b = amax / 254.0 + 0 * a
    else:
        b = torch.maximum(a / 4.0, amax / 16.0)
    return (b + 2.0 ** -21 * a).reshape(x.shape)


def _owner_blocks(nblk: int, world: int):
    """Block ranges ``[nblk*r//W, nblk*(r+1)//W)`` per rank (compressed.ptx's segments)."""
    return [range(nblk * r // world, nblk * (r + 1) // world) for r in range(world)]


def compressed_all_reduce(inputs: list, spec: CompressionSpec) -> torch.Tensor:
    """What every rank's ``all_reduce(x, compression=spec)`` returns, bit for bit.

    Parameters
    ----------
    inputs : list of torch.Tensor
        Every rank's input, the same shape and dtype (bf16/fp16/fp32).

    Returns
    -------
    torch.Tensor
        The input's shape and dtype.
    """
    world, x0 = len(inputs), inputs[0]
    dtype, n = x0.dtype, x0.numel()
    nblk = n // spec.block
    if world == 1:
        return x0.clone()
    flat = [x.reshape(-1).float() for x in inputs]
    rt = [roundtrip(f, spec).view(nblk, spec.block) for f in flat]
    raw = [f.view(nblk, spec.block) for f in flat]
    out = torch.empty(nblk, spec.block, dtype=torch.float32, device=x0.device)
    for owner, blocks in enumerate(_owner_blocks(nblk, world)):
        sl = slice(blocks.start, blocks.stop)
        acc = torch.zeros(len(blocks), spec.block, dtype=torch.float32, device=x0.device)
        for p in range(world):
            acc = acc + (raw[p][sl] if p == owner else rt[p][sl])
        if spec.gather == "compressed":
            acc = roundtrip(acc, spec).view_as(acc)
        out[sl] = acc
    return out.to(dtype).view(x0.shape)


_UNIT = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24}


def all_reduce_bound(inputs: list, spec: CompressionSpec) -> float:
    """Normwise relative bound on ``compressed_all_reduce(inputs, spec)`` against the float64 sum.

    ``|err_i| <= sum_p e(x_p)_i + e(S~)_i + W 2^-24 sum_p |x_p,i| + u |S~_i|`` with ``e`` the
    format's ``element_bound`` (every partial counted as quantized: the owner's is not, so this
    is an over-estimate), ``S~`` the fp32 sum of the dequantized partials (the gather's input,
    its bound counted only with ``gather="compressed"``) and ``u`` the dtype's unit roundoff;
    returned as ``||bound||_2 / ||S||_2``.
    """
    world = len(inputs)
    flat = [x.reshape(-1).double() for x in inputs]
    exact = sum(flat)
    b = sum(element_bound(x.reshape(-1).float(), spec) for x in inputs)
    b = b + world * 2.0 ** -24 * sum(f.abs() for f in flat)
    approx = sum(roundtrip(x.reshape(-1).float(), spec).double() for x in inputs)
    if spec.gather == "compressed":
        b = b + element_bound((approx.abs() + b).float(), spec) + 2.0 ** -21 * b
    b = b + _UNIT[inputs[0].dtype] * (approx.abs() + b)
    den = float(torch.linalg.vector_norm(exact))
    return float(torch.linalg.vector_norm(b)) / den if den else float("inf")


def fused_bound(inputs: list, residual, weight, spec: CompressionSpec, residual_mode: str = "replicated"):
    """Normwise relative bounds ``(on s, on out)`` of ``compressed_fused`` against float64.

    The residual counts as one more partial (exact, so this over-estimates) of ``all_reduce_bound``
    (replicated: ``spec``'s gather; sharded: the own rows are never re-quantized, gather
    ``"input"``). ``out`` is within ``2 max|w| / min|w|`` times the bound on ``s`` (normalising at
    most doubles a relative error), plus 4 units of bf16 rounding, plus (sharded residual,
    compressed gather) twice the format's relative step for the re-quantization of ``out``
    (fp8 2^-4, int8 0.05, mxfp4 0.5).

    Parameters
    ----------
    inputs : list of torch.Tensor
        Every rank's ``[rows, H]`` partials.
    residual : torch.Tensor or None
        ``[rows, H]``.
    weight : torch.Tensor
        ``[H]``.
    """
    parts = list(inputs) + ([residual] if residual is not None else [])  # on their device
    s_spec = spec if residual_mode == "replicated" else CompressionSpec(spec.format, spec.block, "input")
    bs = all_reduce_bound(parts, s_spec)
    w = weight.double().abs()
    bo = 2 * float(w.max() / w.min()) * bs + 4 * 2.0 ** -8
    if residual_mode == "sharded" and spec.gather == "compressed":
        bo += 2 * {"fp8": 2 ** -4, "int8": 0.05, "mxfp4": 0.5}[spec.format]
    return bs, bo


#: compressed_fused.ptx's row layout: tiles of 256 elements, lane l holding 8 consecutive ones
#: (256t + 8l..), tile t warp t % 16's
_TILE, _LANES, _WARPS = 256, 32, 16


def _group_rstd(s: torch.Tensor, eps: float) -> torch.Tensor:
    """compressed_fused.ptx's rstd of each row of fp32 ``s`` [rows, H] (``[rows, 1]``): lane l of
    warp w chains fma over its elements 256t+8l..256t+8l+7 of the tiles t = w, w+16, ... in order,
    each warp's butterfly sums its lanes, the 16 warps' sums are added in warp order, then
    1/sqrt(ssq/H + eps). The row is padded to whole passes of 16 tiles with zeros (an fma of 0
    leaves the chain as it is: the kernel's lanes past H add nothing). The square root is taken
    in float64 and rounded once (sqrt.rn.f32's bits: torch's fp32 sqrt on the CPU is not always
    correctly rounded)."""
    rows, hidden = s.shape
    passes = -(-hidden // (_TILE * _WARPS))
    v = torch.nn.functional.pad(s, (0, passes * _TILE * _WARPS - hidden)).view(rows, passes, _WARPS, _LANES, 8)
    ssq = torch.zeros(rows, _WARPS, _LANES, dtype=torch.float32, device=s.device)
    for i in range(passes):
        for e in range(8):
            x = v[:, i, :, :, e]
            ssq = _fma(x, x, ssq)
    lane = torch.arange(_LANES, device=s.device)
    for m in (16, 8, 4, 2, 1):
        ssq = ssq + ssq[:, :, lane ^ m]
    tot = ssq[:, 0, :1]
    for w in range(1, _WARPS):
        tot = tot + ssq[:, w, :1]
    tot = tot / torch.full_like(tot, float(hidden))
    tot = tot + torch.full_like(tot, eps, dtype=torch.float32)
    return torch.reciprocal(torch.sqrt(tot.double()).float())


def _fma(a, b, c):
    """fp32 ``a * b + c`` rounded once (fma.rn.f32), through float64 (exact product, one rounding
    of the sum to fp64, then to fp32: equal to the single rounding except at double-rounding ties,
    which need a product and addend of very different magnitudes)."""
    return (a.double() * b.double() + c.double()).float()


def compressed_fused(inputs: list, residual, weight, eps: float, spec: CompressionSpec,
                     residual_mode: str = "replicated"):
    """What every rank's ``fused_allreduce_rmsnorm(..., compression=spec)`` gives: ``(out, s)``,
    ``s`` the new residual (every row; with ``residual_mode="sharded"`` a rank keeps its own rows).

    Parameters
    ----------
    inputs : list of torch.Tensor
        Every rank's ``[rows, H]`` partials (bf16/fp16/fp32).
    residual : torch.Tensor or None
        ``[rows, H]``, the same on every rank.
    weight : torch.Tensor
        ``[H]``.
    """
    world, x0 = len(inputs), inputs[0]
    rows, hidden = x0.shape
    dt = x0.dtype
    new = torch.empty(rows, hidden, dtype=torch.float32, device=x0.device)
    rt = [roundtrip(x.float(), spec).view(rows, hidden) for x in inputs]
    for owner in range(world):
        lo, hi = rows * owner // world, rows * (owner + 1) // world
        if lo == hi:
            continue
        acc = torch.zeros(hi - lo, hidden, dtype=torch.float32, device=x0.device)
        for p in range(world):
            acc = acc + (inputs[p][lo:hi].float() if p == owner else rt[p][lo:hi])
        if residual is not None:
            acc = acc + residual[lo:hi].float()
        if residual_mode == "replicated" and spec.gather == "compressed":
            acc = roundtrip(acc, spec).view_as(acc)
        new[lo:hi] = acc.to(dt).float()
    # the normalisation is row by row (and blocks never straddle rows): all owners' rows at once
    out = (new * _group_rstd(new, eps)) * weight.float()
    if residual_mode == "sharded" and spec.gather == "compressed":
        out = roundtrip(out, spec).view_as(out)
    return out.to(dt), new.to(dt)
