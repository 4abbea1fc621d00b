"""`DeltaConvBlock`: the Pyramid Convolution Block that replaces self-attention (docs/DESIGN.md §1)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from deltaconv_kernels import ops, validation
from deltaconv_kernels.reference import default_gate_scale


class DeltaConvBlock(nn.Module):
    """Channels-last ΔConvBlock: in-projection, pyramid of depthwise-conv gated stages, out-projection and a
    pooled-bias branch. Takes `[B, H, W, C]`, or `[B, N, C]` with `size=(H, W)`, and returns the same shape.

    Parameter names and layouts are public (checkpoints rely on them): `proj_in` `[Ci, C]`, `stages.{i}.weight`
    `[K, K, Ci]`, `proj_out` `[C, Ci/2 * S]`, `pool_proj` `[C, C]`.
    """

    def __init__(self, dim: int, kernel_size: int = 13, scales=(1.0, 0.5), inter_ratio: float = 0.5,
                 gate: str = "scaled", gate_scale: float | None = None, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.kernel_size = validation.check_kernel_size(kernel_size)
        self.scales = validation.check_scales(scales)
        self.gate = validation.check_gate(gate)
        self.inner_dim = validation.check_inner_channels(dim, inter_ratio)
        self.inter_ratio = float(inter_ratio)
        self.gate_scale = (validation.check_gate_scale(gate_scale) if gate_scale is not None
                           else default_gate_scale(self.inner_dim))
        if backend is not None and backend not in ops.registry.BACKENDS:
            raise ValueError(f"backend must be one of {ops.registry.BACKENDS} or None, got {backend!r}")
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.proj_in = _Projection(dim, self.inner_dim, **factory)
        self.stages = nn.ModuleList(_DepthwiseKernel(kernel_size, self.inner_dim, **factory) for _ in self.scales)
        self.proj_out = _Projection(self.inner_dim // 2 * len(self.scales), dim, **factory)
        self.pool_proj = _Projection(dim, dim, **factory)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        spatial = validation.as_spatial(x, size, self.dim)
        # Every parameter is fetched by calling the submodule that holds it (never `.weight` read directly), so
        # per-module hooks that bring weights in at call time (accelerate's cpu_offload, device_map offload) see
        # each use.
        in_w, in_b = self.proj_in()
        if spatial.dtype != in_w.dtype and not torch.is_autocast_enabled(spatial.device.type):
            raise TypeError(f"x has dtype {spatial.dtype} but the block's parameters are "
                            f"{in_w.dtype}: cast one of them (block.to(dtype)) or use autocast")
        if spatial.device != in_w.device:
            raise ValueError(f"x is on {spatial.device} but the block's parameters are on {in_w.device}")
        b, h, w, c = spatial.shape
        u = F.linear(spatial, in_w, in_b)
        concat = ops.pyramid(u, [stage() for stage in self.stages], self.scales, self.gate, self.gate_scale,
                             self.backend)
        pool_w, pool_b = self.pool_proj()
        bias = ops.pooled_bias(spatial, pool_w, pool_b, self.backend)
        # One batched GEMM with the per-sample bias (b_out + pooled bias) in its epilogue.
        out_w, out_b = self.proj_out()
        out_w = out_w.to(concat.dtype)
        total_bias = (bias + out_b.to(bias.dtype)).to(concat.dtype)
        y = torch.baddbmm(total_bias[:, None, :], concat.reshape(b, h * w, -1),
                          out_w.t().expand(b, -1, -1))
        return y.view(x.shape)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, inner_dim={self.inner_dim}, kernel_size={self.kernel_size}, scales={self.scales}, "
                f"gate={self.gate!r}, gate_scale={self.gate_scale:.4g}, backend={self.backend!r}")


class _DepthwiseKernel(nn.Module):
    """Holds one stage's `[K, K, Ci]` channels-last depthwise kernel as `.weight` (no bias)."""

    def __init__(self, kernel_size: int, channels: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(kernel_size, kernel_size, channels, device=device, dtype=dtype))
        self.reset_parameters()

    def forward(self) -> torch.Tensor:
        """The kernel (a call, so that hooks on this module run before it is used)."""
        return self.weight

    def reset_parameters(self) -> None:
        # As the released kernels: kaiming_uniform_ at its default a=0 on the [K, K, Ci] tensor (fan_in = K * Ci,
        # bound sqrt(6 / fan_in)).
        nn.init.kaiming_uniform_(self.weight)

    def extra_repr(self) -> str:
        return f"kernel_size={self.weight.shape[0]}, channels={self.weight.shape[2]}"


class _Projection(nn.Linear):
    """An `nn.Linear` (same parameters, same state-dict keys) whose call without input returns `(weight, bias)`:
    the block uses the tensors in fused ops, and fetching them by a call lets per-module hooks run first."""

    def forward(self, x: torch.Tensor | None = None):
        if x is None:
            return self.weight, self.bias
        return super().forward(x)
