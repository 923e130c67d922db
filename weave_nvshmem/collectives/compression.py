"""Blockwise low-bit compression of the two-shot collectives' traffic: what a ``compression=``
argument means, its checks, and the staging it needs (docs/compression.md).

A compressed collective quantizes each rank's partial sums once, as it pushes them to their
owner (the scales in the same staging slot as the data), the owner dequantizes and sums in fp32
in rank order 0..W-1, and the gather sends the sums re-quantized (``gather="compressed"``) or in
the input dtype (``gather="input"``). Every rank ends with the same bits: the owner's own blocks
are the dequantized values the peers receive. The kernels are compressed.ptx's
(``"twoshot_q"`` in the kernel table) and, with ``algorithm="pull"``, compressed_pull.ptx's
(``"pull_q"``: each rank quantizes into its own staging, the owners bulk-load; the same bits);
the float-exact CPU model is ``quantize.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ptx.table import COMPRESSED_VARIANTS

__all__ = ["CompressionSpec", "FORMATS", "BLOCKS", "DEFAULT_BLOCK", "GATHERS", "ALGORITHMS", "algorithms", "check",
           "staging_bytes", "wire_bytes"]

#: ``algorithm=`` -> the kernel-table algorithm of the compressed kernel it runs (never an
#: ``algorithm=`` value itself): "auto" the two-shot push (compressed.ptx), "pull" the pull
#: transport (compressed_pull.ptx; fused_allreduce_rmsnorm: compressed_fused_pull.ptx)
ALGORITHMS = {"auto": "twoshot_q", "pull": "pull_q"}
#: format -> the block sizes compressed.ptx renders
BLOCKS = {f: tuple(b for g, b in COMPRESSED_VARIANTS if g == f) for f in dict.fromkeys(g for g, _ in COMPRESSED_VARIANTS)}
FORMATS = tuple(BLOCKS)
#: default elements per scale: fp8/int8 128 (a 4-byte scale costs 0.25 bit/element, one warp
#: quantizes a block with 4 elements a lane); mxfp4 32 (the OCP MX block)
DEFAULT_BLOCK = {"fp8": 128, "int8": 128, "mxfp4": 32}
#: bytes of one block's values and of its scale
_PAYLOAD = {"fp8": lambda b: b, "int8": lambda b: b, "mxfp4": lambda b: b // 2}
_SCALE = {"fp8": 4, "int8": 4, "mxfp4": 1}
GATHERS = ("compressed", "input")


@dataclass(frozen=True)
class CompressionSpec:
    """How a collective compresses what it sends.

    Attributes
    ----------
    format : str
        ``"fp8"`` (e4m3 values, an fp32 scale ``amax/448`` per block), ``"int8"`` (symmetric,
        an fp32 scale ``amax/127`` per block) or ``"mxfp4"`` (e2m1 values, an E8M0 power-of-two
        scale per 32 elements: 4.25 bits an element).
    block : int or None
        Elements per scale: fp8/int8 64, 128 or 256 (default 128); mxfp4 32 only. None: the default.
    gather : str
        ``"compressed"`` (the gather re-quantizes the sums; all ranks use the dequantized values,
        the owner too) or ``"input"`` (the gather sends the sums in the input dtype).
        all_gather has no reduce phase, so it always sends compressed.
    """

    format: str
    block: int | None = None
    gather: str = "compressed"

    def __post_init__(self):
        if self.format not in BLOCKS:
            raise ValueError(f"compression: format must be one of {FORMATS} (got {self.format!r})")
        if self.block is None:
            object.__setattr__(self, "block", DEFAULT_BLOCK[self.format])
        if self.block not in BLOCKS[self.format]:
            raise ValueError(f"compression: block for {self.format} must be one of {BLOCKS[self.format]} "
                             f"(got {self.block!r})")
        if self.gather not in GATHERS:
            raise ValueError(f"compression: gather must be one of {GATHERS} (got {self.gather!r})")

    @classmethod
    def of(cls, value) -> "CompressionSpec | None":
        """``value`` as a CompressionSpec: a CompressionSpec, a format name, a dict of the fields,
        or None (no compression, returned as None)."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, dict):
            return cls(**value)
        raise TypeError(f"compression: expected None, a format name, a dict or a CompressionSpec "
                        f"(got {type(value).__name__})")

    @classmethod
    def parse(cls, text: str) -> "CompressionSpec":
        """The spec of ``"format[:block[:gather]]"`` (``str(spec)``'s form; the torch ops take it)."""
        parts = text.split(":")
        if not 1 <= len(parts) <= 3 or not parts[0]:
            raise ValueError(f"compression: expected 'format[:block[:gather]]' (got {text!r})")
        block = None
        if len(parts) > 1 and parts[1]:
            if not parts[1].isdigit():
                raise ValueError(f"compression: block must be an integer (got {parts[1]!r} in {text!r})")
            block = int(parts[1])
        return cls(parts[0], block, *parts[2:])

    def __str__(self) -> str:
        return f"{self.format}:{self.block}:{self.gather}"

    @property
    def payload_bytes(self) -> int:
        """Bytes of one block's values."""
        return _PAYLOAD[self.format](self.block)

    @property
    def scale_bytes(self) -> int:
        """Bytes of one block's scale."""
        return _SCALE[self.format]

    @property
    def bits_per_element(self) -> float:
        """Bits on the wire per element, scales included (fp8/int8 at 128: 8.25; mxfp4: 4.25)."""
        return 8 * (self.payload_bytes + self.scale_bytes) / self.block


def algorithms(op: str) -> tuple:
    """The ``algorithm=`` values a compressed ``op`` takes (``ALGORITHMS``' keys: every compressed op
    has a kernel for each)."""
    return tuple(ALGORITHMS)


def check(op: str, spec: CompressionSpec, numel: int, world: int, *, chunk: int | None = None) -> None:
    """ValueError naming ``op`` when ``numel`` elements (and ``chunk``, the per-rank chunk of
    reduce_scatter/all_gather) do not split into whole blocks, or the op cannot take ``spec``."""
    b = spec.block
    if numel % b:
        raise ValueError(f"{op}: compression {spec.format} with block {b} needs the element count to be a "
                         f"multiple of {b} (got {numel}); pad the tensor or pick another block")
    if chunk is not None and chunk % b:
        raise ValueError(f"{op}: compression {spec.format} with block {b} needs each rank's chunk to be a "
                         f"multiple of {b} elements (got {chunk})")
    if op == "all_gather" and spec.gather != "compressed":
        raise ValueError(f"{op}: compression gather must be 'compressed' (all_gather sends only its input; "
                         "uncompressed, use compression=None)")


def staging_bytes(spec: CompressionSpec, numel: int, element_size: int, world: int, *, row: int | None = None) -> int:
    """Bytes one staging slot (and the result buffer) must hold for a compressed op of ``numel``
    elements: a segment's ``ceil(nblk/W)`` blocks of values, rounded up to 16, then their scales
    (compressed.ptx's slot layout), or the segment's sums in the input dtype (``gather="input"``).
    ``row``: the fused op's hidden size (segments of ``ceil(rows/W)`` whole rows,
    compressed_fused.ptx)."""
    if row is None:
        jn = -(-(numel // spec.block) // world)
    else:
        jn = -(-(numel // row) // world) * (row // spec.block)
    slot = (jn * spec.payload_bytes + 15) // 16 * 16 + jn * spec.scale_bytes
    if spec.gather == "input":
        slot = max(slot, jn * spec.block * element_size)
    return (slot + 15) // 16 * 16


def wire_bytes(spec: CompressionSpec | None, elements: int, element_size: int, world: int) -> dict:
    """Bytes each rank sends for an all-reduce of ``elements`` (e.g. one token's hidden vector):
    ``(W-1)/W`` of them in the push and again in the gather.

    Returns
    -------
    dict
        ``push``, ``gather``, ``total`` bytes per rank and ``formula`` (the expression).
    """
    share = (world - 1) / world * elements
    if spec is None:
        push = gather = share * element_size
        formula = "2 * (W-1)/W * n * element_size"
    else:
        push = share * spec.bits_per_element / 8
        gather = push if spec.gather == "compressed" else share * element_size
        formula = ("(W-1)/W * n * (payload + scale)/block * 2" if spec.gather == "compressed" else
                   "(W-1)/W * n * ((payload + scale)/block + element_size)")
    return {"push": push, "gather": gather, "total": push + gather, "formula": formula}
