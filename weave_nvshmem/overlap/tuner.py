"""Measured refinement of the split plan, cached per device and shape, the same on every rank.

The planner's candidates are few (fused, plain, a handful of splits, each optionally at a few CTA
budgets and collective algorithms: ``split.variants``); ``SplitTuner.choose`` times
each with a caller-supplied ``measure`` (a CUDA-graph replay of the layer, say), keeps rank 0's
choice (broadcast, so every rank runs the same schedule) and remembers it in a JSON file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..settings import cache_dir
from .split import Candidate


def _default_path() -> Path:
    return cache_dir() / "splits.json"


class SplitTuner:
    """``broadcast(obj) -> obj`` returns rank 0's object on every rank (identity for one process)."""

    def __init__(self, device: str, *, path: Path | str | None = None, broadcast=None, rank: int = 0):
        self.device = device
        self.path = Path(path) if path else _default_path()
        self.broadcast = broadcast or (lambda obj: obj)
        self.rank = rank
        self._cache = json.loads(self.path.read_text()) if self.path.exists() else {}

    def key(self, **shape) -> str:
        return self.device + "|" + ",".join(f"{k}={shape[k]}" for k in sorted(shape))

    def cached(self, key: str) -> Candidate | None:
        hit = self._cache.get(key)
        return Candidate(hit["mode"], hit["split"], hit.get("ctas"), hit.get("algorithm", "auto")) if hit else None

    def choose(self, key: str, cands: list[Candidate], measure) -> Candidate:
        """The fastest of ``cands`` by ``measure(candidate) -> us`` (rank 0's verdict), cached."""
        if not cands:
            raise ValueError("SplitTuner.choose: no candidates")
        hit = self.cached(key)
        if hit is not None:
            return hit
        times = {c: float(measure(c)) for c in cands}
        best = min(cands, key=lambda c: (times[c], cands.index(c)))
        chosen = Candidate(*self.broadcast((best.mode, best.split, best.ctas, best.algorithm)))
        self._cache[key] = {"mode": chosen.mode, "split": chosen.split, "ctas": chosen.ctas,
                            "algorithm": chosen.algorithm, "measured_us": {c.label: times[c] for c in cands}}
        if self.rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._cache, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        return chosen
