"""Collectives on symmetric memory: all-reduce, reduce-scatter, all-gather, fused AR+RMSNorm."""
from .communicator import CommOptions, Communicator, default
from .plan import owned_rows

__all__ = ["Communicator", "CommOptions", "default", "owned_rows"]
