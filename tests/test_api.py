"""The public API without a GPU: import, exports, errors before init, options, multicast gating."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import weave_nvshmem as wn
from weave_nvshmem import errors
from weave_nvshmem.collectives import communicator
from weave_nvshmem.memory.runtime import Runtime

# the modules themselves (weave_nvshmem.memory re-exports a *function* named runtime)
rt_mod = sys.modules["weave_nvshmem.memory.runtime"]
multicast = sys.modules["weave_nvshmem.memory.multicast"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def not_initialised(monkeypatch):
    """Every test starts (and ends) with no runtime and no default communicator."""
    monkeypatch.setattr(rt_mod, "_runtime", None)
    monkeypatch.setattr(communicator, "_default", None)


def test_import_without_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    code = "import weave_nvshmem as wn; print(wn.__version__, wn.is_initialized())"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0.1.0", "False"]


def test_version():
    assert wn.__version__ == "0.1.0"


def test_all_names_resolve():
    assert len(wn.__all__) == len(set(wn.__all__))
    for name in wn.__all__:
        assert getattr(wn, name) is not None, name
    for name in ("init", "finalize", "Communicator", "fused_allreduce_rmsnorm", "owned_rows", "PeerTimeoutError"):
        assert name in wn.__all__


def test_error_hierarchy():
    for cls in (errors.NotInitializedError, errors.CudaError, errors.HeapExhaustedError,
                errors.MulticastUnavailable, errors.PeerTimeoutError):
        assert issubclass(cls, errors.WeaveError) and issubclass(cls, RuntimeError)
    assert issubclass(errors.HeapExhaustedError, MemoryError)
    assert issubclass(errors.PeerTimeoutError, TimeoutError)
    e = errors.PeerTimeoutError("all_reduce", 3, 7, 2.5)
    assert (e.op, e.peer, e.cta) == ("all_reduce", 3, 7)
    assert "peer 3" in str(e) and "2.5 s" in str(e) and "all_reduce" in str(e)
    m = errors.MulticastUnavailable("because")
    assert m.reason == "because" and "because" in str(m)


# ---- before init ---------------------------------------------------------------------------

def _ops():
    torch = pytest.importorskip("torch")
    x = torch.zeros(4, 8)
    return {
        "all_reduce": lambda: wn.all_reduce(x),
        "reduce_scatter": lambda: wn.reduce_scatter(x),
        "all_gather": lambda: wn.all_gather(x),
        "fused_allreduce_rmsnorm": lambda: wn.fused_allreduce_rmsnorm(x, None, torch.ones(8)),
        "barrier": lambda: wn.barrier(),
        "Communicator": lambda: wn.Communicator(),
        "empty": lambda: wn.empty((4,)),
        "zeros": lambda: wn.zeros((4,), "bfloat16"),
        "multicast_unavailable_reason": lambda: wn.multicast_unavailable_reason(),
        "multicast_view": lambda: wn.multicast_view(x),
    }


@pytest.mark.parametrize("name", list(_ops()))
def test_ops_before_init_raise_not_initialized(name):
    with pytest.raises(errors.NotInitializedError, match=r"call weave_nvshmem\.init\(\)"):
        _ops()[name]()
    assert communicator._default is None  # a failed first use leaves no half-built default


def test_state_before_init():
    assert wn.is_initialized() is False
    assert wn.finalize() == []  # idempotent no-op


# ---- CommOptions -----------------------------------------------------------------------------

def test_comm_options_defaults_and_of():
    d = wn.CommOptions()
    assert d.timeout_s > 0 and 1 <= d.channels <= 8 and d.initial_bytes >= 16
    assert wn.CommOptions.of(None) == d
    assert wn.CommOptions.of(d) is d
    o = wn.CommOptions.of({"timeout_s": 2.5, "channels": 3})
    assert (o.timeout_s, o.channels, o.initial_bytes) == (2.5, 3, d.initial_bytes)


@pytest.mark.parametrize("kw", [{"timeout_s": 0}, {"timeout_s": -1.0}, {"timeout_s": math.nan},
                                {"channels": 0}, {"channels": 9}, {"initial_bytes": 15}, {"initial_bytes": -1}])
def test_comm_options_validation(kw):
    key, value = next(iter(kw.items()))
    with pytest.raises(ValueError, match=rf"CommOptions: {key} .*\(got "):
        wn.CommOptions(**kw)
    with pytest.raises(ValueError, match=r"\(got "):
        wn.CommOptions.of(kw)


@pytest.mark.parametrize("bad", [[("channels", 2)], "timeout_s=1", 5])
def test_comm_options_of_rejects_other_types(bad):
    with pytest.raises(TypeError, match=rf"\(got {type(bad).__name__}\)"):
        wn.CommOptions.of(bad)


def test_comm_options_frozen():
    with pytest.raises(Exception):
        wn.CommOptions().channels = 4  # type: ignore[misc]


# ---- multicast gating ------------------------------------------------------------------------

def _fake_runtime(monkeypatch, *, world=2, requested=True):
    monkeypatch.setattr(rt_mod, "_runtime", Runtime(rank=0, world=world, device_id=0, multicast_requested=requested))


def test_multicast_not_requested(monkeypatch):
    _fake_runtime(monkeypatch, requested=False)
    monkeypatch.delenv("NVSHMEM_DISABLE_NVLS", raising=False)
    reason = wn.multicast_unavailable_reason()
    assert reason and "multicast=True" in reason


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_multicast_refused_when_disabled_by_env(monkeypatch, value):
    _fake_runtime(monkeypatch)
    monkeypatch.setenv("NVSHMEM_DISABLE_NVLS", value)
    reason = wn.multicast_unavailable_reason()
    assert reason and "NVSHMEM_DISABLE_NVLS" in reason


def test_multicast_single_pe(monkeypatch):
    _fake_runtime(monkeypatch, world=1)
    monkeypatch.delenv("NVSHMEM_DISABLE_NVLS", raising=False)
    reason = wn.multicast_unavailable_reason()
    assert reason and "single PE" in reason


def test_multicast_may_be_tried(monkeypatch):
    # only the pure-Python gate: nothing here touches NVSHMEM or creates a multicast object
    _fake_runtime(monkeypatch, world=4)
    monkeypatch.delenv("NVSHMEM_DISABLE_NVLS", raising=False)
    assert multicast.unavailable_reason() is None


def test_multicast_view_raises_with_reason(monkeypatch):
    torch = pytest.importorskip("torch")
    _fake_runtime(monkeypatch)
    monkeypatch.setenv("NVSHMEM_DISABLE_NVLS", "1")
    with pytest.raises(errors.MulticastUnavailable) as info:
        wn.multicast_view(torch.zeros(4))
    assert "NVSHMEM_DISABLE_NVLS" in info.value.reason


# ---- init's environment default ---------------------------------------------------------------

def test_default_multicast_env_sets_only_when_unset():
    env = {}
    rt_mod._default_multicast_env(False, env)
    assert env == {"NVSHMEM_DISABLE_NVLS": "1"}
    env = {"NVSHMEM_DISABLE_NVLS": "true"}
    rt_mod._default_multicast_env(False, env)
    assert env == {"NVSHMEM_DISABLE_NVLS": "true"}  # never overridden
    env = {}
    rt_mod._default_multicast_env(True, env)
    assert env == {}  # opt-in: left to NVSHMEM
    env = {"NVSHMEM_DISABLE_NVLS": "1"}
    rt_mod._default_multicast_env(True, env)
    assert env == {"NVSHMEM_DISABLE_NVLS": "1"}  # and then unavailable_reason() refuses


def test_default_multicast_env_uses_os_environ(monkeypatch):
    monkeypatch.delenv("NVSHMEM_DISABLE_NVLS", raising=False)
    rt_mod._default_multicast_env(False)
    assert os.environ["NVSHMEM_DISABLE_NVLS"] == "1"


class _Stop(Exception):
    pass


@pytest.mark.parametrize("multicast_flag", [False, True])
def test_init_applies_env_default_right_after_preflight(monkeypatch, multicast_flag):
    pytest.importorskip("torch")
    from weave_nvshmem import preflight

    monkeypatch.setattr(preflight, "check_init", lambda op, group: 0)  # tests/test_errors.py: when they fail
    seen = []

    def spy(multicast, environ=None):
        seen.append(multicast)
        raise _Stop

    monkeypatch.setattr(rt_mod, "_default_multicast_env", spy)
    with pytest.raises(_Stop):
        wn.init(multicast=multicast_flag)
    assert seen == [multicast_flag]
    assert not wn.is_initialized()


def test_session_is_a_context_manager():
    s = wn.session(multicast=False)
    assert hasattr(s, "__enter__") and hasattr(s, "__exit__")
