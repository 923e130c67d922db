"""Collectives on symmetric memory: all-reduce, reduce-scatter, all-gather, fused AR+RMSNorm.

Modules: ``communicator`` (the owner object; ops as validate -> plan -> launch), ``calls``
(argument checks), ``plan`` (the kernel-table entry, grid, block, flags and why), ``tuning``
(tuning tables), ``channel`` (workspaces and their size), ``fabric`` (what a communicator stands
on: ``NvshmemFabric``), ``emulated`` (W virtual ranks on one GPU), ``reference`` (float64 math),
``ops`` (torch.library registrations).
"""
from .communicator import CommOptions, Communicator, default
from .plan import Launch, owned_rows

__all__ = ["Communicator", "CommOptions", "Launch", "default", "owned_rows"]
