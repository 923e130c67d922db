"""torch.compile integration: the fused op in users' graphs.

``FuseAllReduceRMSNorm`` is an Inductor pass that rewrites ``all_reduce -> + residual -> RMSNorm``
(``torch.distributed.all_reduce`` or the functional collectives; ``F.rms_norm``, the fp32 formula
or Hugging Face's ``LlamaRMSNorm``) into ``torch.ops.weave_nvshmem.fused_allreduce_rmsnorm_functional``;
``fuse_allreduce_rmsnorm`` is the same rewrite on an FX graph, for other compilers. Importing this
package imports torch and registers ``torch.ops.weave_nvshmem``.
"""
from .fusion import fuse_allreduce_rmsnorm
from .inductor import FuseAllReduceRMSNorm

__all__ = ["FuseAllReduceRMSNorm", "fuse_allreduce_rmsnorm"]
