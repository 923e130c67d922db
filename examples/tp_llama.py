"""A Llama-style tensor-parallel decoder with TokenWeave overlap, in four communication modes.

Modes (same weights, same inputs):
  nccl    : torch.distributed all-reduce, then torch add + RMSNorm
  fused   : weave_nvshmem.fused_allreduce_rmsnorm, no split
  weave   : the batch split in two (overlap planner), each half's fused collective on a side stream
            beside the other half's GEMMs
  no_comm : the all-reduces removed (add + RMSNorm only): the bound weave aims at

The norms are moved into the collectives: after attention, all-reduce + residual add + post-attention
RMSNorm; after the MLP, all-reduce + residual add + the *next* layer's input RMSNorm (the final norm
after the last layer). Weights are random, column-parallel (qkv, gate_up) and row-parallel (o_proj,
down) per rank. Run: torchrun --nproc-per-node=4 examples/tp_llama.py
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from weave_nvshmem.overlap.schedule import TwoStreams  # noqa: E402

MODES = ("nccl", "fused", "weave", "no_comm")


@dataclass(frozen=True)
class LlamaConfig:
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


def rms_norm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


class Collective:
    """The layer's communication: ``fused(x, residual, w) -> (normed, residual)`` per mode."""

    def __init__(self, mode: str, eps: float, comm=None, group=None, ctas=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} (got {mode!r})")
        self.mode, self.eps, self.comm, self.group, self.ctas = mode, eps, comm, group, ctas

    def fused(self, x, residual, w):
        if self.mode in ("fused", "weave"):
            return self.comm.fused_allreduce_rmsnorm(x, residual, w, self.eps, ctas=self.ctas)
        if self.mode == "nccl" and torch.distributed.is_initialized():
            torch.distributed.all_reduce(x, group=self.group)
        s = x + residual
        return rms_norm(s, w, self.eps), s


class TPModel:
    """``world``/``rank`` shard the weights; one rank's shard is built from ``seed`` + rank."""

    def __init__(self, cfg: LlamaConfig, world: int, rank: int, device, dtype=torch.bfloat16, seed: int = 0):
        if cfg.heads % world or cfg.intermediate % world:
            raise ValueError(f"heads and intermediate must divide by world size {world}")
        self.cfg, self.world, self.dtype, self.device = cfg, world, dtype, torch.device(device)
        self.nh = cfg.heads // world
        self.nkv = max(1, cfg.kv_heads // world)
        g = torch.Generator().manual_seed(seed * 1009 + rank)

        def w(*shape, scale):
            return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

        h, d, i = cfg.hidden, cfg.head_dim, cfg.intermediate // world
        self.layers = [dict(qkv=w((self.nh + 2 * self.nkv) * d, h, scale=h ** -0.5),
                            o=w(h, self.nh * d, scale=(cfg.heads * d) ** -0.5),
                            gate_up=w(2 * i, h, scale=h ** -0.5),
                            down=w(h, i, scale=cfg.intermediate ** -0.5),
                            in_norm=1 + w(h, scale=0.1), post_norm=1 + w(h, scale=0.1))
                       for _ in range(cfg.layers)]
        self.final_norm = 1 + w(h, scale=0.1)

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

    def _attend(self, layer, q, k, v, q_start):
        """Causal attention of queries at positions q_start.. over keys 0..len(k)-1."""
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        qpos = torch.arange(q_start, q_start + q.shape[0], device=q.device)[:, None]
        mask = torch.arange(k.shape[0], device=q.device)[None, :] <= qpos
        o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                           attn_mask=mask, scale=1 / math.sqrt(self.cfg.head_dim))
        return o.transpose(0, 1).reshape(q.shape[0], -1) @ layer["o"].t()

    def _mlp(self, layer, h):
        gate, up = (h @ layer["gate_up"].t()).chunk(2, -1)
        return (F.silu(gate) * up) @ layer["down"].t()

    def _next_norm(self, li):
        return self.layers[li + 1]["in_norm"] if li + 1 < len(self.layers) else self.final_norm

    # ---- forward --------------------------------------------------------------------------
    def forward(self, x, coll: Collective, split: int = 0):
        """``x``: [T, hidden] embedding output (replicated). Returns the final-normed hidden [T, hidden].

        ``split`` (weave mode only): first subset = tokens [0, split); 0 or T means no split.
        """
        T = x.shape[0]
        residual = x.clone()
        h = rms_norm(x, self.layers[0]["in_norm"], self.cfg.eps)
        if coll.mode != "weave" or not 0 < split < T:
            for li, layer in enumerate(self.layers):
                q, k, v = self._qkv(layer, h, 0)
                h, residual = coll.fused(self._attend(layer, q, k, v, 0), residual, layer["post_norm"])
                h, residual = coll.fused(self._mlp(layer, h), residual, self._next_norm(li))
            return h
        return self._woven(h, residual, coll, split)

    def _woven(self, h, residual, coll, a):
        """Two subsets A=[0,a), B=[a,T): each collective of one runs on the side stream beside the
        other's GEMMs. B's queries attend to A's keys too, so attention(B) follows qkv(A)."""
        st = TwoStreams(h.device)

        def on_side(x, r, w):
            """The fused collective of ``x`` on the side stream; (normed, residual, ready event)."""
            st.side_waits_main(x)
            with st.side():
                hx, r = coll.fused(x, r, w)
            return hx, r, st.record_side(hx)

        hA, hB = h[:a], h[a:]
        rA, rB = residual[:a], residual[a:]
        readyA = readyB = None  # events: this layer's inputs of A and B are ready
        for li, layer in enumerate(self.layers):
            st.main_waits(readyA)
            qA, kA, vA = self._qkv(layer, hA, 0)
            hA, rA, attnA = on_side(self._attend(layer, qA, kA, vA, 0), rA, layer["post_norm"])
            st.main_waits(readyB)
            qB, kB, vB = self._qkv(layer, hB, a)
            oB = self._attend(layer, qB, torch.cat([kA, kB]), torch.cat([vA, vB]), a)
            hB, rB, attnB = on_side(oB, rB, layer["post_norm"])
            st.main_waits(attnA)
            hA, rA, readyA = on_side(self._mlp(layer, hA), rA, self._next_norm(li))
            st.main_waits(attnB)
            hB, rB, readyB = on_side(self._mlp(layer, hB), rB, self._next_norm(li))
        st.main_waits(readyA)
        st.main_waits(readyB)
        return torch.cat([hA, hB])


def main():
    """Check every mode against ``nccl`` on all local GPUs: torchrun --nproc-per-node=N examples/tp_llama.py"""
    import torch.distributed as dist

    import weave_nvshmem as wn
    from weave_nvshmem.overlap import LayerShape, candidates

    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    rank, world = dist.get_rank(), dist.get_world_size()
    wn.init()
    comm = wn.Communicator()
    cfg = LlamaConfig(hidden=8192, intermediate=28672, heads=64, kv_heads=8, layers=2)
    model = TPModel(cfg, world, rank, "cuda")
    shape = LayerShape(cfg.hidden, cfg.intermediate, cfg.heads, cfg.kv_heads, world, cfg.head_dim)
    sms = torch.cuda.get_device_properties(local).multi_processor_count
    for tokens in (1, 3, 1000, 2048):
        x = torch.randn(tokens, cfg.hidden, generator=torch.Generator().manual_seed(tokens)).to("cuda", torch.bfloat16)
        comm.reserve(tokens * cfg.hidden * 2)
        ref = model.forward(x, Collective("nccl", cfg.eps))
        weave = [c for c in candidates(shape, tokens, sms=sms, comm_ctas=8) if c.mode == "weave"]
        split = weave[0].split if weave else 0
        for mode in ("fused", "weave"):
            out = model.forward(x, Collective(mode, cfg.eps, comm=comm), split=split)
            torch.cuda.synchronize()
            err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
            if rank == 0:
                print(f"tokens={tokens} split={split} {mode}: rel err vs nccl {err:.2e}", flush=True)
    comm.close()
    wn.finalize()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
