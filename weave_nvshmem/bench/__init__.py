"""Benchmarks of weave_nvshmem against what an inference engine runs, all in CUDA graphs.

Modules: ``harness`` (the public timing method: ``Harness``, ``InputSets``), ``baselines`` (NCCL,
torch SymmetricMemory, the shared fused add+RMSNorm), ``variants`` (what each suite times),
``suites`` (allreduce, fused, reducescatter/allgather, norm, tune), ``report`` / ``tables`` /
``norm_tables`` (JSON, markdown, PNG), ``provenance`` (device, world, commit, versions) and
``cli`` (``weave-bench``, ``python -m weave_nvshmem.bench``). Rank agreement is
``weave_nvshmem.testing``'s.
Importing it needs no GPU.
"""
