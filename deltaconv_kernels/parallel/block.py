"""The band-parallel ΔConvBlock forward (docs/DESIGN.md §9): each rank holds a contiguous band of rows of the
`[B, H, W, C]` map and computes exactly those rows of the one-process block's output.

Per stage (K = kernel size, r = K//2):
- s = 1: the band's `u` widened by r rows from the neighbours (several neighbours when a band is thinner than
  r; zeros outside the map, as the global zero padding) goes through the backend's own stage, and the band's
  rows of the result are kept;
- s < 1: pooled row `o` averages input rows `[floor(o*H/Hs), ceil((o+1)*H/Hs))` (reference.adaptive_window). Each
  rank pools its rows' share of every window it touches (partial sums, already divided by the window's size),
  the rank holding a window's first row owns that pooled row and adds the other ranks' shares. Then each rank
  fetches the pooled rows its output needs: those the bilinear upsample of its band reads (two taps per output
  row) widened by r for the pooled conv; the backend's s = 1 stage runs on them in fp32 and the band's rows are
  upsampled with the global geometry;
- the pooled bias: an all-reduce of the band's fp32 sums of `x` (B x C numbers) divided by the global H*W.
The arithmetic is the one-process block's but for summation order (pool windows and the mean of x)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltaconv_kernels import ops, reference
from deltaconv_kernels.geometry import pooled_size
from deltaconv_kernels.parallel.bands import Band, overlap, widen
from deltaconv_kernels.parallel.comm import BandComm


def pooled_owners(bands: list[Band], rows: int, pooled_rows: int) -> list[Band]:
    """The pooled rows each rank owns: those whose window starts in its band (contiguous, maybe empty)."""
    starts = [reference.adaptive_window(o, rows, pooled_rows)[0] for o in range(pooled_rows)]
    owned = []
    for s, e in bands:
        first = next((o for o, a in enumerate(starts) if a >= s), pooled_rows)
        last = next((o for o, a in enumerate(starts) if a >= e), pooled_rows)
        owned.append((first, last))
    return owned


def touched_windows(band: Band, rows: int, pooled_rows: int) -> Band:
    """The pooled rows whose windows intersect `band` (contiguous; empty for an empty band)."""
    hit = [o for o in range(pooled_rows)
           if band[0] < band[1] and overlap(band, reference.adaptive_window(o, rows, pooled_rows)) is not None]
    return (hit[0], hit[-1] + 1) if hit else (0, 0)


def upsample_sources(band: Band, rows: int, pooled_rows: int) -> Band:
    """The pooled rows the bilinear upsample reads for output rows `band` (both taps, global geometry)."""
    if band[0] >= band[1]:
        return (0, 0)
    i0, i1, _ = reference.bilinear_source(torch.tensor([band[0], band[1] - 1]), pooled_rows, rows)
    return int(i0[0]), int(i1[1]) + 1


def _partial_pool(u: torch.Tensor, band: Band, rows: int, pooled: tuple[int, int], windows: Band) -> torch.Tensor:
    """This band's share of pooled rows `windows`: per window, the sum of its rows inside the band over the
    window's full size, pooled along the (whole) width. fp32 (fp64 for fp64)."""
    hs, ws = pooled
    t = u.to(reference.compute_dtype(u.dtype))
    shares = []
    for o in range(*windows):
        a, b = reference.adaptive_window(o, rows, hs)
        s, e = overlap((a, b), band)
        shares.append(t.narrow(1, s - band[0], e - s).sum(dim=1, keepdim=True) / (b - a))
    cat = torch.cat(shares, dim=1) if shares else t.new_zeros(t.shape[0], 0, t.shape[2], t.shape[3])
    return reference.adaptive_avg_pool(cat, cat.shape[1], ws) if shares else cat.new_zeros(
        t.shape[0], 0, ws, t.shape[3])


def _upsample_band(z: torch.Tensor, first: int, pooled_rows: int, band: Band, rows: int,
                   width: int) -> torch.Tensor:
    """Rows `band` of the bilinear upsample (align_corners=False) to `rows x width` of a `pooled_rows`-row map
    whose rows `[first, first + z.shape[1])` are `z`; the taps and arithmetic of reference.bilinear_upsample."""
    i0, i1, ly = reference.bilinear_source(torch.arange(band[0], band[1], device=z.device), pooled_rows, rows)
    ly = ly.to(z.dtype)[None, :, None, None]
    t = z.index_select(1, i0 - first) * (1 - ly) + z.index_select(1, i1 - first) * ly
    j0, j1, lx = reference.bilinear_source(torch.arange(width, device=z.device), z.shape[2], width)
    lx = lx.to(z.dtype)[None, None, :, None]
    return t.index_select(2, j0) * (1 - lx) + t.index_select(2, j1) * lx


def _pooled_stage(comm: BandComm, u: torch.Tensor, weight: torch.Tensor, scale: float, bands: list[Band],
                  width: int, gate: str, gate_scale: float, backend) -> torch.Tensor:
    rows = bands[-1][1]
    hs, ws = pooled_size(rows, width, scale)
    r = weight.shape[0] // 2
    band = bands[comm.rank]
    owned = pooled_owners(bands, rows, hs)
    touched = [touched_windows(b, rows, hs) for b in bands]
    partial = _partial_pool(u, band, rows, (hs, ws), touched[comm.rank])
    pooled = comm.sum_rows(partial, 1, touched, owned, kind="pooled partial sums")
    needs = [widen(upsample_sources(b, rows, hs), r, r) if b[0] < b[1] else (0, 0) for b in bands]
    window = comm.gather_rows(pooled, 1, owned, needs, kind="pooled halo")
    if band[0] >= band[1]:
        return u.new_zeros(u.shape[0], 0, width, u.shape[3] // 2)
    cd = reference.compute_dtype(u.dtype)
    z = ops.pyramid(window, [weight.to(cd)], (1.0,), gate, gate_scale, backend)
    z = z.narrow(1, r, window.shape[1] - 2 * r)
    first = needs[comm.rank][0] + r
    return _upsample_band(z, first, hs, band, rows, width).to(u.dtype)


def _full_stage(comm: BandComm, u: torch.Tensor, weight: torch.Tensor, bands: list[Band], gate: str,
                gate_scale: float, backend) -> torch.Tensor:
    r = weight.shape[0] // 2
    needs = [widen(b, r, r) if b[0] < b[1] else (0, 0) for b in bands]
    window = comm.gather_rows(u, 1, bands, needs, kind="halo")
    if u.shape[1] == 0:
        return u.new_zeros(u.shape[0], 0, u.shape[2], u.shape[3] // 2)
    z = ops.pyramid(window, [weight], (1.0,), gate, gate_scale, backend)
    return z.narrow(1, r, u.shape[1])


def band_pooled_bias(comm: BandComm, x: torch.Tensor, rows: int, weight: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """reference.pooled_bias of the whole map from this band: fp32 partial sums all-reduced, then the mean."""
    cd = reference.compute_dtype(x.dtype)
    total = comm.all_reduce_sum(x.to(cd).sum(dim=(1, 2)), kind="pooled bias")
    mean = total / (rows * x.shape[2])
    return F.linear(mean, weight.to(cd), bias.to(cd)).to(x.dtype)


def refuse_autograd(module, *tensors: torch.Tensor) -> None:
    """Band parallelism is inference only: the exchanged rows carry no gradient back to the rank that sent them,
    so a backward pass would silently differ from one process. Refuse unless autograd is off or nothing needs it."""
    if torch.is_grad_enabled() and (any(t.requires_grad for t in tensors)
                                    or any(p.requires_grad for p in module.parameters())):
        raise RuntimeError("band parallelism runs inference only (gradients would not flow back through the rows "
                           "exchanged between ranks): call it under torch.no_grad() or torch.inference_mode()")


def band_block_forward(block, x: torch.Tensor, comm: BandComm, bands: list[Band]) -> torch.Tensor:
    """Rows `bands[comm.rank]` of `block(whole_map)`, from this rank's band `x` `[B, h, W, C]` of the map whose
    rows are split as `bands` across the ranks of `comm` (every rank calls this with the same `bands`).
    Inference only (`refuse_autograd`)."""
    refuse_autograd(block, x)
    band = bands[comm.rank]
    if x.dim() != 4 or x.shape[1] != band[1] - band[0] or x.shape[3] != block.dim:
        raise ValueError(f"x must be this rank's band [B, {band[1] - band[0]}, W, {block.dim}] of rows "
                         f"[{band[0]}, {band[1]}), got shape {tuple(x.shape)}")
    rows, width = bands[-1][1], x.shape[2]
    in_w, in_b = block.proj_in()
    if x.dtype != in_w.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the block's parameters are {in_w.dtype}")
    b = x.shape[0]
    u = F.linear(x, in_w, in_b)
    stages = []
    for stage, scale in zip(block.stages, block.scales):
        w = stage()
        if scale == 1.0:
            stages.append(_full_stage(comm, u, w, bands, block.gate, block.gate_scale, block.backend))
        else:
            stages.append(_pooled_stage(comm, u, w, scale, bands, width, block.gate, block.gate_scale,
                                        block.backend))
    concat = torch.cat(stages, dim=-1)
    pool_w, pool_b = block.pool_proj()
    bias = band_pooled_bias(comm, x, rows, pool_w, pool_b)
    out_w, out_b = block.proj_out()
    total_bias = (bias + out_b.to(bias.dtype)).to(concat.dtype)
    h = x.shape[1]
    y = torch.baddbmm(total_bias[:, None, :], concat.reshape(b, h * width, -1),
                      out_w.to(concat.dtype).t().expand(b, -1, -1))
    return y.view(b, h, width, -1)
