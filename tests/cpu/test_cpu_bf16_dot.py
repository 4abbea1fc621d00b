"""The bf16 dot-product path of the CPU kernels (the AVX512BF16 copy of csrc/cpu/kernels.cpp: vdpbf16ps on pairs
of kernel rows, fp32 accumulation), forced with DELTACONV_CPU_CAPABILITY=avx512bf16, against the reference with the
one tolerance table: bf16 u with bf16 weights (exact in bf16: the dot products run) and with fp32 weights (not
exact: the fp32 loops of the same copy run). Skipped on a CPU without AVX512-BF16."""

import re
from pathlib import Path

import pytest
import torch

from deltaconv_kernels import ops
from deltaconv_kernels.ops import extension
from deltaconv_kernels.testing import check_pyramid_backend

INFO = ops.available_backends()["cpu"]
if not INFO.available:
    pytest.skip(f"cpu backend unavailable: {INFO.reason}", allow_module_level=True)


def _cpu_has_avx512_bf16() -> bool:
    try:
        m = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return False
    return m is not None and "avx512_bf16" in m.group(1).split()


if not _cpu_has_avx512_bf16():
    pytest.skip("CPU lacks avx512_bf16", allow_module_level=True)
BUILD = extension.build_info()
if "AVX512BF16" not in BUILD["cpu_runnable"]:
    pytest.skip(f"this build cannot run the AVX512BF16 kernels (it runs {BUILD['cpu_runnable']})",
                allow_module_level=True)

# (B, H, W, Ci, K, scales, gate): the register blocks of 12 outputs, edge blocks, single-pixel tails; K with an odd
# last row alone (every K here is odd) and rows outside the map; a partial block (Ci/2 = 24: 16 + 8) for the fp32
# fallback inside the same call.
CASES = [
    (2, 9, 45, 64, 13, (1.0, 0.5), "sigmoid"),
    (1, 6, 29, 32, 7, (1.0, 0.5), "scaled"),
    (1, 4, 17, 48, 15, (1.0,), "scaled"),
    (1, 3, 13, 32, 3, (1.0,), "sigmoid"),
]


@pytest.fixture(autouse=True)
def _avx512bf16(monkeypatch):
    monkeypatch.setenv("DELTACONV_CPU_CAPABILITY", "avx512bf16")
    assert extension.cpu_capability() == "AVX512BF16"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[2]}w-K{c[4]}-ci{c[3]}")
def test_bf16_dot_products_match_reference(case, gen):
    check_pyramid_backend("cpu", case, torch.bfloat16, generator=gen, strided_u=True, strided_grad=True)


def test_fp32_weights_take_the_fp32_loops(gen):
    """fp32 weights are not exact in bf16: the copy keeps their precision (the fp32 loops), u still read as bf16."""
    u = torch.randn(1, 7, 21, 32, generator=gen).bfloat16()
    weights = [torch.randn(5, 5, 32, generator=gen) * 0.3]
    out = torch.ops.deltaconv_C.pyramid_forward(u, weights, [1.0], True, 1.0)
    from_fp32 = torch.ops.deltaconv_C.pyramid_forward(u.float(), weights, [1.0], True, 1.0)
    torch.testing.assert_close(out.float(), from_fp32.bfloat16().float(), rtol=0, atol=0)
