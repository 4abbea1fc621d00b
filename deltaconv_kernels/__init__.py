"""deltaconv_kernels: ΔConvFusion's Pyramid Convolution Block with fused kernels."""

from deltaconv_kernels.modules import DeltaConvBlock
from deltaconv_kernels.ops import BackendUnavailableError, available_backends, pooled_bias, pyramid

__all__ = ["BackendUnavailableError", "DeltaConvBlock", "available_backends", "pooled_bias", "pyramid"]
__version__ = "0.1.0"


def __getattr__(name):  # `deltaconv_kernels.parallel` / `patch_parallel` import torch.distributed only when used
    if name in ("parallel", "patch_parallel"):
        import importlib
        module = importlib.import_module("deltaconv_kernels.parallel")
        return module if name == "parallel" else module.patch_parallel
    raise AttributeError(f"module 'deltaconv_kernels' has no attribute {name!r}")
