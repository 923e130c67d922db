"""Test support for weave_nvshmem's suites, benchmarks and examples: what a correct result is and
how ranks agree on it.

- ``numerics``: references rounded to the dtype as the kernels round, per-dtype tolerances, the
  normwise relative error, per-rank reproducible inputs, poisoned outputs, bitwise comparison.
- ``ranks``: rank agreement over torch.distributed (every rank reaches the same verdict).
- ``fuzz``: the fuzzer's random calls, a pure function of (seed, world, index), and its command line.
- ``quantized``: what a correct compressed result is (the float-exact model's bits, its bound).
- ``runner``: running and checking those calls on an emulated world (one GPU).

Importing needs no GPU. Sits above ``collectives`` (nothing in the library imports it).
"""
from .fuzz import FuzzCall, algorithms, coverage, failure_line, fuzz_call, parse_reproducer, reproducer
from .numerics import (DTYPES, RESIDUAL_SENTINEL, TOLERANCE, check_close, dtype_name, fused_problems, poison, poisoned,
                       rank_input, rank_inputs, reference_all_gather, reference_all_reduce, reference_fused,
                       reference_reduce_scatter, rel_err, same_bits, sharded_residual, still_poisoned, tolerance)
from .ranks import all_true, digest, first_error, gather, rank0, rank_world, same_on_ranks

__all__ = ["DTYPES", "TOLERANCE", "RESIDUAL_SENTINEL", "dtype_name", "tolerance", "rel_err", "check_close",
           "rank_input", "rank_inputs", "poison", "poisoned", "still_poisoned", "same_bits", "reference_all_reduce",
           "reference_reduce_scatter", "reference_all_gather", "reference_fused", "sharded_residual", "fused_problems",
           "rank_world", "gather", "all_true", "first_error", "rank0", "digest", "same_on_ranks",
           "FuzzCall", "algorithms", "fuzz_call", "coverage", "failure_line", "reproducer", "parse_reproducer"]
