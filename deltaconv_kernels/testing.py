"""The one tolerance table and the comparison helpers every correctness test uses.

A fast path is compared with the reference run on the same inputs upcast to fp64 (`reference_inputs`), by
two relative errors: the max error over max|ref| and the norm error ‖out − ref‖ / ‖ref‖. NaN never passes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Tolerance(NamedTuple):
    max_rel: float   # max|out - ref| / max|ref|
    norm_rel: float  # ||out - ref|| / ||ref||


# Output dtype -> tolerance. fp16/bf16 values are rounded once (eps 1e-3 / 8e-3); gradients through a K x K
# conv and pooling accumulate in fp32 but their inputs were rounded, hence the margin over eps.
TOLERANCES = {
    torch.float64: Tolerance(1e-10, 1e-11),
    torch.float32: Tolerance(2e-5, 5e-6),
    torch.float16: Tolerance(1e-2, 3e-3),
    torch.bfloat16: Tolerance(6e-2, 2e-2),
}

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def tolerance(dtype: torch.dtype) -> Tolerance:
    return TOLERANCES[dtype]


def relative_errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    diff = a - e
    scale_max = e.abs().max().clamp_min(1e-30)
    scale_norm = e.norm().clamp_min(1e-30)
    return (diff.abs().max() / scale_max).item(), (diff.norm() / scale_norm).item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 what: str = "output") -> None:
    """Fail unless `actual` matches `expected` within the table's tolerance for `dtype` (default: actual's)."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{what}: has non-finite values")
    tol = tolerance(dtype or actual.dtype)
    max_rel, norm_rel = relative_errors(actual, expected)
    if not (max_rel <= tol.max_rel and norm_rel <= tol.norm_rel):
        raise AssertionError(f"{what}: max_rel={max_rel:.3g} (tol {tol.max_rel:.1g}), "
                             f"norm_rel={norm_rel:.3g} (tol {tol.norm_rel:.1g}) for {dtype or actual.dtype}")


def reference_inputs(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Detached fp64 copies (requiring grad where the original did) for running the reference."""
    return [t.detach().to(torch.float64).requires_grad_(t.requires_grad) for t in tensors]


def random_like_grad(out: torch.Tensor, strided: bool = True, generator=None) -> torch.Tensor:
    """A random upstream gradient for `out`; `strided=True` gives a non-contiguous channel slice of a larger
    tensor, like the gradient of one stage of a `torch.cat` (the released Triton code got that wrong)."""
    if not strided:
        return torch.randn(out.shape, dtype=out.dtype, generator=generator).to(out.device)
    # Drawn on the CPU (where a seeded CPU generator works), then moved: same values on every device.
    big = torch.randn(*out.shape[:-1], out.shape[-1] * 2 + 3, dtype=out.dtype, generator=generator).to(out.device)
    g = big[..., 1:1 + out.shape[-1]]
    # A slice of a single row (all leading dims 1) is trivially contiguous; any larger one is strided.
    assert not g.is_contiguous() or out[..., 0].numel() <= 1
    return g


def random_pyramid_inputs(b: int, h: int, w: int, ci: int, k: int, n_stages: int, dtype: torch.dtype,
                          device="cpu", generator=None, strided_u: bool = False):
    """Random `u` `[B, H, W, Ci]` and `n_stages` kernels `[K, K, Ci]`, requiring grad. `strided_u=True` makes `u` a
    channel slice of a wider tensor (pixels not contiguous, channels still unit-stride)."""
    extra = 5 if strided_u else 0
    u = torch.randn(b, h, w, ci + extra, generator=generator)[..., 2 * bool(extra):2 * bool(extra) + ci]
    weights = [torch.randn(k, k, ci, generator=generator) * (1.5 / k) for _ in range(n_stages)]
    return (u.to(device, dtype).requires_grad_(),
            [wt.to(device, dtype).requires_grad_() for wt in weights])


def check_pyramid_backend(backend: str, case, dtype: torch.dtype, device="cpu", generator=None,
                          strided_u: bool = False, strided_grad: bool = True) -> None:
    """Run `ops.pyramid` on `backend` for `case = (b, h, w, ci, k, scales, gate)` and compare the output and the
    gradients of `u` and of every stage kernel with the reference on fp64 copies of the same inputs."""
    from deltaconv_kernels import ops, reference

    b, h, w, ci, k, scales, gate = case
    u, weights = random_pyramid_inputs(b, h, w, ci, k, len(scales), dtype, device, generator, strided_u)
    out = ops.pyramid(u, weights, scales, gate, backend=backend)
    grad = random_like_grad(out, strided=strided_grad, generator=generator)
    grads = torch.autograd.grad(out, [u, *weights], grad)
    ur, *wr = reference_inputs(u, *weights)
    ref = reference.pyramid(ur, wr, scales, gate)
    ref_grads = torch.autograd.grad(ref, [ur, *wr], grad.to(torch.float64))
    assert out.dtype == dtype and out.is_contiguous()
    assert_close(out, ref, dtype, "pyramid output")
    assert grads[0].dtype == dtype
    assert_close(grads[0], ref_grads[0], dtype, "grad_u")
    for i, (gw, rw) in enumerate(zip(grads[1:], ref_grads[1:])):
        assert gw.dtype == dtype
        assert_close(gw, rw, dtype, f"grad of weights[{i}]")


def check_block_backend(backend: str, dtype: torch.dtype, gate: str, device="cpu", generator=None,
                        b: int = 2, h: int = 7, w: int = 5, c: int = 16) -> None:
    """A whole `DeltaConvBlock` on `backend`, fed a `[B, N, C]` view, against the reference block: the output,
    the grad of x and every parameter grad (pooled bias included), upstream gradient strided."""
    from deltaconv_kernels import reference
    from deltaconv_kernels.modules import DeltaConvBlock

    if generator is not None:
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    block = DeltaConvBlock(c, kernel_size=3, scales=(1.0, 0.5), gate=gate, backend=backend).to(device, dtype)
    x = torch.randn(b, h * w, c, generator=generator).to(device, dtype).requires_grad_()
    y = block(x, size=(h, w))
    params = dict(block.named_parameters())
    grad = random_like_grad(y, generator=generator)
    grads = torch.autograd.grad(y, [x, *params.values()], grad)
    xr, *pr = reference_inputs(x, *params.values())
    p = dict(zip(params, pr))
    stage_w = [p[f"stages.{i}.weight"] for i in range(len(block.scales))]
    ref = reference.deltaconv_block(xr.unflatten(1, (h, w)), p["proj_in.weight"], p["proj_in.bias"], stage_w,
                                    block.scales, p["proj_out.weight"], p["proj_out.bias"], p["pool_proj.weight"],
                                    p["pool_proj.bias"], gate, block.gate_scale).flatten(1, 2)
    ref_grads = torch.autograd.grad(ref, [xr, *pr], grad.to(torch.float64))
    assert_close(y, ref, dtype, "block output")
    assert_close(grads[0], ref_grads[0], dtype, "grad x")
    for name, g, rg in zip(params, grads[1:], ref_grads[1:]):
        assert_close(g, rg, dtype, f"grad {name}")


def check_map_16k(backend: str) -> None:
    """A 1 x 2048 x 2048 x 576 fp16 map (2.4e9 elements > 2^31) on a GPU backend: the last rows of the s=1 stage and
    the spatial mean are right only with 64-bit addressing. Needs ~24 GB free on the GPU."""
    from deltaconv_kernels import ops, reference

    h = w = 2048
    ci = 576
    g = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(1, h, w, ci, device="cuda", dtype=torch.float16, generator=g)
    weights = [torch.randn(5, 5, ci, device="cuda", dtype=torch.float16, generator=g) * 0.3 for _ in range(2)]
    out = ops.pyramid(u, weights, (1.0, 0.5), "sigmoid", backend=backend)
    # Stage 0 (s=1) on the last 14 rows only needs the last 18 rows of u.
    crop = u[:, -18:].double()
    ref = reference.pyramid_stage(crop, weights[0].double(), 1.0, "sigmoid", reference.default_gate_scale(ci))
    assert_close(out[:, -14:, :, :ci // 2], ref[:, -14:], torch.float16, "last rows of a 16K map")
    mean = ops.pooled_bias(u, torch.eye(ci, device="cuda", dtype=torch.float16),
                           torch.zeros(ci, device="cuda", dtype=torch.float16), backend=backend)
    assert_close(mean, u.float().mean(dim=(1, 2)).half(), torch.float16, "16K mean")
