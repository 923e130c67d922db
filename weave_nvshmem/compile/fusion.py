"""The graph rewrite: ``all_reduce -> + residual -> RMSNorm`` becomes one fused op.

Works on ATen-level FX graphs (what Inductor's post-grad passes and AOT autograd see), where
``torch.distributed.all_reduce`` and the functional collectives are both traced to
``_c10d_functional.all_reduce`` + ``wait_tensor``, and RMSNorm appears as ``aten.rms_norm``,
``aten._fused_rms_norm`` or, decomposed, as the fp32 formula::

    xf = s.to(float32)                                   # absent when s is float32
    n  = xf * rsqrt(mean(xf ** 2, dim=-1, keepdim=True) + eps)   # xf ** 2 also as xf * xf
    out = (n * w).to(s.dtype)      # F.rms_norm's decomposition (w may be cast to float32 first)
    out = w * n.to(s.dtype)        # Hugging Face LlamaRMSNorm (and Meta's Llama: n.type_as(s) * w)

A match becomes ``out, s = weave_nvshmem::fused_allreduce_rmsnorm_functional(x, residual, w, eps)``;
every other use of ``s`` (the next layer's residual) reads the op's new residual. Only exact
matches are rewritten: a sum all-reduce over the chosen group whose result feeds nothing but the
add, a same-shape residual, the normalisation computed in float32 over the last dim, a ``[H]``
weight of the activations' dtype, rows of whole 16-byte vectors, and intermediate values used
nowhere else. Anything else is left as it was.
"""
from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..collectives import ops as _ops  # noqa: F401 - registers torch.ops.weave_nvshmem

log = logging.getLogger(__name__)

aten = torch.ops.aten
prims = torch.ops.prims
c10d = torch.ops._c10d_functional
FUSED = torch.ops.weave_nvshmem.fused_allreduce_rmsnorm_functional.default
_RMS_NORM = getattr(aten, "rms_norm", None)
_FUSED_RMS_NORM = getattr(aten, "_fused_rms_norm", None)  # (out, rstd); newer torch only
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass
class Match:
    """One fusable chain: ``x`` all-reduced, plus ``residual`` (= ``add``), normalised (= ``out``)."""

    x: fx.Node  # the all-reduce's input
    views: list  # the reshapes between the sum and the add, outermost first: replayed on ``x``
    residual: fx.Node
    weight: fx.Node
    eps: float
    add: fx.Node
    out: fx.Node
    nodes: list  # what the rewrite removes: all_reduce, wait, add, the norm's nodes
    weight_casts: list  # casts of the weight inside the norm: removed when nothing else uses them


# ---- node predicates ------------------------------------------------------------------------
def _packet(node):
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    return getattr(node.target, "overloadpacket", node.target)


def _val(node):
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _arg(node, i, name, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _cast_input(node):
    """The input of a dtype conversion node (``convert_element_type``, ``_to_copy`` to a dtype), else None."""
    p = _packet(node)
    if p is prims.convert_element_type:
        return node.args[0]
    if p is aten._to_copy and set(node.kwargs) <= {"dtype"} and len(node.args) == 1:
        return node.args[0]
    return None


def _peel(node):
    """``(source, casts)``: ``node`` with any chain of dtype conversions taken off."""
    casts = []
    while (src := _cast_input(node)) is not None:
        casts.append(node)
        node = src
    return node, casts


def _is_last_dim(dims, ndim) -> bool:
    return isinstance(dims, (list, tuple)) and len(dims) == 1 and dims[0] in (-1, ndim - 1)


# ---- the RMSNorm --------------------------------------------------------------------------------
def _default_eps() -> float:
    return torch.finfo(torch.float32).eps  # what rms_norm uses for eps=None: the fp32 computation's


def _norm_op(out):
    """``aten.rms_norm`` or ``getitem(aten._fused_rms_norm, 0)``: (source, weight, eps, nodes, []) or None."""
    node, unused = out, []
    if (_packet(out) is operator.getitem and out.args[1] == 0 and _FUSED_RMS_NORM is not None
            and _packet(out.args[0]) is _FUSED_RMS_NORM):
        node = out.args[0]
        unused = [u for u in node.users if u is not out]  # rstd: only dead reads of it
        if any(_packet(u) is not operator.getitem or u.users for u in unused):
            return None
    elif _RMS_NORM is None or _packet(out) is not _RMS_NORM:
        return None
    src, shape, weight = node.args[0], _arg(node, 1, "normalized_shape"), _arg(node, 2, "weight")
    eps = _arg(node, 3, "eps")
    if weight is None or not isinstance(shape, (list, tuple)) or len(shape) != 1:
        return None
    return src, weight, _default_eps() if eps is None else float(eps), list(dict.fromkeys([out, node] + unused)), []


def _normalized(n):
    """``n = xf * rsqrt(mean(xf**2, -1, keepdim=True) + eps)``: (source, eps, nodes) or None."""
    if _packet(n) is not aten.mul or len(n.args) != 2:
        return None
    for xf, r in (n.args, n.args[::-1]):
        if _packet(r) is not aten.rsqrt:
            continue
        add = r.args[0]
        if _packet(add) is not aten.add or len(add.args) != 2 or not isinstance(add.args[1], (int, float)):
            continue
        if _arg(add, 2, "alpha", 1) != 1:
            continue
        mean = add.args[0]
        if _packet(mean) is not aten.mean or _arg(mean, 3, "dtype") is not None:
            continue
        sq, xf_val = mean.args[0], _val(xf)
        if xf_val is None or not _arg(mean, 2, "keepdim", False):
            continue
        if not _is_last_dim(_arg(mean, 1, "dim"), xf_val.dim()):
            continue
        if _packet(sq) is aten.pow and len(sq.args) == 2 and sq.args[1] in (2, 2.0):
            sq_in = sq.args[0]
        elif _packet(sq) is aten.mul and len(sq.args) == 2 and sq.args[0] is sq.args[1]:
            sq_in = sq.args[0]
        else:
            continue
        src, casts = _peel(xf)
        sq_src, sq_casts = _peel(sq_in)
        # the kernel normalises in float32; so must the graph, both uses of the one source
        if sq_src is not src or xf_val.dtype != torch.float32 or getattr(_val(sq_in), "dtype", None) != torch.float32:
            return None
        return src, float(add.args[1]), list(dict.fromkeys([n, r, add, mean, sq] + casts + sq_casts))
    return None


def _decomposed(out):
    """The fp32 formula ending at ``out`` (either weight placement): (source, weight, eps, nodes,
    weight casts) or None."""
    core, out_casts = _peel(out)
    if _packet(core) is not aten.mul or len(core.args) != 2:
        return None
    for norm_side, weight_side in (core.args, core.args[::-1]):
        if not isinstance(norm_side, fx.Node) or not isinstance(weight_side, fx.Node):
            continue
        n, n_casts = _peel(norm_side)
        found = _normalized(n)
        if found is None:
            continue
        src, eps, nodes = found
        weight, weight_casts = _peel(weight_side)
        return src, weight, eps, list(dict.fromkeys(out_casts + [core] + n_casts + nodes)), weight_casts
    return None


def _rmsnorm(out):
    return _norm_op(out) or _decomposed(out)


# ---- the all-reduce + residual add ----------------------------------------------------------------
_VIEWS = (aten.view, aten.reshape, aten._unsafe_view)


def _all_reduce_input(node, group_names):
    """``(x, views, nodes)`` when ``node`` is ``wait_tensor(all_reduce(x, "sum", group))`` over an
    accepted group, seen through reshapes (``views``, outermost first) and the ``copy`` that
    functionalisation leaves for an in-place ``torch.distributed.all_reduce``; else None."""
    views = []
    while _packet(node) in _VIEWS and len(node.users) == 1 and not node.kwargs:
        views.append(node)
        node = node.args[0]
    copy = None
    if _packet(node) is aten.copy and len(node.users) == 1:  # copy(x, wait): x's metadata, the sum's values
        copy, node = node, node.args[1]
    if _packet(node) is not c10d.wait_tensor or len(node.users) != 1:  # the sum feeds only the residual add
        return None
    ar = node.args[0]
    if _packet(ar) is not c10d.all_reduce or ar.args[1] != "sum" or ar.args[2] not in group_names:
        return None
    if len(ar.users) != 1 or (copy is not None and copy.args[0] is not ar.args[0]):
        return None
    return ar.args[0], views, views + [c for c in (copy,) if c is not None] + [node, ar]


def _match(out, group_names) -> Match | None:
    norm = _rmsnorm(out)
    if norm is None:
        return None
    s, weight, eps, nodes, weight_casts = norm
    if _packet(s) is not aten.add or len(s.args) != 2 or _arg(s, 2, "alpha", 1) != 1:
        return None
    for reduced, residual in (s.args, s.args[::-1]):
        found = _all_reduce_input(reduced, group_names) if isinstance(reduced, fx.Node) else None
        if found is None or not isinstance(residual, fx.Node):
            continue
        x, views, ar_nodes = found
        m = Match(x, views, residual, weight, eps, s, out, nodes + [s] + ar_nodes, weight_casts)
        return m if _fits(m) else None
    return None


def _fits(m: Match) -> bool:
    """Shapes, dtypes and uses the fused kernel can take."""
    s, x, r, w, o = (_val(n) for n in (m.add, m.views[0] if m.views else m.x, m.residual, m.weight, m.out))
    if any(v is None for v in (s, x, r, w, o)):
        return False
    hidden = s.shape[-1] if s.dim() else None
    if s.dtype not in _DTYPES or not isinstance(hidden, int) or hidden * s.element_size() % 16:
        return False
    if any(v.dtype != s.dtype or tuple(v.shape) != tuple(s.shape) for v in (x, r, o)):
        return False
    if w.dtype != s.dtype or tuple(w.shape) != (hidden,):
        return False
    inside = set(m.nodes)
    # values inside the chain feed only the chain (the add and the output may be used anywhere)
    return all(set(n.users) <= inside for n in m.nodes if n not in (m.add, m.out))


# ---- the rewrite ----------------------------------------------------------------------------------
def _fake(target, args):
    vals = [_val(a) if isinstance(a, fx.Node) else a for a in args]
    mode = torch._guards.detect_fake_mode([v for v in vals if isinstance(v, torch.Tensor)])
    if mode is None:
        return None
    with mode:
        return target(*vals)


def _rewrite(graph: fx.Graph, m: Match) -> bool:
    order = {n: i for i, n in enumerate(graph.nodes)}
    inside = set(m.nodes)
    later = [u for n in (m.add, m.out) for u in n.users if u not in inside]
    # the op goes right before the add, or after the weight when that is defined later
    anchor_after = m.weight if order[m.weight] > order[m.add] else None
    if anchor_after is not None and any(order[u] < order[anchor_after] for u in later):
        return False
    with graph.inserting_after(anchor_after) if anchor_after is not None else graph.inserting_before(m.add):
        x = m.x
        for view in reversed(m.views):  # the same reshapes, on the all-reduce's input
            x = graph.call_function(view.target, (x,) + tuple(view.args[1:]))
            x.meta["val"] = _fake(view.target, x.args)
        args = (x, m.residual, m.weight, m.eps)
        fused = graph.call_function(FUSED, args)
        out = graph.call_function(operator.getitem, (fused, 0))
        new_residual = graph.call_function(operator.getitem, (fused, 1))
    val = _fake(FUSED, args)
    if val is not None:
        fused.meta["val"], out.meta["val"], new_residual.meta["val"] = val, val[0], val[1]
    m.out.replace_all_uses_with(out)
    m.add.replace_all_uses_with(new_residual)
    for node in sorted(inside | set(m.weight_casts), key=order.__getitem__, reverse=True):
        if not node.users:
            graph.erase_node(node)
    return True


def fuse_allreduce_rmsnorm(graph: fx.Graph, group_names=None) -> int:
    """Replace every ``all_reduce -> + residual -> RMSNorm`` chain of ``graph`` with the fused op.

    Parameters
    ----------
    graph : torch.fx.Graph
        An ATen-level graph whose nodes carry ``meta["val"]`` (fake tensors), as Inductor's
        post-grad passes and AOT autograd's compilers receive it. Changed in place.
    group_names : collection of str, optional
        The process groups (``ProcessGroup.group_name``) whose all-reduces may be fused: the
        current communicator must span the same ranks. Default: the WORLD group.

    Returns
    -------
    int
        How many chains were replaced.
    """
    if group_names is None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return 0  # no process group: the graph holds no c10d all-reduce
        group_names = {dist.group.WORLD.group_name}
    count, gone = 0, set()
    for node in list(graph.nodes):
        if node in gone:  # erased by an earlier rewrite
            continue
        m = _match(node, group_names)
        if m is not None and _rewrite(graph, m):
            gone.update(m.nodes, m.weight_casts)
            count += 1
    if count:
        graph.lint()
        log.info("weave_nvshmem: fused %d all_reduce + residual add + RMSNorm chain(s)", count)
    return count
