"""torch.ops.weave_nvshmem without a GPU: schemas, fake kernels, the CPU reference kernels against
float64 math, the current communicator, and the module-level ops' signatures and docstrings."""
from __future__ import annotations

import inspect
import re

import pytest

torch = pytest.importorskip("torch")

import weave_nvshmem as wn  # noqa: E402
from weave_nvshmem import testing  # noqa: E402
from weave_nvshmem.collectives import communicator, ops  # noqa: E402

OPS = torch.ops.weave_nvshmem
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
EPS = 1e-6


@pytest.fixture(autouse=True)
def no_default(monkeypatch):
    monkeypatch.setattr(communicator, "_default", None)


def inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, r = (torch.randn(shape, generator=g).to(dtype) for _ in range(2))
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(dtype)
    return x, r, w


# ---- schemas ----------------------------------------------------------------------------------------
def test_mutating_schema_marks_residual_written():
    schema = str(OPS.fused_allreduce_rmsnorm.default._schema)
    assert re.search(r"Tensor\(a\d*!\) residual", schema), schema
    assert schema.endswith("-> Tensor")


def test_functional_schema_mutates_nothing():
    schema = OPS.fused_allreduce_rmsnorm_functional.default._schema
    assert not any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
    assert str(schema).endswith("-> (Tensor, Tensor)")


@pytest.mark.parametrize("name,args", [
    ("all_reduce", lambda: (torch.randn(5, 7),)),
    ("reduce_scatter", lambda: (torch.randn(4, 8), 1)),
    ("all_gather", lambda: (torch.randn(4, 8), 1)),
    ("fused_allreduce_rmsnorm", lambda: inputs((3, 5, 16), torch.float32)),
    ("fused_allreduce_rmsnorm_functional", lambda: inputs((3, 5, 16), torch.float32)),
])
def test_opcheck(name, args):
    """torch's own consistency checks: schema vs. behaviour, fake kernel vs. real, tracing."""
    torch.library.opcheck(getattr(OPS, name).default, args())


# ---- CPU reference kernels ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 8), (7, 64), (2, 3, 48)])
def test_functional_reference_matches_float64(dtype, shape):
    x, r, w = inputs(shape, dtype)
    r0 = r.clone()
    out, new = OPS.fused_allreduce_rmsnorm_functional(x, r, w, EPS)
    ref_out, ref_res = testing.reference_fused([x], r, w, EPS)
    assert torch.equal(r, r0)  # the functional form writes nothing
    assert out.shape == shape and new.shape == shape and out.dtype == dtype and new.dtype == dtype
    assert torch.equal(new, ref_res)
    assert testing.rel_err(out, ref_out) <= testing.tolerance(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mutating_reference_updates_residual(dtype):
    x, r, w = inputs((6, 32), dtype, seed=3)
    expected_out, expected_res = OPS.fused_allreduce_rmsnorm_functional(x, r, w, EPS)
    out = OPS.fused_allreduce_rmsnorm(x, r, w, EPS)
    assert torch.equal(r, expected_res) and torch.equal(out, expected_out)


def test_sharded_equals_replicated_at_one_rank():
    x, r, w = inputs((5, 16), torch.float32)
    x0 = x.clone()
    a = OPS.fused_allreduce_rmsnorm_functional(x, r, w, EPS, "sharded")
    b = OPS.fused_allreduce_rmsnorm_functional(x, r, w, EPS, "replicated")
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert torch.equal(x, x0)  # inputs are never written


def test_reference_collectives_at_one_rank():
    x = torch.randn(4, 8)
    for y in (OPS.all_reduce(x), OPS.reduce_scatter(x, 1), OPS.all_gather(x, 1)):
        assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


def test_reference_rejects_a_world_it_is_not_in():
    with pytest.raises(ValueError, match=r"reduce_scatter .*world=2.*\(got world=2\)"):
        OPS.reduce_scatter(torch.randn(4, 8), 2)


@pytest.mark.parametrize("bad,match", [
    (lambda x, r, w: (x, r[:, :8], w), "residual must have x's shape"),
    (lambda x, r, w: (x, r, w[:8]), r"weight must be \[16\]"),
])
def test_fused_shape_errors_name_the_argument(bad, match):
    args = bad(*inputs((4, 16), torch.float32))
    with pytest.raises(ValueError, match=match):
        OPS.fused_allreduce_rmsnorm_functional(*args)
    with pytest.raises(ValueError, match=match):  # the fake kernel says the same while tracing
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            OPS.fused_allreduce_rmsnorm_functional(*(mode.from_tensor(a) for a in args))


# ---- the current communicator -------------------------------------------------------------------
class Recorder:
    """Stands in for a Communicator: records what the module-level ops pass on."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kw: self.calls.append((name, args, kw)) or name


def test_use_communicator_sets_the_current_one():
    rec = Recorder()
    with pytest.raises(wn.NotInitializedError):
        ops.current_communicator()  # the default needs init()
    with wn.use_communicator(rec) as got:
        assert got is rec and wn.current_communicator() is rec
        inner = Recorder()
        with wn.use_communicator(inner):
            assert ops.current_communicator() is inner
        assert ops.current_communicator() is rec
    with pytest.raises(wn.NotInitializedError):
        ops.current_communicator()


def test_gpu_scatter_gather_check_the_traced_world():
    class TwoRanks:
        world = 2

    with wn.use_communicator(TwoRanks()):
        assert ops._of_world("all_gather", 2).world == 2
        with pytest.raises(ValueError, match=r"all_gather: world=4 but the current communicator has 2"):
            ops._of_world("all_gather", 4)


def test_module_level_ops_pass_every_argument_on():
    rec = Recorder()
    with wn.use_communicator(rec):
        assert wn.all_reduce("x", out="o", algorithm="oneshot", ctas=3, channel=1, stream="s") == "all_reduce"
        wn.reduce_scatter("x", out="o", ctas=2, channel=1, stream="s")
        wn.all_gather("x", algorithm="pull", ctas=4)
        wn.fused_allreduce_rmsnorm("x", "r", "w", 1e-5, residual_mode="sharded", algorithm="twoshot", ctas=8,
                                   out="o", channel=1, stream="s")
        wn.barrier(channel=1, timeout=2.0)
    assert rec.calls == [
        ("all_reduce", ("x",), dict(out="o", algorithm="oneshot", ctas=3, channel=1, stream="s")),
        ("reduce_scatter", ("x",), dict(out="o", algorithm="auto", ctas=2, channel=1, stream="s")),
        ("all_gather", ("x",), dict(out=None, algorithm="pull", ctas=4, channel=0, stream=None)),
        ("fused_allreduce_rmsnorm", ("x", "r", "w", 1e-5),
         dict(residual_mode="sharded", algorithm="twoshot", ctas=8, out="o", channel=1, stream="s")),
        ("barrier", (), dict(channel=1, timeout=2.0, stream=None)),
    ]


# ---- module-level signatures and docstrings ---------------------------------------------------------
MODULE_OPS = ("all_reduce", "reduce_scatter", "all_gather", "fused_allreduce_rmsnorm", "barrier")


def _params(fn, drop_self=False):
    ps = list(inspect.signature(fn).parameters.values())[1 if drop_self else 0:]
    return [(p.name, p.kind, p.default) for p in ps]


@pytest.mark.parametrize("name", MODULE_OPS)
def test_module_level_signature_matches_communicator(name):
    """The same parameters, the async keywords included (collectives/work.py)."""
    assert _params(getattr(wn, name)) == _params(getattr(wn.Communicator, name), drop_self=True)


@pytest.mark.parametrize("name", MODULE_OPS)
def test_module_level_docstring_documents_every_parameter(name):
    doc = inspect.getdoc(getattr(wn, name))
    assert "Parameters\n----------" in doc and "See Also" in doc
    params = doc.split("Parameters\n----------")[1]
    for p in inspect.signature(getattr(wn, name)).parameters:
        assert re.search(rf"^{p} :", params, re.M), f"{name}: parameter {p} is not documented"
    if name != "barrier":
        assert "``[" in doc or "Any shape" in doc  # shapes in backticks
        assert "``bfloat16``" in doc
