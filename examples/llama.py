"""A Llama-style tensor-parallel decoder with TokenWeave overlap, in four communication modes.

Modes (same weights, same inputs):
  nccl    : NCCL all-reduce, then the shared fused add + RMSNorm (``weave_nvshmem.bench.baselines``)
  fused   : weave_nvshmem.fused_allreduce_rmsnorm, no split
  weave   : the batch split in two (overlap planner), each half's fused collective async on the
            communicator's side stream beside the other half's GEMMs (``weave_nvshmem.overlap.weave``)
  no_comm : the all-reduces removed (the shared fused add + RMSNorm only): the bound weave aims at

The norms are moved into the collectives: after attention, all-reduce + residual add + post-attention
RMSNorm; after the MLP, all-reduce + residual add + the *next* layer's input RMSNorm (the final norm
after the last layer). Every norm outside our fused op (the first layer's input norm in every mode,
all norms of nccl and no_comm) is the shared fused baseline, the fastest measured on the device for
the shape (``FusedAddRMSNorm.choose``), never an unfused chain. Weights are random,
column-parallel (qkv, gate_up) and row-parallel (o_proj, down) per rank.

Residual (fused and weave): "replicated" keeps every row on every rank; "sharded", as in TokenWeave,
keeps only this rank's rows of each fused call's tensor (``owned_rows``), so weave's two halves, being
separate calls, are each sharded within themselves. The normed output is replicated either way.

Used by ``examples.tp_llama`` (the correctness check and CLI) and ``examples.bench_layer``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from weave_nvshmem.bench.baselines import fused_add_rmsnorm, nccl_all_reduce
from weave_nvshmem.collectives.work import Work
from weave_nvshmem.overlap import Step, weave

MODES = ("nccl", "fused", "weave", "no_comm")
RESIDUAL_MODES = ("replicated", "sharded")


@dataclass(frozen=True)
class LlamaConfig:
    """Shapes of a Llama-style decoder: ``hidden``, MLP ``intermediate``, query and key/value
    ``heads`` / ``kv_heads`` of ``head_dim``, ``layers``, RMSNorm ``eps`` and the RoPE base."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int = 2
    head_dim: int = 128
    eps: float = 1e-5
    rope_theta: float = 500000.0


LLAMA3_70B = LlamaConfig(hidden=8192, intermediate=28672, heads=64, kv_heads=8)
QWEN25_72B = LlamaConfig(hidden=8192, intermediate=29568, heads=64, kv_heads=8, eps=1e-6, rope_theta=1e6)
SMALL = LlamaConfig(hidden=4096, intermediate=8192, heads=32, kv_heads=8)
CONFIGS = {"llama3-70b": LLAMA3_70B, "qwen2.5-72b": QWEN25_72B, "small": SMALL}


class Collective:
    """The layer's communication: ``fused(x, residual, w) -> (normed, residual)`` per mode.

    ``ctas``: CTAs of the fused op (None: its own choice); ``residual_mode``: see the module docstring
    (sharded needs the fused op, so only modes fused and weave take it); ``gemm_out``: a symmetric
    [max tokens, hidden] tensor (``weave_nvshmem.empty``, fused and weave modes) for the row-parallel
    GEMMs' outputs; ``norm``: the fused add + RMSNorm of every norm outside our fused op (default the
    shared baseline ``weave_nvshmem.bench.baselines.fused_add_rmsnorm``); ``algorithm``: the fused
    op's (``"auto"``: the planner's)."""

    def __init__(self, mode: str, eps: float, comm=None, group=None, ctas=None, residual_mode: str = "replicated",
                 gemm_out=None, norm=fused_add_rmsnorm, algorithm: str = "auto"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} (got {mode!r})")
        if residual_mode not in RESIDUAL_MODES:
            raise ValueError(f"residual_mode must be one of {RESIDUAL_MODES} (got {residual_mode!r})")
        if residual_mode == "sharded" and mode not in ("fused", "weave"):
            raise ValueError(f"residual_mode 'sharded' needs the fused collective (mode fused or weave, got {mode!r})")
        self.mode, self.eps, self.comm, self.group, self.ctas = mode, eps, comm, group, ctas
        self.residual_mode, self.norm, self.algorithm = residual_mode, norm, algorithm
        self.gemm_out = gemm_out if mode in ("fused", "weave") else None

    def gemm_target(self, start: int, n: int):
        """Where the row-parallel GEMM (o_proj, down) of tokens [start, start+n) writes: rows of the
        symmetric ``gemm_out`` (the fused op then reads them on the peers in place: zero copy), or
        None (a new tensor)."""
        return None if self.gemm_out is None else self.gemm_out[start:start + n]

    def fused(self, x, residual, w, *, async_op: bool = False):
        """All-reduce ``x`` [T, hidden] (none in no_comm), add ``residual``, RMSNorm with ``w``:
        ``(normed, new residual)``, or with ``async_op`` (our fused op only) a ``Work`` holding
        them, enqueued on the communicator's side stream. ``x`` may be overwritten."""
        if self.mode in ("fused", "weave"):
            kw = {"async_op": True} if async_op else {}
            if self.algorithm != "auto":
                kw["algorithm"] = self.algorithm
            return self.comm.fused_allreduce_rmsnorm(x, residual, w, self.eps, ctas=self.ctas,
                                                     residual_mode=self.residual_mode, **kw)
        if self.mode == "nccl":
            x = nccl_all_reduce(x, self.group)
        return self.norm(x, residual, w, self.eps)

    def first_norm(self, x, w):
        """The first layer's input RMSNorm of ``x`` [T, hidden] (no residual yet), by ``norm``."""
        return self.norm(x, None, w, self.eps)[0]


def _row_parallel(x, w, out=None):
    """``x @ w.T`` (a row-parallel GEMM: its output is this rank's partial sum), into ``out`` if given."""
    return x @ w.t() if out is None else torch.matmul(x, w.t(), out=out)


def _hidden(value):
    """The normed hidden of a chunk's value: ``(h, residual)`` after a fused collective, else ``h``."""
    return value[0] if isinstance(value, tuple) else value


def _causal(lq: int, lk: int, device) -> dict:
    """SDPA arguments for queries at the last ``lq`` of ``lk`` positions (lower-right causal), in a
    form torch sends to its flash/efficient kernels; an explicit mask only on torch without it."""
    if lq == lk:
        return {"is_causal": True}
    try:
        from torch.nn.attention.bias import causal_lower_right
    except ImportError:
        mask = torch.arange(lk, device=device)[None, :] <= torch.arange(lk - lq, lk, device=device)[:, None]
        return {"attn_mask": mask}
    return {"attn_mask": causal_lower_right(lq, lk)}


class TPModel:
    """``world``/``rank`` shard the weights; one rank's shard is built from ``seed`` + rank, the norm
    weights from ``seed`` alone."""

    def __init__(self, cfg: LlamaConfig, world: int, rank: int, device, dtype=torch.bfloat16, seed: int = 0):
        if cfg.heads % world or cfg.intermediate % world:
            raise ValueError(f"heads and intermediate must divide by world size {world}")
        self.cfg, self.world, self.rank, self.dtype, self.device = cfg, world, rank, dtype, torch.device(device)
        self.nh = cfg.heads // world
        self.nkv = max(1, cfg.kv_heads // world)
        # generated on the device (70B-size layers); the norm weights are replicated, as in TP, so
        # every rank normalises a row alike (a sharded residual has each row normalised by its owner)
        g = torch.Generator(device=self.device).manual_seed(seed * 1009 + rank)
        g_norm = torch.Generator(device=self.device).manual_seed(seed * 1009 + 1_000_003)

        def w(*shape, scale, gen=g):
            return (torch.randn(*shape, generator=gen, device=self.device) * scale).to(dtype)

        def norm(h):
            return 1 + w(h, scale=0.1, gen=g_norm)

        h, d, i = cfg.hidden, cfg.head_dim, cfg.intermediate // world
        self.layers = [dict(qkv=w((self.nh + 2 * self.nkv) * d, h, scale=h ** -0.5),
                            o=w(h, self.nh * d, scale=(cfg.heads * d) ** -0.5),
                            gate_up=w(2 * i, h, scale=h ** -0.5),
                            down=w(h, i, scale=cfg.intermediate ** -0.5),
                            in_norm=norm(h), post_norm=norm(h))
                       for _ in range(cfg.layers)]
        self.final_norm = norm(h)

    # ---- pieces ---------------------------------------------------------------------------
    def _rope(self, x, pos):
        d = x.shape[-1]
        inv = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
        ang = pos.float()[:, None] * inv[None, :]
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
        x1, x2 = x.float().chunk(2, -1)
        rot = torch.cat([-x2, x1], -1)
        return (x.float() * cos[:, None, :] + rot * sin[:, None, :]).to(x.dtype)

    def _qkv(self, layer, h, start):
        d = self.cfg.head_dim
        qkv = h @ layer["qkv"].t()
        q, k, v = qkv.split([self.nh * d, self.nkv * d, self.nkv * d], -1)
        pos = torch.arange(start, start + h.shape[0], device=h.device)
        q = self._rope(q.view(-1, self.nh, d), pos)
        k = self._rope(k.view(-1, self.nkv, d), pos)
        return q, k, v.view(-1, self.nkv, d)

    def _attend(self, layer, q, k, v, out=None):
        """Causal attention of queries at the last len(q) of the len(k) key positions."""
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, heads, len, d]: fused kernels
        o = F.scaled_dot_product_attention(q4, k4, v4, scale=1 / math.sqrt(self.cfg.head_dim),
                                           **_causal(q.shape[0], k.shape[0], q.device))
        return _row_parallel(o[0].transpose(0, 1).reshape(q.shape[0], -1), layer["o"], out)

    def _mlp(self, layer, h, out=None):
        gate, up = (h @ layer["gate_up"].t()).chunk(2, -1)
        return _row_parallel(F.silu(gate) * up, layer["down"], out)

    def _next_norm(self, li):
        return self.layers[li + 1]["in_norm"] if li + 1 < len(self.layers) else self.final_norm

    # ---- forward --------------------------------------------------------------------------
    def steps(self, coll: Collective, *, async_op: bool) -> list:
        """The decoder as ``overlap.weave`` steps: per layer (attention, fused collective with the
        post-attention norm) and (MLP, fused collective with the next norm). A chunk's value is
        ``(h, residual)`` (the first step's: the chunk's rows of ``h``); its residual also lives in
        ``chunk.state`` (a sharded residual stays sharded per chunk: each chunk's rows are the
        tensor of its own calls). A chunk's queries attend to the keys of the chunks before it
        (``chunk.shared``). ``async_op``: the collectives run on the communicator's side stream."""

        def collective(w):
            def run(y, chunk):
                got = coll.fused(y, chunk.state["residual"], w, async_op=async_op)
                chunk.state["residual"] = (got.outputs if isinstance(got, Work) else got)[1]
                return got
            return run

        def attention(li, layer):
            def run(value, chunk):
                q, k, v = self._qkv(layer, _hidden(value), chunk.start)
                kv = chunk.shared.setdefault(("kv", li), [])
                kv.append((k, v))
                if len(kv) > 1:
                    k, v = torch.cat([p[0] for p in kv]), torch.cat([p[1] for p in kv])
                return self._attend(layer, q, k, v, coll.gemm_target(chunk.start, chunk.size))
            return run

        def mlp(layer):
            return lambda value, chunk: self._mlp(layer, _hidden(value), coll.gemm_target(chunk.start, chunk.size))

        out = []
        for li, layer in enumerate(self.layers):
            out += [Step(attention(li, layer), collective(layer["post_norm"])),
                    Step(mlp(layer), collective(self._next_norm(li)))]
        return out

    def forward(self, x, coll: Collective, split: int = 0):
        """``x``: [T, hidden] embedding output (replicated). Returns the final-normed hidden [T, hidden]
        (replicated in every mode and residual mode).

        ``split`` (weave mode only): first subset = tokens [0, split); 0 or T means no split. Two
        subsets A=[0,a), B=[a,T): each collective of one runs on the side stream beside the other's
        GEMMs (``overlap.weave``).
        """
        T = x.shape[0]
        residual = x.clone()
        h = coll.first_norm(x, self.layers[0]["in_norm"])
        woven = coll.mode == "weave" and 0 < split < T
        parts = weave(self.steps(coll, async_op=woven), h, [split] if woven else [],
                      state=lambda a, b: {"residual": residual[a:b]})
        hs = [_hidden(p) for p in parts]
        return hs[0] if len(hs) == 1 else torch.cat(hs)
