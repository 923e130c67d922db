"""What an inference engine runs, as the one set of baselines every benchmark compares with.

* **Fused add + RMSNorm** (``FusedAddRMSNorm``, shared instance ``fused_add_rmsnorm``): the fastest
  candidate on this device for each (tokens, hidden, dtype, residual or not), chosen by measurement
  among an Inductor-compiled formula, an Inductor-compiled ``F.rms_norm``, eager ``residual.add_`` +
  ``F.rms_norm``, and vLLM's / FlashInfer's kernels when they are importable. The choice is made once
  per shape, cached, and its record (which candidate, every candidate's time) goes into the JSON.
* **All-reduce**: NCCL (``dist.all_reduce``, captured in the same CUDA graph as ours) and torch
  SymmetricMemory's one-shot / two-shot ops, labelled as such.
* ``nccl_window_status`` / ``symm_fused_ops`` say whether this torch offers NCCL on a registered
  symmetric window or a fused SymmetricMemory all-reduce + norm, and why not.

Every candidate has the contract of ``Communicator.fused_allreduce_rmsnorm`` at world 1:
``fn(x, residual, weight, eps) -> (out, new_residual)`` with ``new_residual = x + residual`` and
``out = rms_norm(new_residual) * weight``; ``x`` may be overwritten (in-place kernels write ``out``
there) and the new residual may be ``residual`` updated in place or a new tensor: callers use the
returned tensors. With ``residual=None`` it normalises ``x`` and returns ``(out, x)``.

``INDUCTOR_IN_PLACE`` is a reference, not a candidate: the Inductor formula with the residual updated
in place, the contract of our kernel (an engine's residual stream lives in one buffer), which the
norm suite times beside the candidates so that a gap between ours and theirs can be told apart from
a gap between the two contracts.
"""
from __future__ import annotations

import inspect

#: candidates in the order they are tried; the default runs where nothing was measured (CPU, tests)
NORM_CANDIDATES = ("inductor_formula", "inductor_rms_norm", "eager_rms_norm", "vllm", "flashinfer")
DEFAULT_NORM = "eager_rms_norm"
INDUCTOR = ("inductor_formula", "inductor_rms_norm")
INDUCTOR_IN_PLACE = "inductor_in_place"
NORM_LABELS = {"inductor_formula": "Inductor (formula)", "inductor_rms_norm": "Inductor (F.rms_norm)",
               "eager_rms_norm": "eager add_ + F.rms_norm", "vllm": "vLLM fused_add_rms_norm",
               "flashinfer": "FlashInfer fused_add_rmsnorm", INDUCTOR_IN_PLACE: "Inductor (formula, residual in place)"}


class Unavailable(Exception):
    """A candidate cannot run here (not installed, no such op); the message says why."""


# ---- fused add + RMSNorm candidates --------------------------------------------------------
def _formula(x, residual, weight, eps: float):
    import torch

    s = x if residual is None else x + residual
    sf = s.float()
    # compiled by Inductor (torch.compile fullgraph=True, dynamic=False) into one kernel; never run eagerly
    out = (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)
    return out, s


def _formula_in_place(x, residual, weight, eps: float):
    out, s = _formula(x, residual, weight, eps)
    if residual is None:
        return out, s
    residual.copy_(s)  # Inductor stores s into the residual from the same kernel
    return out, residual


def _compiled_rms_norm(x, residual, weight, eps: float):
    import torch.nn.functional as F

    s = x if residual is None else x + residual
    return F.rms_norm(s, (s.shape[-1],), weight, eps), s


def _eager(x, residual, weight, eps: float):
    import torch.nn.functional as F

    s = x if residual is None else residual.add_(x)
    return F.rms_norm(s, (s.shape[-1],), weight, eps), s


def _compile(fn):
    """``torch.compile(fn, fullgraph=True, dynamic=False)``: one static-shape graph per shape, as an
    engine compiles one per CUDA-graph capture size (the recompile limit is raised to allow that)."""
    import torch
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 4096))
    return torch.compile(fn, fullgraph=True, dynamic=False)


def _vllm():
    try:
        import torch
        import vllm._C  # noqa: F401 - registers torch.ops._C
    except Exception as exc:  # noqa: BLE001 - any import failure means "cannot run here"
        raise Unavailable(f"not installed ({type(exc).__name__}: {exc})") from None
    ops = torch.ops._C

    def fn(x, residual, weight, eps):
        if residual is None:
            out = torch.empty_like(x)
            ops.rms_norm(out, x, weight, eps)
            return out, x
        ops.fused_add_rms_norm(x, residual, weight, eps)  # x <- out, residual <- x + residual
        return x, residual

    return fn


def _flashinfer():
    try:
        import flashinfer.norm as fin
    except Exception as exc:  # noqa: BLE001
        raise Unavailable(f"not installed ({type(exc).__name__}: {exc})") from None

    def fn(x, residual, weight, eps):
        if residual is None:
            return fin.rmsnorm(x, weight, eps), x
        fin.fused_add_rmsnorm(x, residual, weight, eps)  # residual <- x + residual, x <- out
        return x, residual

    return fn


def make_candidate(name: str):
    """The callable of candidate ``name`` (a fresh compiled function for the Inductor ones), or
    ``Unavailable`` saying why it cannot run here."""
    if name == "inductor_formula":
        return _compile(_formula)
    if name == "inductor_rms_norm":
        return _compile(_compiled_rms_norm)
    if name == INDUCTOR_IN_PLACE:
        return _compile(_formula_in_place)
    if name == "eager_rms_norm":
        return _eager
    if name == "vllm":
        return _vllm()
    if name == "flashinfer":
        return _flashinfer()
    raise ValueError(f"fused_add_rmsnorm: unknown candidate {name!r} (expected one of {NORM_CANDIDATES} "
                     f"or {INDUCTOR_IN_PLACE!r})")


def pick_fastest(times: dict) -> str | None:
    """The candidate with the smallest time in ``times`` {name: us (float) or why not (str/None)};
    ties go to the earlier name in ``NORM_CANDIDATES``; None if none ran."""
    ran = {k: v for k, v in times.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0}
    if not ran:
        return None
    order = {n: i for i, n in enumerate(NORM_CANDIDATES)}
    return min(ran, key=lambda k: (ran[k], order.get(k, len(order))))


def norm_key(tokens: int, hidden: int, dtype, residual: bool) -> tuple:
    """Cache key of a choice: (tokens, hidden, dtype name, residual given)."""
    return int(tokens), int(hidden), str(dtype).replace("torch.", ""), bool(residual)


class FusedAddRMSNorm:
    """The shared fused add + RMSNorm baseline: per shape, the fastest candidate by measurement.

    ``choose(...)`` measures every candidate once per key and caches the winner; calling the
    object runs the chosen candidate for ``x``'s shape (``DEFAULT_NORM`` where nothing was chosen,
    e.g. on the CPU). ``records()`` is what the JSON stores.
    """

    def __init__(self, candidates=NORM_CANDIDATES):
        self.candidates = tuple(candidates)
        self._records = {}  # key -> {"chosen", "us", "label"}
        self._fns = {}  # (key, name) -> callable

    def fn(self, name: str, key: tuple):
        """Candidate ``name``'s callable for ``key`` (made once; ``Unavailable`` if it cannot run)."""
        if (key, name) not in self._fns:
            self._fns[(key, name)] = make_candidate(name)
        return self._fns[(key, name)]

    def choose(self, tokens: int, hidden: int, dtype, timer, *, residual: bool = True, decide=None) -> dict:
        """Measure every candidate once for this key and keep the fastest (cached per key).

        Parameters
        ----------
        tokens, hidden : int
            The shape ``[tokens, hidden]`` of ``x`` and the residual.
        dtype : torch.dtype
            Of x, residual and weight.
        timer : callable
            ``timer(fn) -> float`` (us per call) or ``str`` (why it failed), with ``fn`` a candidate
            of the contract in the module docstring.
        residual : bool
            Whether the calls take a residual (False: the first layer's norm).
        decide : callable, optional
            Maps this process's record to the one every rank uses (``Harness.rank0``), so all
            ranks run the same kernel.

        Returns
        -------
        dict
            ``{"chosen": name or None, "label": str, "us": {name: us or why not}}``.
        """
        key = norm_key(tokens, hidden, dtype, residual)
        if key in self._records:
            return self._records[key]
        times = {}
        for name in self.candidates:
            try:
                fn = self.fn(name, key)
            except Unavailable as exc:
                times[name] = str(exc)
                continue
            times[name] = timer(fn)
        chosen = pick_fastest(times)
        rec = {"chosen": chosen, "label": NORM_LABELS.get(chosen, "none ran"), "us": times}
        if decide is not None:
            rec = decide(rec)
        self._records[key] = rec
        return rec

    def records(self) -> list:
        """Every choice made so far: ``[{"tokens", "hidden", "dtype", "residual", "chosen", "label", "us"}]``."""
        return [dict(zip(("tokens", "hidden", "dtype", "residual"), k), **rec) for k, rec in self._records.items()]

    def chosen_name(self, x, residual) -> str:
        """The candidate that runs for ``x`` [tokens, hidden] (with or without ``residual``)."""
        rec = self._records.get(norm_key(x.shape[0], x.shape[-1], x.dtype, residual is not None))
        return rec["chosen"] if rec and rec["chosen"] else DEFAULT_NORM

    def __call__(self, x, residual, weight, eps: float):
        """Fused residual add + RMSNorm by the candidate chosen for ``x``'s shape.

        Parameters
        ----------
        x : torch.Tensor
            ``[tokens, hidden]``, bf16/fp16/fp32; may be overwritten (in-place kernels write ``out`` there).
        residual : torch.Tensor or None
            ``[tokens, hidden]``, same dtype; may be updated in place. None: normalise ``x`` alone.
        weight : torch.Tensor
            ``[hidden]``, same dtype.
        eps : float
            Added to the mean square.

        Returns
        -------
        (out, new_residual) : tuple of torch.Tensor
            ``rms_norm(x + residual) * weight`` and ``x + residual`` (``x`` itself without a residual),
            both ``[tokens, hidden]``; use these, not the arguments.
        """
        key = norm_key(x.shape[0], x.shape[-1], x.dtype, residual is not None)
        return self.fn(self.chosen_name(x, residual), key)(x, residual, weight, eps)


#: the instance the microbenchmarks, the layer benchmark and the examples share
fused_add_rmsnorm = FusedAddRMSNorm()


# ---- all-reduce baselines ------------------------------------------------------------------
def nccl_all_reduce(x, group=None):
    """NCCL sum of ``x`` over the group, in place (``torch.distributed.all_reduce``); returns ``x``.
    At world 1 it does nothing: its time there is launch overhead, not a link figure."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.all_reduce(x, group=group)
    return x


def symm_two_shot(y, group_name: str):
    """torch SymmetricMemory two-shot all-reduce of the symmetric tensor ``y``, in place."""
    import torch

    torch.ops.symm_mem.two_shot_all_reduce_(y, "sum", group_name)
    return y


def symm_one_shot(y, group_name: str):
    """torch SymmetricMemory one-shot all-reduce of ``y`` into a new tensor."""
    import torch

    return torch.ops.symm_mem.one_shot_all_reduce(y, "sum", group_name)


def then_norm(all_reduce, norm=fused_add_rmsnorm):
    """``fn(x, residual, weight, eps)``: ``all_reduce(x)`` (returns the reduced tensor), then the
    shared fused add + RMSNorm: an engine's unfused-collective path."""
    def fn(x, residual, weight, eps):
        return norm(all_reduce(x), residual, weight, eps)

    return fn


def symm_fused_ops() -> list:
    """Names of torch SymmetricMemory ops that fuse a norm into the all-reduce (none in torch 2.11)."""
    try:
        import torch

        return sorted(n for n in dir(torch.ops.symm_mem) if "norm" in n)
    except Exception:  # noqa: BLE001 - no symm_mem library in this build
        return []


def nccl_window_status() -> dict:
    """Whether this torch exposes NCCL on a registered symmetric window, and how or why not."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError as exc:
        return {"available": False, "reason": f"no torch.distributed ({exc})"}
    params = inspect.signature(torch.cuda.MemPool.__init__).parameters if hasattr(torch.cuda, "MemPool") else {}
    pg = getattr(dist, "ProcessGroupNCCL", None)
    if pg is not None and hasattr(pg, "register_mem_pool") and ("symmetric" in params or "symm_mem" in params):
        return {"available": True, "reason": "torch.cuda.MemPool(symmetric=...) + ProcessGroupNCCL.register_mem_pool "
                                             "exist in this torch; not yet timed by this benchmark"}
    return {"available": False,
            "reason": f"torch {torch.__version__} has no public symmetric-window registration: "
                      "ProcessGroupNCCL.register_mem_pool registers ordinary user buffers, torch.cuda.MemPool takes "
                      "no symmetric flag, and the NCCL SymmetricMemory backend is a process-wide switch of the "
                      "private torch.distributed._symmetric_memory.set_backend"}
