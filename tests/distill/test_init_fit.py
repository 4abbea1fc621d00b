"""Step 0 of distillation (docs/DESIGN.md §10): the features the fit regresses on are exactly what a ΔConvBlock's
`proj_out` and `pool_proj` multiply, the ridge solve recovers an exactly linear target, and the fit refuses a
model without the teacher's attention (its effect on the tiny models: tests/integrations/test_convert_init.py)."""

from __future__ import annotations

import pytest
import torch

from deltaconv_kernels.distill.fit import NormalEquations, block_features
from deltaconv_kernels.modules import DeltaConvBlock

torch.set_num_threads(1)


@pytest.mark.parametrize("gate,scales,inter_ratio", [("sigmoid", (1.0, 0.5), 0.5), ("scaled", (1.0,), 2.0)])
def test_block_output_is_linear_in_the_fitted_projections(gate, scales, inter_ratio):
    gen = torch.Generator().manual_seed(0)
    block = DeltaConvBlock(8, 3, scales, inter_ratio, gate, backend="torch", dtype=torch.float64)
    x = torch.randn(2, 5 * 7, 8, generator=gen, dtype=torch.float64)
    concat, mean = block_features(block, x, (5, 7))
    with torch.no_grad():
        expected = block(x, size=(5, 7))
        rebuilt = (concat @ block.proj_out.weight.t() + block.proj_out.bias + (mean @ block.pool_proj.weight.t()
                   + block.pool_proj.bias)[:, None, :])
    torch.testing.assert_close(rebuilt, expected, rtol=1e-10, atol=1e-10)


def test_ridge_solve_recovers_an_exact_linear_map():
    gen = torch.Generator().manual_seed(1)
    eq = NormalEquations()
    w_out, w_pool, bias = (torch.randn(6, 4, generator=gen, dtype=torch.float64),
                           torch.randn(3, 4, generator=gen, dtype=torch.float64),
                           torch.randn(4, generator=gen, dtype=torch.float64))
    for _ in range(3):
        concat = torch.randn(4, 20, 6, generator=gen, dtype=torch.float64)
        mean = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        eq.add(concat, mean, concat @ w_out + (mean @ w_pool)[:, None, :] + bias)
    solution = eq.solve(ridge=1e-12)
    torch.testing.assert_close(solution, torch.cat([w_out, w_pool, bias[None]]), rtol=1e-6, atol=1e-6)
    assert eq.tokens == 3 * 4 * 20


def test_fit_needs_the_kept_attention():
    from tiny_models import pixart_inputs, tiny_pixart

    from deltaconv_kernels.distill.fit import fit_output_projections
    from deltaconv_kernels.integrations.diffusers import convert

    model = tiny_pixart()
    kwargs = pixart_inputs(model, batch=1)
    convert(model, kernel_sizes=3, backend="torch")
    with pytest.raises(ValueError, match="keep_attention=True"):
        fit_output_projections(model, lambda m: m(**kwargs))
