"""What is specific to the `cuda` backend (CUDA C++ kernels of `_C`, csrc/cuda), on a GPU: maps beyond 2^31
elements (64-bit row bases under 32-bit in-tile offsets) and a spatial mean split over many blocks. Forward and
gradients against the reference, every dtype, K up to 31 (more than 48 KB of shared memory), determinism, opcheck
and compile are in the shared suite, tests/ops/test_backend_conformance.py. Without a CUDA device, or with an
extension built without CUDA, the whole file skips with the backend's reason (the sources are still compiled in
CI by .ci/nvcc_check.sh)."""

import pytest
import torch

from deltaconv_kernels import ops, reference
from deltaconv_kernels.testing import assert_close, check_map_16k, reference_inputs

INFO = ops.available_backends()["cuda"]
if not INFO.available:
    print(f"test_cuda_backend: skipping, the cuda backend is unavailable: {INFO.reason}")
    pytest.skip(f"cuda backend unavailable: {INFO.reason}", allow_module_level=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_spatial_mean_over_many_parts(dtype, gen):
    """A 300 x 301 map is summed in 89 parts per sample, added in order: same as the reference."""
    x = torch.randn(2, 300, 301, 24, generator=gen).to("cuda", dtype)
    weight = torch.eye(24, device="cuda", dtype=dtype)
    bias = torch.zeros(24, device="cuda", dtype=dtype)
    out = ops.pooled_bias(x, weight, bias, backend="cuda")
    assert_close(out, reference.pooled_bias(*reference_inputs(x, weight, bias)), dtype, "spatial mean")


def test_int64_offsets_16k_map():
    # 1 x 2048 x 2048 x 576 = 2.4e9 elements > 2^31: the last rows are only right with 64-bit row bases.
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip(f"a map with B*H*W*C > 2^31 elements needs ~24 GB free on the GPU, {free / 2**30:.1f} GB free")
    check_map_16k("cuda")
