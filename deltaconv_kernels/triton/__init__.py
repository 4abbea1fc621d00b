"""Fused Triton kernels for the ΔConvBlock (docs/DESIGN.md §2): pyramid stage forward/backward and the pooled-bias mean.

Modules: `index_math` (shared @triton.jit helpers: adaptive windows, bilinear taps, the K x K tap loop),
`pyramid_fwd` / `pyramid_bwd` (kernels + launchers for one pyramid), `pooled_bias` (mean over H, W),
`launch` (tile choice, autotune configs, argument checks). Importing this package imports `triton`.
"""

from deltaconv_kernels.triton.pooled_bias import pooled_bias
from deltaconv_kernels.triton.pyramid_bwd import pyramid_backward
from deltaconv_kernels.triton.pyramid_fwd import pyramid_forward

__all__ = ["pooled_bias", "pyramid_backward", "pyramid_forward"]
