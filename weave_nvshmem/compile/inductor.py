"""The fusion as an Inductor custom pass (``post_grad_custom_pre_pass``).

Inductor runs it on every graph it compiles, after AOT autograd's decompositions and before its
own pattern passes, so the fused op lands in the graph Inductor lowers (an external kernel call)
and CUDA graphs (``"triton.cudagraphs": True``) capture it with the rest.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from torch._inductor.custom_graph_pass import CustomGraphPass

from . import fusion


class FuseAllReduceRMSNorm(CustomGraphPass):
    """Inductor pass replacing ``all_reduce -> + residual -> RMSNorm`` with the fused op.

    Use it through ``torch.compile``'s Inductor options::

        fuse = weave_nvshmem.compile.FuseAllReduceRMSNorm()
        model = torch.compile(model, fullgraph=True, options=fuse.options(cudagraphs=True))

    (``mode="reduce-overhead"`` and ``options`` cannot be given together; ``cudagraphs=True`` is
    what that mode sets.) The compiled graph runs the fused op on the current communicator
    (``weave_nvshmem.use_communicator``, else the default one), which must span the ranks of
    the all-reduces it replaces.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup or str, optional
        The group (or its ``group_name``) whose all-reduces are fused; default: WORLD.

    Attributes
    ----------
    replaced : list of int
        For each graph the pass ran on, how many chains it replaced (a graph found in Inductor's
        cache is not rewritten again, so it adds nothing here).
    """

    def __init__(self, group=None):
        self.group = group
        self.replaced: list[int] = []

    def group_names(self):
        """The accepted group names, or None for WORLD (resolved when the pass runs)."""
        if self.group is None:
            return None
        return {self.group if isinstance(self.group, str) else self.group.group_name}

    def __call__(self, graph) -> None:
        self.replaced.append(fusion.fuse_allreduce_rmsnorm(graph, self.group_names()))

    def uuid(self) -> str:
        """Changes with the pass's source and its group, so Inductor's cache keys follow both."""
        h = hashlib.sha256()
        here = Path(__file__).resolve().parent
        for path in (here / "fusion.py", here / "inductor.py", here.parent / "collectives" / "ops.py"):
            h.update(path.read_bytes())
        h.update(repr(sorted(self.group_names() or ["<WORLD>"])).encode())
        return h.hexdigest()

    def options(self, cudagraphs: bool = False) -> dict:
        """Inductor options for ``torch.compile(..., options=...)`` that run this pass.

        Parameters
        ----------
        cudagraphs : bool
            Also capture the compiled graph in CUDA graphs (what ``mode="reduce-overhead"`` does).
        """
        return {"post_grad_custom_pre_pass": self, "triton.cudagraphs": cudagraphs}
