"""init()'s error paths without a GPU: each missing piece raises its WeaveError subclass, the
message names it, and the environment is exactly as it was (NVSHMEM_DISABLE_NVLS not set)."""
from __future__ import annotations

import os
import sys
import types

import pytest

torch = pytest.importorskip("torch")

import weave_nvshmem as wn  # noqa: E402
from weave_nvshmem import errors, preflight  # noqa: E402

rt_mod = sys.modules["weave_nvshmem.memory.runtime"]
ERRORS = (errors.NoCudaDeviceError, errors.UnsupportedDeviceError, errors.MissingDependencyError,
          errors.PeersUnavailableError)


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """No runtime, no multicast default in the environment, no launcher variables."""
    monkeypatch.setattr(rt_mod, "_runtime", None)
    for name in ("NVSHMEM_DISABLE_NVLS", "LOCAL_RANK", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)


def gpu(monkeypatch, capability=(9, 0), count=1, name="NVIDIA H200"):
    """Make torch report ``count`` CUDA devices of ``capability`` (nothing else of CUDA is touched)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: name)


def init_fails(cls, *needles):
    """``wn.init()`` raises ``cls`` whose message holds every needle; the environment is unchanged."""
    before = dict(os.environ)
    with pytest.raises(cls) as info:
        wn.init()
    assert dict(os.environ) == before
    assert "NVSHMEM_DISABLE_NVLS" not in os.environ
    assert not wn.is_initialized()
    msg = str(info.value)
    assert msg.startswith("init: ") and "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return info.value


def test_error_classes_are_weave_errors():
    for cls in ERRORS:
        assert issubclass(cls, errors.WeaveError) and getattr(wn, cls.__name__) is cls
        assert cls.__name__ in wn.__all__
    assert issubclass(errors.MissingDependencyError, ImportError)


# ---- the GPU ------------------------------------------------------------------------------------
def test_torch_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    init_fails(errors.NoCudaDeviceError, "GPU", "built without CUDA", torch.__version__)


def test_cuda_torch_but_no_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    init_fails(errors.NoCudaDeviceError, "no CUDA device", "CUDA_VISIBLE_DEVICES=''", "driver")


def test_not_hopper(monkeypatch):
    gpu(monkeypatch, capability=(8, 0), name="NVIDIA A100-SXM4-80GB")
    init_fails(errors.UnsupportedDeviceError, "Hopper", "9.0", "A100", "8.0", "cuda:0")


def test_newer_than_hopper_is_refused_too(monkeypatch):
    gpu(monkeypatch, capability=(10, 0), name="NVIDIA B200")
    init_fails(errors.UnsupportedDeviceError, "sm_90a", "B200", "10.0")


def test_local_rank_out_of_range(monkeypatch):
    gpu(monkeypatch, count=2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    init_fails(errors.PeersUnavailableError, "LOCAL_RANK=3", "2 CUDA device(s)", "CUDA_VISIBLE_DEVICES='0,1'")


def test_local_rank_not_an_integer(monkeypatch):
    gpu(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", "zero")
    init_fails(errors.PeersUnavailableError, "LOCAL_RANK must be an integer", "(got 'zero')")


def test_the_local_rank_device_is_the_one_checked(monkeypatch):
    gpu(monkeypatch, count=4)
    seen = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: seen.append(i) or (9, 0))
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert preflight.require_gpu("bench allreduce") == 2 and seen == [2]


# ---- the libraries -----------------------------------------------------------------------------------
@pytest.mark.parametrize("module,requirement", [("nvshmem.core", "nvshmem4py-cu13"), ("cuda.core", "cuda-core"),
                                                ("cuda.bindings.driver", "cuda-bindings")])
def test_missing_module(monkeypatch, module, requirement):
    gpu(monkeypatch)
    monkeypatch.setitem(sys.modules, module, None)  # makes ``import module`` raise ImportError
    exc = init_fails(errors.MissingDependencyError, module, requirement, "pip install")
    assert exc.requirement.startswith(requirement) and isinstance(exc, ImportError)


def test_too_old_cuda_core(monkeypatch):
    gpu(monkeypatch)
    monkeypatch.setitem(sys.modules, "cuda.core", types.ModuleType("cuda.core"))  # exports nothing
    init_fails(errors.MissingDependencyError, "cuda.core has no Device", "too old", "cuda-core>=")


def test_missing_nvshmem_library(monkeypatch):
    gpu(monkeypatch)
    import cuda.pathfinder

    def not_found(name):
        raise cuda.pathfinder.DynamicLibNotFoundError(f"{name} not found")

    monkeypatch.setattr(cuda.pathfinder, "load_nvidia_dynamic_lib", not_found)
    init_fails(errors.MissingDependencyError, "libnvshmem_host", "nvidia-nvshmem-cu13", "not found")


# ---- the peers ------------------------------------------------------------------------------------
def test_launched_ranks_without_torch_distributed(monkeypatch):
    gpu(monkeypatch)
    monkeypatch.setattr(preflight, "require_dependencies", lambda op: None)
    monkeypatch.setenv("WORLD_SIZE", "4")
    init_fails(errors.PeersUnavailableError, "WORLD_SIZE=4", "init_process_group")


def test_group_without_torch_distributed(monkeypatch):
    gpu(monkeypatch)
    monkeypatch.setattr(preflight, "require_dependencies", lambda op: None)
    before = dict(os.environ)
    with pytest.raises(errors.PeersUnavailableError, match="process group was given"):
        wn.init(group=object())
    assert dict(os.environ) == before


def test_one_process_needs_no_peers(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    preflight.require_peers("init")


def test_world_size_not_an_integer(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(errors.PeersUnavailableError, match=r"WORLD_SIZE must be an integer \(got 'four'\)"):
        preflight.require_peers("init")


# ---- the order ----------------------------------------------------------------------------------
def test_gpu_is_named_before_the_libraries(monkeypatch):
    """On a CPU machine without NVSHMEM the first thing to fix is the GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "nvshmem.core", None)
    init_fails(errors.NoCudaDeviceError)


def test_real_cpu_machine():
    """This machine as it is (the CPU suite runs where no GPU is): a clear error, nothing changed."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    init_fails(errors.NoCudaDeviceError, "needs an NVIDIA Hopper GPU")


def test_emulated_world_names_the_missing_gpu(monkeypatch):
    from weave_nvshmem.collectives.emulated import EmulatedWorld

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(errors.NoCudaDeviceError, match="^EmulatedWorld: needs an NVIDIA Hopper GPU"):
        EmulatedWorld(2)


def test_as_cupy_without_cupy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(errors.MissingDependencyError, match=r"^as_cupy: needs CuPy") as info:
        wn.as_cupy(torch.zeros(4))
    assert info.value.requirement == "weave_nvshmem[cupy]" and "pip install 'weave_nvshmem[cupy]'" in str(info.value)
