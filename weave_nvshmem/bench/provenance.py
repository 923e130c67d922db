"""Where a benchmark figure comes from: device, world size, commit, package versions, environment.

Every result document (``report.write_outputs``) starts from ``describe``, so a table can always be
traced back to the machine and the commit that produced it.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

#: environment variables that change what a collective does, kept in every document
ENV_PREFIXES = ("NCCL_", "NVSHMEM_", "TORCH_SYMM_MEM", "TORCH_NCCL", "CUDA_VISIBLE", "CUDA_DEVICE_MAX", "WEAVE_NVSHMEM")


def git_commit() -> str:
    """``$WEAVE_NVSHMEM_COMMIT`` if set (a tree copied without ``.git``), else the checkout's HEAD,
    else ``"unknown"``."""
    if os.environ.get("WEAVE_NVSHMEM_COMMIT"):
        return os.environ["WEAVE_NVSHMEM_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def device_slug(name: str) -> str:
    """File-name form of a device name ("NVIDIA H200" -> "nvidia-h200"; "unknown" if empty)."""
    from ..settings import device_slug as slug

    return slug(name) or "unknown"


def dist_version(*names: str) -> str | None:
    """"name version" of the first installed distribution among ``names``, or None."""
    for n in names:
        try:
            return f"{n} {metadata.version(n)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict:
    """Python, torch, CUDA, NCCL, NVSHMEM, cuda-core and weave_nvshmem versions (strings)."""
    import torch

    from .. import __version__

    v = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
         "weave_nvshmem": __version__}
    try:
        v["nccl"] = ".".join(str(x) for x in torch.cuda.nccl.version())
    except Exception as exc:  # noqa: BLE001 - a CPU build has no NCCL
        v["nccl"] = f"unknown ({type(exc).__name__})"
    v["nvshmem"] = dist_version("nvshmem4py-cu13", "nvshmem4py-cu12", "nvshmem4py", "nvidia-nvshmem-cu13",
                                "nvidia-nvshmem-cu12")
    v["cuda_core"] = dist_version("cuda-core", "cuda_core")
    v["triton"] = dist_version("triton")
    return v


def env_snapshot() -> dict:
    """The environment variables of ``ENV_PREFIXES``, sorted."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}


def describe(name: str, device: str, world: int, *, emulated: bool = False) -> dict:
    """The provenance fields of a result document ``name`` measured on ``world`` x ``device``.

    ``emulated``: the ranks were an ``EmulatedWorld`` on one GPU (the report then gives ratios of
    our kernels to each other only, never link figures).
    """
    return {"name": name, "device": device, "device_slug": device_slug(device), "world_size": world,
            "emulated": emulated, "git_commit": git_commit(), "versions": versions(), "env": env_snapshot(),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat()}
