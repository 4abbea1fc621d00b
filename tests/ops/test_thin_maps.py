"""Thin token maps (docs/DESIGN.md §1: a stage pools to `max(1, int(H*s))` per axis): one `pooled_size` for every
backend, the reference and the FLOP counts; a 4x1 map at scale 0.5 runs, as a 200x40 px SD1.5 image does."""

import pytest
import torch

from deltaconv_kernels import DeltaConvBlock, flops, ops, reference
from deltaconv_kernels.geometry import pooled_size
from deltaconv_kernels.testing import check_pyramid_backend

THIN = [(1, 4, 1), (2, 1, 6), (1, 1, 1), (1, 3, 2), (1, 2, 9)]
AVAILABLE = [n for n, i in ops.available_backends().items() if i.available]


def _backend_param(name):
    marks = []
    if name not in AVAILABLE:
        marks.append(pytest.mark.skip(reason=f"backend {name} unavailable here"))
    return pytest.param(name, marks=marks)


def test_pooled_size_floor_of_one():
    assert pooled_size(4, 1, 0.5) == (2, 1)
    assert pooled_size(1, 5, 0.5) == (1, 2)
    assert pooled_size(25, 5, 0.25) == (6, 1)
    assert pooled_size(7, 7, 1.0) == (7, 7)


@pytest.mark.parametrize("backend", [_backend_param(n) for n in ("torch", "cpu", "triton", "cuda")])
@pytest.mark.parametrize("b,h,w", THIN)
def test_thin_map_every_backend_matches_reference(backend, b, h, w, gen):
    device = "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) else "cpu"
    check_pyramid_backend(backend, (b, h, w, 6, 3, (1.0, 0.5, 0.25), "scaled"), torch.float32, device, gen)


def test_reference_thin_map_equals_adaptive_pool(gen):
    # The 4x1 map at s=0.5 pools to 2x1 (the released code would ask for 2x0 and crash).
    u = torch.randn(1, 4, 1, 4, generator=gen, dtype=torch.float64)
    pooled = reference.adaptive_avg_pool(u, *pooled_size(4, 1, 0.5))
    expected = torch.nn.functional.adaptive_avg_pool2d(u.permute(0, 3, 1, 2), (2, 1)).permute(0, 2, 3, 1)
    assert tuple(pooled.shape[1:3]) == (2, 1)
    torch.testing.assert_close(pooled, expected, rtol=1e-12, atol=1e-12)


def test_block_on_a_4x1_token_map():
    block = DeltaConvBlock(8, kernel_size=3, scales=(1.0, 0.5))
    y = block(torch.randn(2, 4, 8), size=(4, 1))
    assert y.shape == (2, 4, 8) and torch.isfinite(y).all()


def test_flops_use_the_same_pooled_size():
    c, k = 8, 3
    ci = c // 2
    got = flops.deltaconv(4, 1, c, k, scales=(1.0, 0.5), batch=1).conv
    assert got == sum(2 * k * k * pooled_size(4, 1, s)[0] * pooled_size(4, 1, s)[1] * ci for s in (1.0, 0.5))
    assert got > flops.deltaconv(4, 1, c, k, scales=(1.0,), batch=1).conv  # the pooled stage counts one pixel row


def test_thin_image_runs_through_a_converted_unet():
    pytest.importorskip("diffusers")
    from tiny_models import tiny_unet, unet_inputs

    from deltaconv_kernels.integrations import diffusers as dd

    base = tiny_unet("sd15")
    with torch.no_grad():  # 200x40 px -> 25x5 latents: the deeper levels see 7x2 and 4x1 maps
        base(*unet_inputs(base, batch=1, height=25, width=5))
    model = tiny_unet("sd15")
    dd.convert(model)
    with torch.no_grad():
        out = model(*unet_inputs(model, batch=1, height=25, width=5)).sample
    assert out.shape == (1, 4, 25, 5) and torch.isfinite(out).all()


def test_layer_errors_name_the_layer():
    pytest.importorskip("diffusers")
    from tiny_models import tiny_unet, unet_inputs

    from deltaconv_kernels.integrations import diffusers as dd

    model = tiny_unet("sd15")
    dd.convert(model)
    sample, t, ctx = unet_inputs(model, batch=1)
    model.to(torch.float64)
    name = next(iter(dd.iter_deltaconv_modules(model)))[0]
    layer = dict(model.named_modules())[name]
    layer.block.to(torch.float32)  # this layer alone disagrees with its input dtype
    with pytest.raises(TypeError, match=f"^{name}: x has dtype torch.float64"):
        with torch.no_grad():
            model(sample.double(), t, ctx.double())
