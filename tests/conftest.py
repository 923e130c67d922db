"""CPU test suite configuration.

``tests/gpu`` holds the multi-GPU suite, which runs one process per GPU under torchrun
(``tests/gpu/run.sh``); a plain ``pytest tests`` collects it only under torchrun with CUDA.
``tests/emulated`` (world sizes 2/4/8 emulated on one GPU) is collected wherever CUDA is.
"""
from __future__ import annotations


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    try:
        return torch.cuda.is_available() and torch.cuda.device_count() >= 1
    except Exception:  # noqa: BLE001 - a broken driver counts as no GPU
        return False


import os

collect_ignore = ([] if "WORLD_SIZE" in os.environ else ["gpu"]) if _has_cuda() else ["gpu", "emulated"]
