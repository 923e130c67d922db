"""Test models for the compile pass: a stand-in for Hugging Face transformers' Llama decoder.

STAND-IN: ``LlamaRMSNorm`` and ``LlamaDecoderLayer`` below do what transformers'
``models/llama/modeling_llama.py`` does, operation for operation where the pass looks (the
RMSNorm's fp32 formula, the two residual adds per layer), so the graphs Dynamo traces from them
have the shape a user's Llama has. They are written here because transformers is not a dependency;
``hf_model`` builds the same model from transformers' own classes when it is importable. What
differs from a real Llama and does not matter to the pass: no rotary embedding, no KV cache, no
grouped-query attention.

Tensor parallelism is placed as engines place it: ``o_proj`` and ``down_proj`` are row-parallel,
each followed by a sum all-reduce over the WORLD group, written as ``torch.distributed.all_reduce``
(in place, ``reduce="dist"``) or the functional collectives (``reduce="funcol"``). At one rank the
all-reduce is the identity, so eager and compiled models compute the same thing.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


class LlamaRMSNorm(nn.Module):
    """transformers' formula: upcast, mean square, rsqrt, downcast, then the weight (stand-in)."""

    def __init__(self, hidden: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class FunctionalRMSNorm(LlamaRMSNorm):
    """``F.rms_norm``."""

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.variance_epsilon)


class Fp32RMSNorm(LlamaRMSNorm):
    """The common fp32 formula with the weight applied in fp32 before the downcast."""

    def forward(self, x):
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (normed * self.weight.float()).to(x.dtype)


NORMS = {"hf": LlamaRMSNorm, "functional": FunctionalRMSNorm, "fp32": Fp32RMSNorm}


def all_reduce(y, reduce: str):
    """Sum ``y`` over WORLD: in place through torch.distributed, or through the functional collectives."""
    if reduce == "dist":
        dist.all_reduce(y)
        return y
    import torch.distributed._functional_collectives as funcol

    return funcol.all_reduce(y, "sum", dist.group.WORLD)


class RowParallelLinear(nn.Module):
    """``linear`` on this rank's slice of the input features, then the sum over ranks."""

    def __init__(self, linear: nn.Module, reduce: str):
        super().__init__()
        self.linear, self.reduce = linear, reduce

    def forward(self, x):
        return all_reduce(self.linear(x), self.reduce)


class LlamaAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, reduce: str):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(hidden, hidden, bias=False) for _ in range(3))
        self.o_proj = RowParallelLinear(nn.Linear(hidden, hidden, bias=False), reduce)

    def forward(self, x):
        b, t, h = x.shape
        q, k, v = (p(x).view(b, t, self.heads, h // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(a.transpose(1, 2).reshape(b, t, h))


class LlamaMLP(nn.Module):
    def __init__(self, hidden: int, inter: int, reduce: str):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = RowParallelLinear(nn.Linear(inter, hidden, bias=False), reduce)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """transformers' residual structure: norm -> attention -> add; norm -> MLP -> add (stand-in)."""

    def __init__(self, hidden: int, heads: int, inter: int, norm: str, reduce: str, eps: float = 1e-6):
        super().__init__()
        self.input_layernorm = NORMS[norm](hidden, eps)
        self.self_attn = LlamaAttention(hidden, heads, reduce)
        self.post_attention_layernorm = NORMS[norm](hidden, eps)
        self.mlp = LlamaMLP(hidden, inter, reduce)

    def forward(self, hidden_states):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states = self.self_attn(hidden_states)
        hidden_states = residual + hidden_states

        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = residual + hidden_states
        return hidden_states


class TinyLlama(nn.Module):
    """``layers`` decoder layers and the final norm: ``2 * layers`` fusable chains (the attention
    all-reduce with the post-attention norm; the MLP all-reduce with the next layer's input norm,
    or the final norm)."""

    def __init__(self, layers=2, hidden=64, heads=4, inter=128, norm="hf", reduce="dist"):
        super().__init__()
        self.layers = nn.ModuleList(LlamaDecoderLayer(hidden, heads, inter, norm, reduce) for _ in range(layers))
        self.norm = NORMS[norm](hidden)

    def forward(self, hidden_states):
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return self.norm(hidden_states)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights (norm weights around 1), so a wrong rewrite cannot hide behind ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if p.dim() == 1 else noise / p.shape[-1] ** 0.5)
    return model


# ---- transformers' own classes ----------------------------------------------------------------
def hf_model(layers=2, hidden=64, heads=4, inter=128, reduce="dist"):
    """transformers' ``LlamaDecoderLayer``s and ``LlamaRMSNorm`` with row-parallel ``o_proj`` and
    ``down_proj``; a module taking ``hidden_states [B, T, H]``. ImportError without transformers."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer as HFLayer
    from transformers.models.llama.modeling_llama import LlamaRMSNorm as HFNorm
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                         num_key_value_heads=heads, num_hidden_layers=layers, rms_norm_eps=1e-6)
    config._attn_implementation = "sdpa"

    class HFLlama(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(HFLayer(config, i) for i in range(layers))
            for layer in self.layers:
                layer.self_attn.o_proj = RowParallelLinear(layer.self_attn.o_proj, reduce)
                layer.mlp.down_proj = RowParallelLinear(layer.mlp.down_proj, reduce)
            self.norm = HFNorm(hidden, eps=config.rms_norm_eps)
            self.rotary = LlamaRotaryEmbedding(config)

        def forward(self, hidden_states):
            positions = torch.arange(hidden_states.shape[1], device=hidden_states.device)[None]
            rope = self.rotary(hidden_states, positions)
            for layer in self.layers:
                out = layer(hidden_states, position_embeddings=rope, position_ids=positions)
                hidden_states = out[0] if isinstance(out, tuple) else out
            return self.norm(hidden_states)

    return HFLlama()
