"""Band-parallel pieces of a diffusers U-Net (docs/DESIGN.md §9): every spatial convolution gets its halo rows, a
stride-2 convolution (Downsample2D) moves to the next level's bands, Upsample2D's nearest interpolation reads the
rows its band's output needs from the coarser level's bands, and GroupNorm's statistics are all-reduced. Each
level's map is split evenly (`split_rows`); a level's bands need not be aligned with the next level's, since
every op fetches exactly the rows it reads (alignment only saves bytes). The current level is tracked in the
shared `BandState`: the down path's strided convolutions go one level down, the upsamplers one level up."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deltaconv_kernels.parallel.bands import split_rows


class BandConv2d:
    """Replaces a Conv2d's forward (K x K, stride 1 or 2, zero padding): this band's output rows from the input
    rows it reads, fetched from the bands that hold them (zeros outside the map, as the global padding)."""

    def __init__(self, conv: nn.Conv2d, state):
        (kh, _), (sh, _), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        if conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"{type(conv).__name__} with dilation {conv.dilation}, padding {conv.padding!r} "
                             f"({conv.padding_mode}) is not supported by band parallelism")
        if sh == 1 and ph != kh // 2:
            raise ValueError(f"a stride-1 convolution must keep the height (padding K//2), got K={kh}, padding={ph}")
        self.conv, self.state = conv, state
        self.kh, self.sh, self.ph, self.pw = kh, sh, ph, pw

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        state, conv = self.state, self.conv
        rows_in, _ = state.level_size()
        bands_in = state.bands
        if self.sh == 1:
            bands_out = bands_in
        else:
            rows_out = (rows_in + 2 * self.ph - self.kh) // self.sh + 1
            cols_out = (x.shape[-1] + 2 * self.pw - conv.kernel_size[1]) // conv.stride[1] + 1
            bands_out = state.enter(state.level + 1, rows_out, cols_out)
        needs = [(a * self.sh - self.ph, (b - 1) * self.sh - self.ph + self.kh) for a, b in bands_out]
        window = state.comm.gather_rows(x, 2, bands_in, needs, kind="conv halo")
        return F.conv2d(window, conv.weight, conv.bias, stride=conv.stride, padding=(0, self.pw),
                        groups=conv.groups)


class BandGroupNorm:
    """Replaces a GroupNorm's forward: per-sample, per-group mean and (biased) variance of the whole map from
    all-reduced fp32 sums (two passes: the mean, then the squared deviations, as exact as one process)."""

    def __init__(self, norm: nn.GroupNorm, state):
        self.norm, self.state = norm, state

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        norm, comm = self.norm, self.state.comm
        rows, cols = self.state.level_size()
        b, c = x.shape[:2]
        g = norm.num_groups
        count = (c // g) * rows * cols
        t = x.float().reshape(b, g, -1)
        mean = comm.all_reduce_sum(t.sum(dim=-1), kind="groupnorm") / count
        centred = t - mean[..., None]
        var = comm.all_reduce_sum(centred.pow(2).sum(dim=-1), kind="groupnorm") / count
        y = (centred * torch.rsqrt(var + norm.eps)[..., None]).reshape(x.shape)
        if norm.affine:
            y = y * norm.weight.float()[None, :, None, None] + norm.bias.float()[None, :, None, None]
        return y.to(x.dtype)


class BandUpsample2D:
    """Replaces a diffusers Upsample2D's forward (nearest interpolation, then its conv): the output is the finer
    level's band; its source rows (`floor(dst * in / out)`, as F.interpolate computes them) come from the
    coarser level's bands. The U-Net's `output_size` (a band's shape here) is not used: the finer level's size
    was recorded on the way down."""

    def __init__(self, up: nn.Module, state):
        if up.use_conv_transpose or not up.interpolate or up.norm is not None or up.name != "conv":
            raise ValueError("only Upsample2D with nearest interpolation and a plain conv is supported by band "
                             "parallelism")
        self.up, self.state = up, state

    def __call__(self, x: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        state = self.state
        rows_in, _ = state.level_size()
        bands_in = state.bands
        bands_out = state.enter(state.level - 1)
        rows_out, cols_out = state.level_size()
        src = F.interpolate(torch.arange(rows_in, dtype=torch.float32).view(1, 1, rows_in, 1), size=(rows_out, 1),
                            mode="nearest").view(-1).long()
        needs = [(int(src[a]), int(src[b - 1]) + 1) for a, b in bands_out]
        window = state.comm.gather_rows(x, 2, bands_in, needs, kind="upsample rows")
        a, b = bands_out[state.comm.rank]
        rows = window.index_select(2, (src[a:b] - needs[state.comm.rank][0]).to(x.device))
        y = F.interpolate(rows, size=(b - a, cols_out), mode="nearest")
        return self.up.conv(y) if self.up.use_conv else y


def unet_patches(model: nn.Module, state) -> list[tuple[nn.Module, object]]:
    """(module, replacement forward) for every spatial op of a UNet2DConditionModel that is not token-wise."""
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D
    patches = []
    for name, module in model.named_modules():
        if isinstance(module, ResnetBlock2D) and (module.up or module.down):
            raise ValueError(f"{name}: a ResnetBlock2D that resamples is not supported by band parallelism")
        if isinstance(module, Downsample2D) and (module.padding == 0 or not module.use_conv):
            raise ValueError(f"{name}: Downsample2D without a padded conv is not supported by band parallelism")
        if isinstance(module, Upsample2D):
            patches.append((module, BandUpsample2D(module, state)))
        elif isinstance(module, nn.GroupNorm):
            patches.append((module, BandGroupNorm(module, state)))
        elif isinstance(module, nn.Conv2d) and (module.kernel_size[0] > 1 or module.stride[0] > 1):
            patches.append((module, BandConv2d(module, state)))
    return patches


def level_bands(rows: int, world: int, level: int) -> tuple:
    """Even bands of a level's map; refuses a map with fewer rows than ranks (a rank would hold nothing)."""
    if rows < world:
        raise ValueError(f"the U-Net's level {level} map has {rows} rows, fewer than the {world} ranks: use fewer "
                         "ranks or a larger image")
    return split_rows(rows, world)
