"""The overlap layer, on the communicator's async ops (``collectives.work``):

- ``weave``: a chain of (compute, collective) steps over token chunks, each chunk's collective on
  the side stream beside the next chunk's compute (TokenWeave's schedule, any model);
- ``all_gather_matmul`` / ``matmul_reduce_scatter``: the same overlap for GEMMs fed by an
  all-gather or feeding a reduce-scatter, by row chunks;
- the wave-aware split planner (``candidates``) and its measured refinement (``SplitTuner``).
"""
from .gemm import all_gather_matmul, matmul_reduce_scatter, row_chunks
from .split import Candidate, CommModel, LayerShape, candidates, gemm_waves, predict_us, variants
from .tuner import SplitTuner
from .weave import Chunk, Step, chunks, weave

__all__ = ["weave", "Step", "Chunk", "chunks", "all_gather_matmul", "matmul_reduce_scatter", "row_chunks",
           "LayerShape", "CommModel", "Candidate", "gemm_waves", "predict_us", "candidates", "variants", "SplitTuner"]
