"""The torch.compile pass on a CPU at one rank (gloo): which chains it rewrites, that the rest of the
graph is untouched, and that compiled models match eager (the fused op runs its CPU reference)."""
from __future__ import annotations

import collections
import operator

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch._dynamo.backends.common import aot_autograd  # noqa: E402
from torch._inductor.decomposition import select_decomp_table  # noqa: E402

import llama_standin as L  # noqa: E402
from weave_nvshmem.compile import FuseAllReduceRMSNorm, fuse_allreduce_rmsnorm  # noqa: E402
from weave_nvshmem.testing import rel_err, tolerance  # noqa: E402

FUSED = torch.ops.weave_nvshmem.fused_allreduce_rmsnorm_functional.default


@pytest.fixture(scope="module", autouse=True)
def world1():
    """A one-rank gloo group, as a user's single-process run has (an in-memory store, no network)."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mine = not dist.is_initialized()
    if mine:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    if mine:
        dist.destroy_process_group()


def ops_of(graph) -> collections.Counter:
    return collections.Counter(getattr(n.target, "overloadpacket", n.target).__name__
                               for n in graph.nodes if n.op == "call_function")


class Rewritten:
    """Compile with AOT autograd and Inductor's decompositions (the graph Inductor's post-grad
    passes see), apply the pass, run the rewritten graph eagerly; keep counts and graphs."""

    def __init__(self, group_names=None):
        self.group_names, self.counts, self.graphs, self.before = group_names, [], [], []
        self.backend = aot_autograd(fw_compiler=self._compile, decompositions=select_decomp_table())

    def _compile(self, gm, example_inputs):
        self.before.append(ops_of(gm.graph))
        self.counts.append(fuse_allreduce_rmsnorm(gm.graph, self.group_names))
        gm.recompile()
        self.graphs.append(gm.graph)
        return gm

    def __call__(self, fn, *args):
        torch._dynamo.reset()
        with torch.no_grad():
            return torch.compile(fn, backend=self.backend, fullgraph=True)(*args)


def model_and_input(norm="hf", reduce="dist", dtype=torch.bfloat16, tokens=5):
    model = L.randomize(L.TinyLlama(norm=norm, reduce=reduce)).to(dtype)
    x = torch.randn(2, tokens, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    return model, x


# ---- what is rewritten ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("reduce", ["dist", "funcol"])
@pytest.mark.parametrize("norm", ["hf", "functional", "fp32"])
def test_every_chain_of_a_llama_is_fused(norm, reduce, dtype):
    model, x = model_and_input(norm, reduce, dtype)
    with torch.no_grad():
        ref = model(x)
    rw = Rewritten()
    got = rw(model, x)
    assert rw.counts == [4]  # 2 layers x (attention + post-attention norm, MLP + next norm)
    # exactly the chains' ops went, exactly the fused op (and its two outputs) came
    casts = 0 if dtype == torch.float32 else (3 if norm == "fp32" else 2)  # fp32: the weight's cast too
    chain = {"all_reduce": 1, "wait_tensor": 1, "add": 2, "pow": 1, "mean": 1, "rsqrt": 1, "mul": 2,
             "convert_element_type": casts, "copy": 1 if reduce == "dist" else 0}
    removed = collections.Counter({op: 4 * n for op, n in chain.items() if n})
    after = ops_of(rw.graphs[0])
    assert rw.before[0] - after == removed
    assert after - rw.before[0] == collections.Counter({"fused_allreduce_rmsnorm_functional": 4, "getitem": 8})
    assert rel_err(got, ref) <= tolerance(dtype)


def test_fused_node_arguments():
    model, x = model_and_input("functional", "funcol", torch.float32)
    rw = Rewritten()
    rw(model, x)
    fused = [n for n in rw.graphs[0].nodes if n.target is FUSED]
    placeholders = {n for n in rw.graphs[0].nodes if n.op == "placeholder"}
    assert len(fused) == 4
    for n in fused:
        x_in, residual, weight, eps = n.args
        assert eps == pytest.approx(1e-6) and weight in placeholders  # the norm's own weight parameter
        assert tuple(n.meta["val"][0].shape) == tuple(residual.meta["val"].shape) == (2, 5, 64)
        assert sorted(u.args[1] for u in n.users if u.target is operator.getitem) == [0, 1]
    # the chains are linked: each fused op's new residual is the next one's residual
    for prev, nxt in zip(fused, fused[1:]):
        assert nxt.args[1].target is operator.getitem and nxt.args[1].args == (prev, 1)


def test_inductor_pass_on_cpu():
    """The real thing: Inductor runs the pass as post_grad_custom_pre_pass and compiles the rest."""
    model, x = model_and_input("hf", "dist", torch.float32)
    fuse = FuseAllReduceRMSNorm()
    torch._dynamo.reset()
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):
        ref = model(x)
        got = torch.compile(model, fullgraph=True, options=fuse.options())(x)
    assert fuse.replaced == [4]
    assert rel_err(got, ref) <= tolerance(torch.float32)


def test_transformers_llama():
    """transformers' own LlamaDecoderLayer and LlamaRMSNorm, where transformers is installed."""
    pytest.importorskip("transformers")
    model = L.randomize(L.hf_model()).to(torch.bfloat16)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    with torch.no_grad():
        ref = model(x)
    rw = Rewritten()
    got = rw(model, x)
    assert rw.counts == [4]
    assert rel_err(got, ref) <= tolerance(torch.bfloat16)


def test_pass_uuid_follows_the_group():
    assert FuseAllReduceRMSNorm().uuid() == FuseAllReduceRMSNorm().uuid()
    assert FuseAllReduceRMSNorm().uuid() != FuseAllReduceRMSNorm(group="other").uuid()


# ---- what is left alone ---------------------------------------------------------------------------
def ar(y):
    return L.all_reduce(y * 2, "funcol")  # the all-reduce of an intermediate, as after a GEMM


def hf_norm(s, w, eps=1e-6):
    sf = s.to(torch.float32)
    return w * (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps)).to(s.dtype)


def sum_also_returned(x, r, w):
    y = ar(x)
    return hf_norm(y + r, w), y


def norm_in_bf16(x, r, w):
    s = ar(x) + r
    return w * (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6))


def normalised_value_reused(x, r, w):
    s = ar(x) + r
    sf = s.float()
    n = sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + 1e-6)
    return w * n.to(s.dtype), n


def norm_over_first_dim(x, r, w):
    s = ar(x) + r
    sf = s.float()
    return (sf * torch.rsqrt(sf.pow(2).mean(0, keepdim=True) + 1e-6)).to(s.dtype) * w


def broadcast_residual(x, r, w):
    return F.rms_norm(ar(x) + r[:1], (x.shape[-1],), w, 1e-6)


def plain(x, r, w):
    return hf_norm(ar(x) + r, w)


@pytest.mark.parametrize("fn,weight_dtype,hidden", [
    (sum_also_returned, torch.bfloat16, 64),
    (norm_in_bf16, torch.bfloat16, 64),
    (normalised_value_reused, torch.bfloat16, 64),
    (norm_over_first_dim, torch.bfloat16, 64),
    (broadcast_residual, torch.bfloat16, 64),
    (plain, torch.float32, 64),  # an fp32 weight on bf16 activations: the output is fp32
    (plain, torch.bfloat16, 12),  # rows of 24 bytes: not whole 16-byte vectors
], ids=["sum_also_returned", "norm_in_bf16", "normalised_value_reused", "norm_over_first_dim",
        "broadcast_residual", "fp32_weight", "rows_of_24_bytes"])
def test_left_alone(fn, weight_dtype, hidden):
    g = torch.Generator().manual_seed(3)
    x, r = (torch.randn(8, hidden, generator=g).to(torch.bfloat16) for _ in range(2))
    w = torch.randn(hidden, generator=g).to(weight_dtype)
    rw = Rewritten()
    with torch.no_grad():
        ref = fn(x, r, w)
    got = rw(fn, x, r, w)
    assert rw.counts == [0]
    assert rw.before[0] == ops_of(rw.graphs[0])
    for a, b in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,), strict=True):
        assert torch.equal(a, b)


def test_other_groups_are_left_alone():
    model, x = model_and_input("hf", "funcol")
    rw = Rewritten(group_names={"not-this-group"})
    rw(model, x)
    assert rw.counts == [0]


@pytest.mark.parametrize("form", ["rms_norm", "_fused_rms_norm"])
def test_whole_rms_norm_ops(form):
    """Graphs traced before decomposition hold the norm as one op (``aten.rms_norm``, or
    ``aten._fused_rms_norm`` and its dead ``rstd``): rewritten the same way."""
    from torch.fx.experimental.proxy_tensor import make_fx

    if not hasattr(torch.ops.aten, form):
        pytest.skip(f"this torch has no aten.{form}")
    c10d, group = torch.ops._c10d_functional, dist.group.WORLD.group_name

    def fn(x, r, w):
        s = c10d.wait_tensor(c10d.all_reduce(x * 2, "sum", group)) + r
        if form == "rms_norm":
            return torch.ops.aten.rms_norm(s, [16], w, 1e-6), s * 3
        out, rstd = torch.ops.aten._fused_rms_norm(s, [16], w, None)
        return out, s * 3

    g = torch.Generator().manual_seed(4)
    args = tuple(torch.randn(shape, generator=g) for shape in ((8, 16), (8, 16), (16,)))
    gm = make_fx(fn, tracing_mode="fake", pre_dispatch=True)(*args)
    assert ops_of(gm.graph)[form] == 1
    assert fuse_allreduce_rmsnorm(gm.graph) == 1
    gm.recompile()
    left = ops_of(gm.graph)
    assert left["fused_allreduce_rmsnorm_functional"] == 1 and not left[form] and not left["all_reduce"]
    for got, ref in zip(gm(*args), fn(*args), strict=True):
        assert rel_err(got, ref) <= tolerance(torch.float32)
