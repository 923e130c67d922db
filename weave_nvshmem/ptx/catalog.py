"""The PTX templates' parameters, the workspace layout they share, and rendering.

Every kernel file in ``kernels/`` is a template; ``render`` turns (file, dtype, world) into PTX
text. Which files and entries exist is the kernel table's business (``ptx/table.py``);
``variants()`` lists every (file, dtype, world) the package can launch, so the CPU test suite can
assemble each one for sm_90a.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from . import table
from .template import render as _render

KERNEL_DIR = Path(__file__).parent / "kernels"

#: largest world size and CTA count the signal pad has room for
MAX_WORLD = 8
MAX_CTAS = 128
#: workspace layout of one channel: control words, signal pad, then data buffers
PAD_OFF = 256
#: the call descriptors the barrier handshake publishes (barrier.ptxinc): u32[MAX_CTAS][MAX_WORLD][8]
DESC_OFF = 8192
DESC_BYTES = 32
DATA_OFF = DESC_OFF + MAX_CTAS * MAX_WORLD * DESC_BYTES
assert PAD_OFF + MAX_CTAS * MAX_WORLD * 4 <= DESC_OFF
#: bytes of one Lamport slot (allreduce.ptx "lamport": inputs up to this size); a channel holds
#: 3 buffers x world slots after its staging/result buffers
LAMPORT_SLOT = 512 * 1024
#: the copy-engine transport's flags among the control words (u32[MAX_WORLD] each, indexed by the
#: peer that raises them: collectives/copyengine.py): "your segment of my input landed", "my result
#: rows are ready"
CE_ARRIVE_OFF = 64
CE_READY_OFF = 128
assert 36 <= CE_ARRIVE_OFF and CE_READY_OFF + 4 * MAX_WORLD <= PAD_OFF
#: the widest row of the fused ops in bytes (4096 16-byte vectors: plan.fused_block's limit)
MAX_ROW_BYTES = 4096 * 16

DTYPES = ("bf16", "f16", "f32")
#: elements per 16-byte vector
VEC_ELEMS = {"bf16": 8, "f16": 8, "f32": 4}

#: kernel file -> (rendered per dtype, rendered per world size), from the kernel table
KERNELS = table.files()
#: world sizes rendered in the CPU test (any 1..MAX_WORLD renders)
TEST_WORLDS = (1, 2, 4, 8)


def params(dtype: str | None, world: int) -> dict:
    """The template parameters of a (dtype, world) rendering (``${...}`` names in the kernels)."""
    if not 1 <= world <= MAX_WORLD:
        raise ValueError(f"world size must be in 1..{MAX_WORLD} (got {world})")
    p = {"WORLD": world, "MAX_WORLD": MAX_WORLD, "MAX_CTAS": MAX_CTAS,
         # vectors each thread keeps in flight per peer/segment: ~16 loads in flight whatever WORLD
         "UNROLL": min(4, max(1, 16 // world)),
         "PAD_OFF": PAD_OFF, "DESC_OFF": DESC_OFF, "DESC_BYTES": DESC_BYTES, "DATA_OFF": DATA_OFF, "LSLOT": LAMPORT_SLOT, "DTYPE": dtype or "none"}
    if dtype is not None:
        if dtype not in VEC_ELEMS:
            raise ValueError(f"unsupported PTX dtype {dtype!r}; expected one of {DTYPES}")
        ve = VEC_ELEMS[dtype]
        p.update(VE=ve, LOG_VE=ve.bit_length() - 1, ES=16 // ve)
    return p


@lru_cache(maxsize=None)
def render(kernel: str, dtype: str | None, world: int) -> str:
    """PTX text of ``kernel`` for ``dtype`` (None for untyped kernels) and ``world`` ranks."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel file {kernel!r}")
    text = (KERNEL_DIR / kernel).read_text()
    return _render(text, params(dtype, world), directory=KERNEL_DIR, name=kernel)


def variants():
    """Every (kernel, dtype, world) the CPU suite assembles (world-independent files once, at 1)."""
    for kernel, (dtyped, per_world) in KERNELS.items():
        for world in (TEST_WORLDS if per_world else (1,)):
            for dtype in (DTYPES if dtyped else (None,)):
                yield kernel, dtype, world
