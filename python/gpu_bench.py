"""GPU benchmark of one ΔConvBlock: backend `triton` vs the same block composed of torch ops vs a full SDPA
self-attention layer, forward and forward+backward, at PixArt-1024 and the SD1.5 attention levels.

Usage (on a CUDA machine, from the repository root):  PYTHONPATH=. python python/gpu_bench.py [--dtype fp16]
Prints a markdown table of triton.testing.do_bench medians (microseconds) with the device name.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

from deltaconv_kernels import DeltaConvBlock

# (name, B, H, W, C, K, gate, heads of the SDPA layer it replaces)
SHAPES = (
    ("PixArt-1024", 2, 64, 64, 1152, 13, "sigmoid", 16),
    ("SD1.5 64x64", 2, 64, 64, 320, 7, "scaled", 8),
    ("SD1.5 32x32", 2, 32, 32, 640, 9, "scaled", 8),
    ("SD1.5 16x16", 2, 16, 16, 1280, 5, "scaled", 8),
)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class ComposedTorchBlock(nn.Module):
    """The block from stock torch ops: channels-last cuDNN depthwise conv, adaptive_avg_pool2d, interpolate."""

    def __init__(self, block: DeltaConvBlock):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blk = self.block
        b, h, w, c = x.shape
        u = blk.proj_in(x).permute(0, 3, 1, 2)  # NCHW view of channels-last memory
        outs = []
        for stage, s in zip(blk.stages, blk.scales):
            t = u if s == 1.0 else F.adaptive_avg_pool2d(u, (int(h * s), int(w * s)))
            wt = stage.weight.permute(2, 0, 1)[:, None]
            d = F.conv2d(t, wt, padding=wt.shape[-1] // 2, groups=t.shape[1])
            a, g = d.chunk(2, dim=1)
            z = a * torch.sigmoid(g) if blk.gate == "sigmoid" else a * g * blk.gate_scale
            if s != 1.0:
                z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
            outs.append(z)
        concat = torch.cat(outs, dim=1).permute(0, 2, 3, 1)
        y = blk.proj_out(concat)
        return y + blk.pool_proj(x.mean(dim=(1, 2)))[:, None, None, :]


class SDPASelfAttention(nn.Module):
    """QKV and out projections around F.scaled_dot_product_attention (the layer a ΔConvBlock replaces)."""

    def __init__(self, dim: int, heads: int, device, dtype):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, device=device, dtype=dtype)
        self.out = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        q, k, v = self.qkv(x.reshape(b, h * w, c)).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, h * w, c)).view(b, h, w, c)


def _time_us(fn, backward: bool, x: torch.Tensor) -> float:
    from triton.testing import do_bench

    if backward:
        def step():
            x.grad = None
            fn(x).sum().backward()
    else:
        def step():
            with torch.no_grad():
                fn(x)
    return do_bench(step, warmup=25, rep=200, return_mode="median") * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench.py needs a CUDA device (torch.cuda.is_available() is False)")
    dtype = DTYPES[args.dtype]
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()}, dtype {args.dtype}, triton.testing.do_bench median, microseconds")
    print()
    print("| shape | B | HxW | C | K | pass | triton block | torch block | SDPA layer | torch/triton | SDPA/triton |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, b, h, w, c, k, gate, heads in SHAPES:
        torch.manual_seed(0)
        block = DeltaConvBlock(c, kernel_size=k, gate=gate, backend="triton", device=dev, dtype=dtype)
        composed = ComposedTorchBlock(block)
        attn = SDPASelfAttention(c, heads, dev, dtype)
        x = torch.randn(b, h, w, c, device=dev, dtype=dtype, requires_grad=True)
        torch.testing.assert_close(block(x), composed(x), atol=5e-2 * math.sqrt(k), rtol=5e-2)  # sanity only
        for backward in (False, True):
            t_tri, t_torch, t_sdpa = (_time_us(f, backward, x) for f in (block, composed, attn))
            print(f"| {name} | {b} | {h}x{w} | {c} | {k} | {'fwd+bwd' if backward else 'fwd'} | {t_tri:.1f} | "
                  f"{t_torch:.1f} | {t_sdpa:.1f} | {t_torch / t_tri:.2f}x | {t_sdpa / t_tri:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
