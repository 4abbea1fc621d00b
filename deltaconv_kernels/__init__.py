"""deltaconv_kernels: ΔConvFusion's Pyramid Convolution Block with fused kernels."""

from deltaconv_kernels.modules import DeltaConvBlock
from deltaconv_kernels.ops import BackendUnavailableError, available_backends, pooled_bias, pyramid

__all__ = ["BackendUnavailableError", "DeltaConvBlock", "available_backends", "pooled_bias", "pyramid"]
__version__ = "0.1.0"
