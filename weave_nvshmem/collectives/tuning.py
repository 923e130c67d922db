"""Tuning tables: their format, where they live, how they merge, and the pick ``auto`` takes.

Format
------
A table maps op -> world size (a string) -> rows sorted by ``bytes``::

    {"all_reduce": {"2": [{"bytes": 16384, "algorithm": "lamport", "ctas": 2}, ...]},
     "fused_allreduce_rmsnorm": {"2": [...]}}

A row says: inputs of up to ``bytes`` bytes (and more than the previous row's) run ``algorithm``
on ``ctas`` CTAs. The shipped file (``tuning.json`` beside this module) holds one such table per
device model, keyed by ``settings.device_slug`` of its name, plus ``"_source"``: {slug: {world: how
it was measured}}.

Where tables live, and which wins
---------------------------------
- ``$WEAVE_NVSHMEM_TUNING``: if set, that file alone is the table (shipped and own ignored);
- else the machine's own table, ``settings.cache_dir() / "tuning" / "<device slug>.json"``
  (``install`` writes it), which takes precedence per (op, world) over
- the shipped table of this device model.

Files are read once per path and process (``clear_cache`` after writing one; ``install`` does).
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..ptx.catalog import MAX_CTAS
from ..settings import cache_dir, device_slug

__all__ = ["SHIPPED", "Pick", "own_path", "read", "pick", "merge", "install", "clear_cache"]

#: the tables measured for the package, per device model
SHIPPED = Path(__file__).with_name("tuning.json")
#: ops that have tables
OPS = ("all_reduce", "fused_allreduce_rmsnorm")


@dataclass(frozen=True)
class Pick:
    """A tuning-table row that applies: run ``algorithm`` on ``ctas`` CTAs, because of ``row`` of
    the table in ``source``."""

    algorithm: str
    ctas: int
    row: dict
    source: str

    def __str__(self) -> str:
        return f"tuning row {{bytes <= {self.row['bytes']}: {self.algorithm} x {self.ctas} CTAs}} of {self.source}"


@functools.lru_cache(maxsize=8)
def _device_name(index: int) -> str:
    import torch

    return torch.cuda.get_device_name(index)


def _current_slug() -> str | None:
    """Slug of this process's CUDA device model; None without torch or CUDA."""
    try:
        import torch

        return device_slug(_device_name(torch.cuda.current_device())) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no torch / no CUDA: built-in rules
        return None


def own_path() -> Path | None:
    """The table this process reads and ``install`` writes: ``$WEAVE_NVSHMEM_TUNING``, else
    ``cache_dir()/tuning/<device slug>.json``; None without CUDA. Every rank of a homogeneous
    node gets the same file."""
    path = os.environ.get("WEAVE_NVSHMEM_TUNING")
    if path:
        return Path(path)
    slug = _current_slug()
    return None if slug is None else cache_dir() / "tuning" / f"{slug}.json"


@functools.lru_cache(maxsize=8)
def _load(path: Path | None) -> dict:
    return json.loads(path.read_text()) if path is not None and path.exists() else {}


def clear_cache() -> None:
    """Forget the files read so far (after one was written, or the device/environment changed)."""
    _load.cache_clear()
    _device_name.cache_clear()


def _sources() -> dict:
    """{op: {world: (rows, source)}} after the precedence rules above."""
    path = own_path()
    own = {op: {w: (rows, str(path)) for w, rows in v.items()} for op, v in _load(path).items()}
    if os.environ.get("WEAVE_NVSHMEM_TUNING"):
        return own
    slug = _current_slug() or ""
    shipped = {op: {w: (rows, f"shipped table {slug}") for w, rows in v.items()}
               for op, v in _load(SHIPPED).get(slug, {}).items()}
    return {op: {**shipped.get(op, {}), **own.get(op, {})} for op in set(shipped) | set(own)}


def read() -> dict:
    """The table ``auto`` follows in this process, in the format above ({} if none)."""
    return {op: {w: rows for w, (rows, _) in v.items()} for op, v in _sources().items()}


def pick(op: str, world: int, nbytes: int, algorithms) -> Pick | None:
    """The row of the smallest measured size >= ``nbytes`` for (``op``, ``world``), if valid.

    Parameters
    ----------
    op : str
        ``"all_reduce"`` or ``"fused_allreduce_rmsnorm"``.
    world : int
        World size.
    nbytes : int
        Input bytes of the call.
    algorithms : collection of str
        Algorithm names the caller can run; a row naming another (a stale or foreign table), or a
        CTA count outside 1..MAX_CTAS, gives None: the built-in rules decide.

    Returns
    -------
    Pick or None
        None also beyond the largest measured size and for unmeasured (op, world).
    """
    rows, source = _sources().get(op, {}).get(str(world), ([], ""))
    for row in sorted(rows, key=lambda r: r["bytes"]):
        if nbytes <= row["bytes"]:
            ok = row.get("algorithm") in algorithms and isinstance(row.get("ctas"), int) \
                and 1 <= row["ctas"] <= MAX_CTAS
            return Pick(row["algorithm"], row["ctas"], row, source) if ok else None
    return None


def merge(previous: dict | None, rows: list, world: int) -> dict:
    """``previous`` (a table) with the world-``world`` rows of each op replaced by ``rows``' picks.

    Parameters
    ----------
    previous : dict or None
        A table in the format above; other world sizes and ops are kept.
    rows : list of dict
        The tune command's results: ``{"op", "bytes", "algorithm", "ctas"}`` each (rows without an
        ``algorithm``, e.g. ``{"error": ...}``, are skipped).
    world : int
        The world size they were measured at.
    """
    table = {op: dict(v) for op, v in (previous or {}).items()}
    for op in OPS:
        picks = [{"bytes": r["bytes"], "algorithm": r["algorithm"], "ctas": r["ctas"]}
                 for r in rows if r["op"] == op and r.get("algorithm")]
        if picks:
            table.setdefault(op, {})[str(world)] = sorted(picks, key=lambda r: r["bytes"])
    return table


def install(rows: list, world: int) -> Path:
    """Merge the tune picks ``rows`` (see ``merge``) into ``own_path()`` (atomic rename) and make
    this process read it. Returns the path; RuntimeError without a CUDA device."""
    path = own_path()
    if path is None:
        raise RuntimeError("tune: no CUDA device, nowhere to install the table")
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() else {}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(merge(previous, rows, world), indent=1, sort_keys=True))
    os.replace(tmp, path)
    clear_cache()
    return path
