"""init() once the preflight checks pass: the multicast default is set then (never before, never
over a value already there), and the device the checks chose is the one bound."""
from __future__ import annotations

import os
import sys

import pytest

torch = pytest.importorskip("torch")

import weave_nvshmem as wn  # noqa: E402
from weave_nvshmem import preflight  # noqa: E402

rt_mod = sys.modules["weave_nvshmem.memory.runtime"]


class _Stop(Exception):
    """Raised where init would start talking to CUDA, to end the test there."""


@pytest.fixture
def passing_checks(monkeypatch):
    """Preflight passes with device 3; binding the device records it and stops init."""
    bound = []
    monkeypatch.setattr(rt_mod, "_runtime", None)
    monkeypatch.setattr(preflight, "check_init", lambda op, group: 3)

    def set_device(index):
        bound.append(index)
        raise _Stop

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    return bound


def test_sets_the_multicast_default_after_the_checks(monkeypatch, passing_checks):
    monkeypatch.delenv("NVSHMEM_DISABLE_NVLS", raising=False)
    with pytest.raises(_Stop):
        wn.init()
    assert os.environ["NVSHMEM_DISABLE_NVLS"] == "1"
    assert passing_checks == [3]  # the checked device is the bound one


@pytest.mark.parametrize("value", ["0", "1", "yes"])
def test_never_overrides_a_value(monkeypatch, passing_checks, value):
    monkeypatch.setenv("NVSHMEM_DISABLE_NVLS", value)
    with pytest.raises(_Stop):
        wn.init()
    assert os.environ["NVSHMEM_DISABLE_NVLS"] == value


def test_multicast_opt_in_leaves_it_unset(monkeypatch, passing_checks):
    monkeypatch.delenv("NVSHMEM_DISABLE_NVLS", raising=False)
    with pytest.raises(_Stop):
        wn.init(multicast=True)
    assert "NVSHMEM_DISABLE_NVLS" not in os.environ


def test_checks_run_before_the_environment_is_touched(monkeypatch):
    monkeypatch.setattr(rt_mod, "_runtime", None)
    monkeypatch.delenv("NVSHMEM_DISABLE_NVLS", raising=False)
    order = []
    monkeypatch.setattr(preflight, "check_init", lambda op, group: order.append("checks") or 0)

    def env_default(multicast):
        order.append("env")
        raise _Stop

    monkeypatch.setattr(rt_mod, "_default_multicast_env", env_default)
    with pytest.raises(_Stop):
        wn.init()
    assert order == ["checks", "env"]


def test_session_raises_the_same(monkeypatch):
    monkeypatch.setattr(rt_mod, "_runtime", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(wn.NoCudaDeviceError):
        with wn.session():
            pass
