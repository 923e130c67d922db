"""The registry of what each suite times: sizes, variants (ours, baselines, bounds) and labels.

Reports read the variants and labels a document carries (``doc["variants"]``), so a table drawn
again later shows what was measured then; ``LEGACY_LABELS`` names the variants of documents
written before this registry (bench.py, schema 1).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

SCHEMA = "weave_nvshmem.bench/2"
EPS = 1e-6
TOKENS_FULL = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
TOKENS_QUICK = (1, 16, 128, 1024, 8192)
AR_HIDDEN = 8192
FUSED_HIDDENS = (8192, 5120)
RAW_BYTES = tuple(4 ** k for k in range(6, 15))  # 4 KiB .. 256 MiB
#: CTA sweeps: counts, and the sizes they run at
SWEEP_CTAS = (2, 4, 8, 16, 32, 64)
AR_CTA_TOKENS = (1024, 8192)
FUSED_CTA_MIN_TOKENS = 1024
#: reduce_scatter / all_gather of a tokens x AR_HIDDEN tensor (the full one; each rank holds 1/W)
SG_TOKENS = (16, 128, 1024, 4096, 8192, 16384)
SG_TOKENS_QUICK = (128, 8192)
ONESHOT_MAX_BYTES = 64 << 20  # ours one-shot all-reduce only up to this size
#: the tune suite: algorithms and CTA counts tried, and how much slower than the best a choice
#: with fewer CTAs may be (CTAs the collective leaves free run the GEMMs beside it)
TUNE_ALGORITHMS = ("lamport", "oneshot", "twoshot")
TUNE_CTAS = (2, 4, 8, 16, 32, 64)
TUNE_TOLERANCE = 0.03
#: the norm suite (one GPU, world 1)
NORM_TOKENS = TOKENS_FULL
NORM_TOKENS_QUICK = (1, 128, 2048, 16384)
NORM_HIDDENS = (4096, 5120, 8192)
NORM_DTYPES = ("bfloat16", "float16", "float32")
#: issue 11's target: ours at least this fraction of Inductor's speed at every row
NORM_TARGET = 0.95


@dataclass(frozen=True)
class Variant:
    """One thing a suite times. ``kind``: "ours", "baseline" (what an engine runs: the speedup
    columns) or "bound" (a lower bound, e.g. the norm without communication)."""

    name: str
    label: str
    kind: str
    what: str


def _v(name, label, kind, what):
    return Variant(name, label, kind, what)


SUITES = {
    "allreduce": (
        _v("ours_auto", "ours auto", "ours", "comm.all_reduce(x, out=x), planner's choice"),
        _v("ours_lamport", "ours lamport", "ours", "comm.all_reduce(algorithm='lamport')"),
        _v("ours_oneshot", "ours oneshot", "ours", "comm.all_reduce(algorithm='oneshot')"),
        _v("ours_twoshot", "ours twoshot", "ours", "comm.all_reduce(algorithm='twoshot')"),
        _v("ours_zerocopy", "ours 2shot zero-copy", "ours", "two-shot on inputs in our symmetric heap, read in place"),
        _v("ours_pull", "ours pull zero-copy", "ours", "pull transport (few SMs, each byte written once) on "
           "symmetric inputs, read in place"),
        _v("ours_copyengine", "ours copyengine", "ours", "copy-engine transport: device copies move the bytes, "
           "the SMs reduce"),
        _v("nccl", "NCCL", "baseline", "dist.all_reduce(x) in place"),
        _v("symm_oneshot", "symm 1shot", "baseline", "torch.ops.symm_mem.one_shot_all_reduce (torch SymmetricMemory)"),
        _v("symm_twoshot", "symm 2shot", "baseline", "torch.ops.symm_mem.two_shot_all_reduce_ (torch SymmetricMemory)"),
    ),
    "fused": (
        _v("ours_auto", "ours auto", "ours", "comm.fused_allreduce_rmsnorm, planner's choice"),
        _v("ours_sharded", "ours sharded", "ours", "fused op, residual_mode='sharded'"),
        _v("ours_lamport", "ours lamport", "ours", "fused op, algorithm='lamport'"),
        _v("ours_oneshot", "ours oneshot", "ours", "fused op, algorithm='oneshot'"),
        _v("ours_twoshot", "ours twoshot", "ours", "fused op, algorithm='twoshot'"),
        _v("ours_zerocopy", "ours 2shot zero-copy", "ours", "two-shot fused op on symmetric inputs, read in place"),
        _v("ours_pull", "ours pull zero-copy", "ours", "pull-transport fused op on symmetric inputs, read in place"),
        _v("ours_copyengine", "ours copyengine", "ours", "copy-engine fused op: device copies move the bytes, "
           "the SMs reduce + norm"),
        _v("nccl_norm", "A: NCCL + fused norm", "baseline",
           "dist.all_reduce(x) in place, then the shared fused add+RMSNorm (baselines.fused_add_rmsnorm)"),
        _v("symm_norm", "B: symm 2shot + fused norm", "baseline",
           "torch SymmetricMemory two_shot_all_reduce_, then the shared fused add+RMSNorm (fused_add_rmsnorm)"),
        _v("ours_ar_norm", "C: ours AR + fused norm", "baseline",
           "comm.all_reduce (auto), then the shared fused add+RMSNorm (fused_add_rmsnorm)"),
        _v("norm_only", "fused norm only", "bound", "the shared fused add+RMSNorm (fused_add_rmsnorm), no communication"),
    ),
    "reducescatter": (
        _v("ours_auto", "ours auto", "ours", "comm.reduce_scatter"),
        _v("ours_zerocopy", "ours 2shot zero-copy", "ours", "comm.reduce_scatter on symmetric inputs"),
        _v("ours_pull", "ours pull zero-copy", "ours", "comm.reduce_scatter(algorithm='pull') on symmetric inputs"),
        _v("nccl", "NCCL", "baseline", "dist.reduce_scatter_tensor"),
    ),
    "allgather": (
        _v("ours_auto", "ours auto", "ours", "comm.all_gather"),
        _v("ours_pull", "ours pull", "ours", "comm.all_gather(algorithm='pull'): every rank pulls the shards"),
        _v("nccl", "NCCL", "baseline", "dist.all_gather_into_tensor"),
    ),
}
#: the algorithm= each "ours" variant passes (absent: "auto")
ALGORITHM = {"ours_lamport": "lamport", "ours_oneshot": "oneshot", "ours_twoshot": "twoshot",
             "ours_zerocopy": "twoshot", "ours_pull": "pull", "ours_copyengine": "copyengine"}
#: variants whose inputs are symmetric tensors the peers read in place
ZERO_COPY = ("ours_zerocopy", "ours_pull")
#: the variants swept over CTA counts, per suite
SWEPT = {"allreduce": ("ours_twoshot", "ours_pull", "ours_copyengine"),
         "fused": ("ours_twoshot", "ours_pull", "ours_copyengine"), "reducescatter": ("ours_auto", "ours_pull"),
         "allgather": ("ours_auto", "ours_pull")}
#: NCCL's bus-bandwidth factor per suite (busbw = algbw * factor * (W-1)/W of the full tensor)
BUS_FACTOR = {"allreduce": 2, "reducescatter": 1, "allgather": 1, "fused": None}
#: variant names of bench.py's documents (schema weave_nvshmem.bench/1)
LEGACY_LABELS = {"ours_bulk": "ours bulk", "nccl_add_rmsnorm": "A: NCCL+add+norm (old, unfused)",
                 "symm_add_rmsnorm": "B: symm2shot+add+norm (old, unfused)",
                 "ours_ar_add_rmsnorm": "C: ours AR+add+norm (old, unfused)", "add_rmsnorm": "add+norm only (old)"}
LEGACY_BASELINES = {"allreduce": ("nccl", "symm_oneshot", "symm_twoshot"),
                    "fused": ("nccl_add_rmsnorm", "symm_add_rmsnorm", "ours_ar_add_rmsnorm"),
                    "reducescatter": ("nccl",), "allgather": ("nccl",)}


def names(suite: str) -> tuple:
    """The variant names of ``suite``, in table order."""
    return tuple(v.name for v in SUITES[suite])


def baselines(suite: str) -> tuple:
    """The names of ``suite``'s baselines (the speedup columns)."""
    return tuple(v.name for v in SUITES[suite] if v.kind == "baseline")


def describe(suite: str) -> dict:
    """What a document of ``suite`` carries about its variants: names, baselines, labels, what each runs."""
    return {"variants": list(names(suite)), "baselines": list(baselines(suite)),
            "labels": {v.name: v.label for v in SUITES[suite]},
            "variant_info": {v.name: asdict(v) for v in SUITES[suite]}}
