"""The kernel table: one ``KernelSpec`` per (op, algorithm, transport), the single description of
every PTX entry the package launches.

A spec holds the kernel file and entry-name template, the variant axes (the entries a file has
beyond dtype and world), the ``.param`` list in order, the flags the entry honours (named
``IntFlag`` members: the bits of ``p_flags`` mean different things in different files) and the
launch rules (block size, dynamic shared memory, grid limit). The loader renders and loads
``spec.file``; the planner picks a spec and a variant; the communicator packs the arguments with
``spec.pack``. ``tests/test_launch_abi.py`` checks every spec against the rendered PTX.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

__all__ = ["AllReduceFlags", "FusedFlags", "CompressedFlags", "CompressedFusedFlags", "COMPRESSED_VARIANTS", "KernelSpec", "KERNELS", "MULTICAST_STATUS", "spec", "algorithms",
           "files"]

#: the status line of every multicast spec (and of multimem.ptx's header)
MULTICAST_STATUS = ("assembled and launch-tested on the CPU, never executed on machines without "
                    "NVLink multicast")


class AllReduceFlags(enum.IntFlag):
    """``p_flags`` of allreduce.ptx's two-shot entry (the one-shot and Lamport entries read none).

    ``REDUCE_SCATTER`` (1): stop after the sum, ``out`` is the own segment only.
    ``ALL_GATHER`` (2): no push and no sum; the input is this rank's chunk, gathered by all.
    ``ZERO_COPY`` (4): the input is symmetric (the same tensor on every rank): nothing is pushed,
    the owner reads the peers' inputs in place.
    """

    NONE = 0
    REDUCE_SCATTER = 1
    ALL_GATHER = 2
    ZERO_COPY = 4


class FusedFlags(enum.IntFlag):
    """``p_flags`` of the fused AllReduce + residual-add + RMSNorm entries (every fused file).

    ``SHARDED`` (1): rank r reads and writes only its own residual rows (two-shot entries; the
    local entry ignores it: at world 1 every row is the rank's own).
    ``RESIDUAL`` (2): a residual is given (read it); without it the sum alone is the new residual.
    ``ZERO_COPY`` (4): the input is symmetric; peers read it in place (fused_twoshot.ptx).
    """

    NONE = 0
    SHARDED = 1
    RESIDUAL = 2
    ZERO_COPY = 4


class CompressedFlags(enum.IntFlag):
    """``p_flags`` of compressed.ptx (the blockwise low-bit two-shot, ``algorithm="twoshot_q"``) and
    compressed_pull.ptx (the same on the pull transport, ``"pull_q"``).

    ``REDUCE_SCATTER`` (1): stop after the sum, ``out`` is the own segment (rounded, not
    re-quantized). ``ALL_GATHER`` (2): no push and no sum; the input is this rank's chunk, sent
    quantized. ``GATHER_INPUT`` (4): the gather sends the sums in the input dtype instead of
    re-quantizing them.
    """

    NONE = 0
    REDUCE_SCATTER = 1
    ALL_GATHER = 2
    GATHER_INPUT = 4


class CompressedFusedFlags(enum.IntFlag):
    """``p_flags`` of compressed_fused.ptx (the compressed fused AllReduce + residual-add + RMSNorm).

    ``SHARDED`` (1) and ``RESIDUAL`` (2) as in ``FusedFlags``; ``GATHER_INPUT`` (4): the gather
    sends the rows in the input dtype instead of re-quantizing them.
    """

    NONE = 0
    SHARDED = 1
    RESIDUAL = 2
    GATHER_INPUT = 4


#: compressed.ptx's (format, block) entries: fp8/int8 at 64/128/256 elements a scale, mxfp4 at 32
COMPRESSED_VARIANTS = (("fp8", 64), ("fp8", 128), ("fp8", 256), ("int8", 64), ("int8", 128), ("int8", 256),
                       ("mxfp4", 32))


#: PTX parameter type -> the numpy scalar the launch passes
NP_TYPES = {"u64": np.uint64, "u32": np.uint32, "s64": np.int64, "f32": np.float32}

#: common_params.ptxinc: the channel block every channel kernel ends with (then p_dl0..p_dl{W-1})
CHANNEL_PARAMS = (("ws", "u64"), ("cap", "u64"), ("rank", "u32"), ("timeout", "u64"), ("err", "u64"),
                  ("opid", "u32"), ("sig", "u32"), ("call0", "u32"), ("call1", "u32"), ("call2", "u32"))

_AR = (("out", "u64"), ("inp", "u64"), ("nelem", "u64"), ("flags", "u32"))
_FUSED = (("out", "u64"), ("res", "u64"), ("inp", "u64"), ("weight", "u64"), ("rows", "u64"), ("hidden", "u32"),
          ("eps", "f32"), ("flags", "u32"))
#: the copy-engine kernels' landing slots: their base and the bytes of one (channel.ce_slot)
_LAND = (("land", "u64"), ("slot", "u64"))


@dataclass(frozen=True)
class KernelSpec:
    """One launchable kernel family.

    Attributes
    ----------
    op, algorithm, transport : str
        The key. ``transport``: ``"p2p"`` (loads/stores through peer mappings), ``"multicast"``
        (``multimem`` on a multicast address), ``"local"`` (one rank, no channel).
    file : str
        Kernel template in ``ptx/kernels/``.
    entry : str
        Entry-name template: ``{dtype}``, ``{world}`` and the axes in braces.
    axes : tuple of str
        Variant axes beyond dtype and world (``"vpt"``: 16-byte vectors per thread per row;
        ``"group"``: warps per row).
    variants : tuple of tuple
        Every value of ``axes`` that has an entry, in order.
    params : tuple of (name, PTX type)
        The entry's parameters before the channel block, without the ``p_`` prefix.
    flags : AllReduceFlags or FusedFlags or None
        The ``p_flags`` bits the entry honours (None: no ``p_flags``); others are masked off.
    block : int or str
        Threads per block: a number, ``"row"`` (``plan.fused_block(hidden)[0]``: one row per
        block), or ``"group"`` (``32 * group``).
    smem : int
        Bytes of dynamic shared memory (0 everywhere now; a kernel above 48 KB would need the
        loader to opt in).
    channel : bool
        Whether the entry ends with the channel block (``CHANNEL_PARAMS`` + per-peer deltas):
        a channel kernel's grid is at most ``catalog.MAX_CTAS`` (rows of the signal pad).
    dtyped, per_world : bool
        Whether the file is rendered per dtype / per world size (otherwise once, with world 1).
    status : str
        Empty for kernels the GPU suites run; else what has (not) been checked.
    """

    op: str
    algorithm: str
    transport: str
    file: str
    entry: str
    params: tuple
    flags: enum.IntFlag | None
    block: int | str
    axes: tuple = ()
    variants: tuple = ((),)
    smem: int = 0
    channel: bool = True
    dtyped: bool = True
    per_world: bool = True
    status: str = ""

    @property
    def key(self) -> tuple:
        return self.op, self.algorithm, self.transport

    def entry_name(self, dtype: str | None, world: int, variant: dict) -> str:
        """The entry of ``variant`` (``{axis: value}``) for ``dtype`` and ``world``."""
        return self.entry.format(dtype=dtype, world=world, **variant)

    def render_args(self, dtype: str | None, world: int) -> tuple:
        """``(file, dtype, world)`` the file is rendered with for an op at ``world`` ranks."""
        return self.file, (dtype if self.dtyped else None), (world if self.per_world else 1)

    def param_list(self, world: int) -> list:
        """Every ``(name, PTX type)`` of the entry in order, the channel block included."""
        names = list(self.params)
        if self.channel:
            names += list(CHANNEL_PARAMS) + [(f"dl{p}", "s64") for p in range(world)]
        return names

    def pack(self, world: int, values: dict) -> tuple:
        """The launch arguments: ``values[name]`` for each parameter, as its numpy scalar type.

        ``values`` must name every parameter and nothing else (``dl0``.. for the channel block).
        """
        names = self.param_list(world)
        missing = [n for n, _ in names if n not in values]
        extra = set(values) - {n for n, _ in names}
        if missing or extra:
            raise TypeError(f"{self.entry}: arguments missing {missing}, unexpected {sorted(extra)}")
        return tuple(NP_TYPES[t](values[n]) for n, t in names)


#: pull.ptx's and fused_pull.ptx's dynamic shared memory: 3 pipeline stages of up to 64 KB
PULL_SMEM = 3 * 64 * 1024
_ONE_ROW_VPT = (("vpt",), ((1,), (2,), (4,), (8,)))

KERNELS: tuple = (
    KernelSpec("barrier", "barrier", "p2p", "barrier.ptx", "wn_barrier_w{world}", (), None, 32, dtyped=False),
    KernelSpec("put", "copy", "p2p", "copy.ptx", "wn_copy", (("dst", "u64"), ("src", "u64"), ("nbytes", "u64")),
               None, 512, channel=False, dtyped=False, per_world=False),
    *(KernelSpec("all_reduce", kind, "p2p", "allreduce.ptx", f"wn_allreduce_{kind}_{{dtype}}_w{{world}}", _AR,
                 AllReduceFlags.ZERO_COPY if kind == "twoshot" else AllReduceFlags.NONE, 512)
      for kind in ("lamport", "oneshot", "twoshot")),
    KernelSpec("reduce_scatter", "twoshot", "p2p", "allreduce.ptx", "wn_allreduce_twoshot_{dtype}_w{world}", _AR,
               AllReduceFlags.REDUCE_SCATTER | AllReduceFlags.ZERO_COPY, 512),
    KernelSpec("all_gather", "twoshot", "p2p", "allreduce.ptx", "wn_allreduce_twoshot_{dtype}_w{world}", _AR,
               AllReduceFlags.ALL_GATHER, 512),
    KernelSpec("all_reduce", "twoshot", "multicast", "multimem.ptx", "wn_allreduce_multimem_{dtype}_w{world}",
               _AR + (("mc_ws", "u64"),), AllReduceFlags.NONE, 512, status=MULTICAST_STATUS),
    *(KernelSpec("fused_allreduce_rmsnorm", kind, "p2p", "fused_rmsnorm.ptx",
                 f"wn_fused_{kind}_{{dtype}}_w{{world}}_v{{vpt}}", _FUSED, FusedFlags.RESIDUAL, "row", *_ONE_ROW_VPT)
      for kind in ("lamport", "oneshot")),
    KernelSpec("fused_allreduce_rmsnorm", "twoshot", "p2p", "fused_twoshot.ptx",
               "wn_fused_twoshot_{dtype}_w{world}_g{group}", _FUSED + (("vthreads", "u32"),),
               FusedFlags.SHARDED | FusedFlags.RESIDUAL | FusedFlags.ZERO_COPY, 512,
               ("group",), ((1,), (2,), (4,), (8,), (16,))),
    KernelSpec("fused_allreduce_rmsnorm", "twoshot", "multicast", "multimem.ptx",
               "wn_fused_multimem_{dtype}_w{world}_v{vpt}", _FUSED + (("mc_ws", "u64"),),
               FusedFlags.SHARDED | FusedFlags.RESIDUAL, "row", *_ONE_ROW_VPT, status=MULTICAST_STATUS),
    KernelSpec("fused_allreduce_rmsnorm", "local", "local", "fused_local.ptx", "wn_fused_local_{dtype}_v{vpt}",
               _FUSED + (("vthreads", "u32"),), FusedFlags.RESIDUAL, "row", *_ONE_ROW_VPT,
               channel=False, per_world=False),
    # compressed two-shot (docs/compression.md): one file, the op picks the mode through p_flags
    *(KernelSpec(op, "twoshot_q", "p2p", "compressed.ptx", "wn_allreduce_q_{fmt}_{dtype}_w{world}_b{qblock}", _AR,
                 flags, 512, ("fmt", "qblock"), COMPRESSED_VARIANTS)
      for op, flags in (("all_reduce", CompressedFlags.GATHER_INPUT),
                        ("reduce_scatter", CompressedFlags.REDUCE_SCATTER),
                        ("all_gather", CompressedFlags.ALL_GATHER))),
    KernelSpec("fused_allreduce_rmsnorm", "twoshot_q", "p2p", "compressed_fused.ptx",
               "wn_fused_q_{fmt}_{dtype}_w{world}_b{qblock}", _FUSED,
               CompressedFusedFlags.SHARDED | CompressedFusedFlags.RESIDUAL | CompressedFusedFlags.GATHER_INPUT, 512,
               ("fmt", "qblock"), COMPRESSED_VARIANTS),
    # the pull transport (pull.ptx): few CTAs, TMA bulk loads from the peers, each byte written once
    # locally; 3 stages of 64 KB of dynamic shared memory (the loader opts in above 48 KB)
    *(KernelSpec(op, "pull", "p2p", "pull.ptx", "wn_pull_{dtype}_w{world}", _AR, flags, 512, smem=PULL_SMEM)
      for op, flags in (("all_reduce", AllReduceFlags.ZERO_COPY),
                        ("reduce_scatter", AllReduceFlags.REDUCE_SCATTER | AllReduceFlags.ZERO_COPY),
                        ("all_gather", AllReduceFlags.ALL_GATHER))),
    # the fused AllReduce + residual + RMSNorm on the pull transport (fused_pull.ptx): fused_twoshot's
    # bits, pull.ptx's data movement (rows streamed through the same 3 stages in column chunks)
    KernelSpec("fused_allreduce_rmsnorm", "pull", "p2p", "fused_pull.ptx", "wn_fused_pull_{dtype}_w{world}",
               _FUSED + (("vthreads", "u32"),), FusedFlags.SHARDED | FusedFlags.RESIDUAL | FusedFlags.ZERO_COPY,
               512, smem=PULL_SMEM),
    # compressed.ptx's collectives and compressed_fused.ptx's fused op on the pull transport
    # (compressed_pull.ptx, compressed_fused_pull.ptx): their bits, pull.ptx's data movement (each
    # rank quantizes into its own staging, the owners bulk-load the blocks)
    *(KernelSpec(op, "pull_q", "p2p", "compressed_pull.ptx", "wn_pull_q_{fmt}_{dtype}_w{world}_b{qblock}", _AR,
                 flags, 512, ("fmt", "qblock"), COMPRESSED_VARIANTS, smem=PULL_SMEM)
      for op, flags in (("all_reduce", CompressedFlags.GATHER_INPUT),
                        ("reduce_scatter", CompressedFlags.REDUCE_SCATTER),
                        ("all_gather", CompressedFlags.ALL_GATHER))),
    KernelSpec("fused_allreduce_rmsnorm", "pull_q", "p2p", "compressed_fused_pull.ptx",
               "wn_fused_pull_q_{fmt}_{dtype}_w{world}_b{qblock}", _FUSED,
               CompressedFusedFlags.SHARDED | CompressedFusedFlags.RESIDUAL | CompressedFusedFlags.GATHER_INPUT, 512,
               ("fmt", "qblock"), COMPRESSED_VARIANTS, smem=PULL_SMEM),
    # the copy-engine transport (collectives/copyengine.py, docs/transport.md): device copies move the
    # bytes between ranks; ce.ptx only reduces (and normalises) the own segment, twoshot's bits;
    # cewait.ptx is its bounded wait for the peers' stream-ordered flags
    KernelSpec("all_reduce", "copyengine", "p2p", "ce.ptx", "wn_ce_sum_{dtype}_w{world}", _AR + _LAND,
               AllReduceFlags.NONE, 512),
    KernelSpec("fused_allreduce_rmsnorm", "copyengine", "p2p", "ce.ptx", "wn_ce_fused_{dtype}_w{world}_g{group}",
               _FUSED + (("vthreads", "u32"),) + _LAND, FusedFlags.SHARDED | FusedFlags.RESIDUAL, 512,
               ("group",), ((1,), (2,), (4,), (8,), (16,))),
    KernelSpec("wait", "copyengine", "p2p", "cewait.ptx", "wn_ce_wait_w{world}", (("off", "u32"), ("value", "u32")),
               None, 32, dtyped=False),
)

_BY_KEY = {k.key: k for k in KERNELS}
assert len(_BY_KEY) == len(KERNELS), "one spec per (op, algorithm, transport)"


def spec(op: str, algorithm: str, transport: str = "p2p") -> KernelSpec:
    """The spec of ``(op, algorithm, transport)``; KeyError if the table has none."""
    return _BY_KEY[(op, algorithm, transport)]


def algorithms(op: str, transports=("p2p", "local")) -> tuple:
    """The algorithm names the table offers for ``op`` over ``transports``, in table order."""
    return tuple(dict.fromkeys(k.algorithm for k in KERNELS if k.op == op and k.transport in transports))


def files() -> dict:
    """``{file: (dtyped, per_world)}`` of every kernel file the table uses."""
    return {k.file: (k.dtyped, k.per_world) for k in KERNELS}
