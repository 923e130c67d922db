"""Where weave_nvshmem keeps files between processes, and the names it gives devices.

Every layer that stores something (the loader's cubins, the planner's tuning tables, the overlap
tuner's split choices) asks ``cache_dir()``; nothing else reads ``WEAVE_NVSHMEM_CACHE``.

Environment
-----------
``WEAVE_NVSHMEM_CACHE``
    Root of the cache (default ``~/.cache/weave_nvshmem``).
``WEAVE_NVSHMEM_TUNING``
    A tuning table to use instead of the shipped and installed ones (read by
    ``weave_nvshmem.collectives.tuning``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["cache_dir", "device_slug"]


def cache_dir() -> Path:
    """The cache root: ``$WEAVE_NVSHMEM_CACHE``, else ``~/.cache/weave_nvshmem``.

    Returns
    -------
    pathlib.Path
        The directory (not created here); callers add their own sub-path.
    """
    return Path(os.environ.get("WEAVE_NVSHMEM_CACHE", Path.home() / ".cache" / "weave_nvshmem"))


def device_slug(name: str) -> str:
    """File-name form of a device name.

    Parameters
    ----------
    name : str
        A CUDA device name, e.g. ``"NVIDIA H200"``.

    Returns
    -------
    str
        Lower case, runs of other characters as one ``-``: ``"nvidia-h200"``.
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
