"""TokenWeave overlap: wave-aware token splitting (plan) and its measured refinement (tuner)."""
from .split import Candidate, CommModel, LayerShape, candidates, gemm_waves, predict_us
from .tuner import SplitTuner

__all__ = ["LayerShape", "CommModel", "Candidate", "gemm_waves", "predict_us", "candidates", "SplitTuner"]
