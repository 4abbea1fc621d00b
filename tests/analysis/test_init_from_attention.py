"""The closed-form attention-informed initialisation (docs/DESIGN.md §10): on a layer whose attention is translation-
invariant, the initialised block computes exactly `conv_{mean pattern}(M x) + beta M mean(x) + c`."""

from __future__ import annotations

import pytest
import torch

from deltaconv_kernels.analysis.attention_stats import AttentionStatistics, load_statistics, save_statistics
from deltaconv_kernels.analysis.capture import CapturedMaps
from deltaconv_kernels.init_from_attention import LayerStatistics, closed_form_init, value_path
from deltaconv_kernels.modules import DeltaConvBlock
from deltaconv_kernels.reference import depthwise_conv

H, W, C = 9, 8, 8


def _pattern(radius: int, gen) -> torch.Tensor:
    """A positive relative pattern supported on the (2 radius + 1)^2 window, summing to 1, as [2H-1, 2W-1]."""
    full = torch.zeros(2 * H - 1, 2 * W - 1, dtype=torch.float64)
    k = 2 * radius + 1
    full[H - 1 - radius:H + radius, W - 1 - radius:W + radius] = torch.rand(k, k, generator=gen,
                                                                           dtype=torch.float64) + 0.1
    return full / full.sum()


def _translation_invariant_maps(pattern: torch.Tensor, queries, heads: int = 2, batch: int = 2):
    """Softmax rows A[q, j] = pattern(j - q) of interior queries (whose window lies inside the map)."""
    qy = torch.tensor([q[0] for q in queries])
    qx = torch.tensor([q[1] for q in queries])
    maps = torch.stack([pattern[H - 1 - y:2 * H - 1 - y, W - 1 - x:2 * W - 1 - x] for y, x in queries])
    return qy, qx, maps.float()[None, None].expand(batch, heads, -1, -1, -1).contiguous()


def _expected(x: torch.Tensor, kernel: torch.Tensor, m: torch.Tensor, c: torch.Tensor, beta: float) -> torch.Tensor:
    mx = x.double() @ m.t()
    conv = depthwise_conv(mx, kernel[:, :, None].expand(-1, -1, C).contiguous())
    return conv + beta * (x.double().mean((1, 2)) @ m.t())[:, None, None, :] + c


@pytest.mark.parametrize("gate", ["scaled", "sigmoid"])
@pytest.mark.parametrize("inter_ratio,rank_m", [(2.0, C), (0.5, 2)])
@pytest.mark.parametrize("scales", [(1.0,), (1.0, 0.5), (0.5, 1.0, 0.25)])
@pytest.mark.parametrize("k,radius", [(5, 2), (3, 2)])
def test_translation_invariant_layer_is_reproduced_exactly(gate, inter_ratio, rank_m, scales, k, radius):
    gen = torch.Generator().manual_seed(0)
    pattern = _pattern(radius, gen)
    queries = [(y, x) for y in range(radius, H - radius) for x in range(radius, W - radius)]
    stats = AttentionStatistics()
    qy, qx, maps = _translation_invariant_maps(pattern, queries)
    stats(CapturedMaps("layer", 0, (H, W), qy, qx, maps, 0, 2))
    x = torch.randn(3, H, W, C, generator=gen, dtype=torch.float64)
    stats.input_hook("layer")(None, (x.reshape(3, H * W, C),), {})
    layer = stats.results()["layer"]
    torch.testing.assert_close(layer.pattern, pattern, rtol=0, atol=1e-7)  # the capture sees it back

    inner = int(C * inter_ratio)
    w_v = torch.randn(inner, C, generator=gen, dtype=torch.float64)
    w_o = torch.randn(C, inner, generator=gen, dtype=torch.float64)
    if rank_m < C:  # a value path of rank <= Ci/2, which the block's rank-Ci/2 path holds exactly
        w_v = torch.randn(inner, rank_m, generator=gen, dtype=torch.float64) @ torch.randn(
            rank_m, C, generator=gen, dtype=torch.float64)
    b_v, b_o = torch.randn(inner, generator=gen, dtype=torch.float64), torch.randn(C, generator=gen,
                                                                                  dtype=torch.float64)
    m, c = value_path(w_v, b_v, w_o, b_o)
    block = DeltaConvBlock(C, k, scales, inter_ratio, gate, backend="torch", dtype=torch.float64)
    record = closed_form_init(block, layer, m, c)
    r = k // 2
    kernel = layer.pattern[H - 1 - r:H + r, W - 1 - r:W + r]  # the captured mean pattern (fp32 maps summed)
    beta = 1.0 - float(kernel.sum())
    assert record["beta"] == pytest.approx(beta, abs=1e-12)
    assert (abs(beta) < 1e-6) == (k >= 2 * radius + 1)
    with torch.no_grad():
        out = block(x)
    torch.testing.assert_close(out, _expected(x, kernel, m, c, beta), rtol=1e-9, atol=1e-9)


def test_every_parameter_gets_a_gradient_after_init():
    """The gate starts constant but trainable, and the extra inner channels beyond rank(M) are not dead."""
    gen = torch.Generator().manual_seed(1)
    stats = LayerStatistics((H, W), _pattern(1, gen), torch.eye(C, dtype=torch.float64), 10, 10)
    m, c = value_path(torch.randn(C, C, generator=gen), None, torch.randn(C, C, generator=gen), None)
    for gate in ("scaled", "sigmoid"):
        block = DeltaConvBlock(C, 3, (1.0, 0.5), 4.0, gate, backend="torch")  # Ci/2 = 16 > C
        closed_form_init(block, stats, m, c)
        x = torch.randn(2, H, W, C, generator=gen)
        (block(x) * torch.randn(2, H, W, C, generator=gen)).sum().backward()
        half = block.inner_dim // 2
        out_grad = block.proj_out.weight.grad.abs().sum(0).view(len(block.stages), half)
        for i, stage in enumerate(block.stages):  # no channel whose kernel and proj_out column both stay put
            kernel_grad = stage.weight.grad[:, :, :half].abs().sum((0, 1))
            assert ((out_grad[i] > 0) | (kernel_grad > 0)).all(), (gate, i)
        assert block.proj_in.weight.grad[block.inner_dim // 2:].abs().sum() > 0  # the g-rows


def test_bad_statistics_are_named():
    gen = torch.Generator().manual_seed(2)
    m, c = value_path(torch.randn(C, C, generator=gen), None, torch.randn(C, C, generator=gen), None)
    block = DeltaConvBlock(C, 3, backend="torch")
    good = _pattern(1, gen)
    with pytest.raises(ValueError, match="not finite"):
        bad = good.clone()
        bad[0, 0] = float("nan")
        closed_form_init(block, LayerStatistics((H, W), bad, torch.eye(C, dtype=torch.float64), 1, 1), m, c, "L")
    with pytest.raises(ValueError, match="L: kernel_size 5 is larger than its 2x2 map"):
        small = torch.full((3, 3), 1 / 9, dtype=torch.float64)
        closed_form_init(DeltaConvBlock(C, 5, backend="torch"),
                         LayerStatistics((2, 2), small, torch.eye(C, dtype=torch.float64), 1, 1), m, c, "L")
    with pytest.raises(ValueError, match="sums to"):
        closed_form_init(block, LayerStatistics((H, W), good * 2, torch.eye(C, dtype=torch.float64), 1, 1), m, c)
    with pytest.raises(ValueError, match="no 1.0"):
        closed_form_init(DeltaConvBlock(C, 3, (0.5,), backend="torch"),
                         LayerStatistics((H, W), good, torch.eye(C, dtype=torch.float64), 1, 1), m, c)


def test_statistics_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(3)
    stats = {"a.attn1": LayerStatistics((H, W), _pattern(2, gen), torch.eye(C, dtype=torch.float64) * 2, 7, 11)}
    path = save_statistics(stats, tmp_path / "s.safetensors")
    back = load_statistics(path)["a.attn1"]
    assert back.hw == (H, W) and back.maps == 7 and back.tokens == 11
    torch.testing.assert_close(back.pattern, stats["a.attn1"].pattern)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="could not be read"):
        load_statistics(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="no attention_statistics"):
        load_statistics(tmp_path / "nowhere")
