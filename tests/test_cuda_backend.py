"""The `cuda` backend (CUDA C++ kernels of `_C`, csrc/cuda) against the reference, on a GPU: forward and every
gradient through the public ops. Without a CUDA device, or with an extension built without CUDA, the whole
file skips with the backend's reason (the sources are still compiled in CI by .ci/nvcc_check.sh)."""

import pytest
import torch

from deltaconv_kernels import DeltaConvBlock, ops, reference
from deltaconv_kernels.testing import (
    DTYPES,
    assert_close,
    check_block_backend,
    check_pyramid_backend,
    random_pyramid_inputs,
    reference_inputs,
)

INFO = ops.available_backends()["cuda"]
if not INFO.available:
    print(f"test_cuda_backend: skipping, the cuda backend is unavailable: {INFO.reason}")
    pytest.skip(f"cuda backend unavailable: {INFO.reason}", allow_module_level=True)

# (b, h, w, ci, k, scales, gate): odd and non-power-of-two sizes, B=1, K from 1 to 31, both gates.
CASES = [
    (1, 13, 9, 12, 3, (1.0, 0.5), "scaled"),
    (2, 25, 17, 20, 5, (1.0, 0.5, 0.25), "sigmoid"),
    (1, 37, 29, 40, 13, (1.0, 0.5), "sigmoid"),
    (2, 3, 2, 6, 1, (1.0, 0.5), "scaled"),
    (2, 17, 23, 10, 31, (1.0, 0.5), "scaled"),
    (1, 64, 64, 96, 13, (1.0, 0.5, 0.25), "sigmoid"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-{len(c[5])}s-{c[6]}")
def test_pyramid_matches_reference(case, dtype, gen):
    check_pyramid_backend("cuda", case, dtype, "cuda", gen)


def test_pyramid_strided_u_and_contiguous_grad(gen):
    check_pyramid_backend("cuda", (2, 11, 7, 18, 5, (1.0, 0.5), "sigmoid"), torch.float32, "cuda", gen,
                          strided_u=True, strided_grad=False)


def test_pyramid_deterministic(gen):
    u, weights = random_pyramid_inputs(2, 19, 13, 24, 5, 2, torch.float32, "cuda", gen)
    grad = torch.randn(2, 19, 13, 24, device="cuda")
    first = torch.autograd.grad(ops.pyramid(u, weights, (1.0, 0.5), backend="cuda"), [u, *weights], grad)
    second = torch.autograd.grad(ops.pyramid(u, weights, (1.0, 0.5), backend="cuda"), [u, *weights], grad)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gate", ["scaled", "sigmoid"])
def test_block_matches_reference(dtype, gate, gen):
    check_block_backend("cuda", dtype, gate, "cuda", gen)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pooled_bias_matches_reference(dtype, gen):
    x = torch.randn(3, 9, 7, 41, generator=gen)[..., 1:].to("cuda", dtype)  # a strided channel slice
    weight = torch.randn(40, 40, generator=gen).to("cuda", dtype)
    bias = torch.randn(40, generator=gen).to("cuda", dtype)
    out = ops.pooled_bias(x, weight, bias, backend="cuda")
    assert out.dtype == dtype
    assert_close(out, reference.pooled_bias(*reference_inputs(x, weight, bias)), dtype, "pooled bias")


def test_opcheck(gen):
    u, weights = random_pyramid_inputs(1, 7, 5, 6, 3, 2, torch.float32, "cuda", gen)
    torch.library.opcheck(torch.ops.deltaconv.pyramid.default, (u, weights, [1.0, 0.5], True, 1.5, "cuda"))


def test_torch_compile_fullgraph(gen):
    torch._dynamo.reset()
    block = DeltaConvBlock(16, kernel_size=3, scales=(1.0, 0.5), gate="sigmoid", backend="cuda").cuda()
    x = torch.randn(2, 7, 5, 16, device="cuda", requires_grad=True)
    y = torch.compile(block, fullgraph=True)(x)
    assert_close(y, block(x), torch.float32, "compiled output")
