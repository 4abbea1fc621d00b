"""The band-parallel ΔConvBlock forward (docs/DESIGN.md §9) on 2, 3 and 4 gloo processes equals the one-process
block within the tolerance table, for every backend available here, odd sizes, uneven and thin bands (thinner
than the halo: rows from several ranks away), several pooled scales, both gates; and the bytes each rank sends
for aligned bands equal the closed-form count."""

from __future__ import annotations

import pytest
import torch

from deltaconv_kernels.ops import available_backends
from deltaconv_kernels.parallel.checks import block_cases, combine
from deltaconv_kernels.parallel.cost import block_bytes_sent
from deltaconv_kernels.parallel.launch import run_local
from deltaconv_kernels.testing import tolerance

CPU_BACKENDS = [name for name in ("torch", "cpu", "triton") if available_backends()[name].available]
ALIGNED = dict(h=24, w=8, dim=16, kernel_size=5, scales=(1.0, 0.5), batch=2)


def cases(world: int) -> dict[str, dict]:
    thin = tuple((r, r + 1) for r in range(world - 1)) + ((world - 1, 13),)  # 1-row bands, K//2 = 4 rows of halo
    out = {
        "odd 13x7 K5": dict(h=13, w=7, kernel_size=5),
        "odd 11x5 K9 sigmoid": dict(h=11, w=5, kernel_size=9, gate="sigmoid"),
        "three scales 9x6 K7": dict(h=9, w=6, kernel_size=7, scales=(1.0, 0.5, 0.25)),
        "scale 0.75 only 10x5": dict(h=10, w=5, kernel_size=3, scales=(0.75,)),
        "thin bands 13x6 K9": dict(h=13, w=6, kernel_size=9, bands=thin),
        "aligned": ALIGNED,
    }
    for dtype in (torch.float16, torch.bfloat16):
        out[f"{dtype} 12x7"] = dict(h=12, w=7, kernel_size=5, dtype=dtype)
    for backend in CPU_BACKENDS:
        small = backend == "triton"  # the Triton interpreter is slow: one small map
        out[f"backend {backend}"] = dict(h=7 if small else 15, w=3 if small else 6, dim=8, kernel_size=3,
                                         backend=backend)
    return out


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda w: f"{w} ranks")
def run(request):
    world = request.param
    named = cases(world)
    outcomes = run_local(block_cases, world, list(named.values()), timeout_s=120)
    for o in outcomes:
        assert o.ok, f"rank {o.rank}: {o.error}"
    return world, {name: [o.value[i] for o in outcomes] for i, name in enumerate(named)}, named


def test_band_block_equals_one_process(run):
    world, results, named = run
    for name, per_rank in results.items():
        assert [r["shape"] for r in per_rank] == [r["expected_shape"] for r in per_rank], name
        dtype = named[name].get("dtype", torch.float32)
        max_rel, norm_rel = combine(per_rank)
        tol = tolerance(dtype)
        assert max_rel <= tol.max_rel and norm_rel <= tol.norm_rel, (name, world, max_rel, norm_rel)


def test_thin_bands_reach_past_the_neighbour(run):
    world, results, named = run
    # 1-row bands with a 4-row halo: rank 0 receives rows from every other rank it is within 4 rows of.
    assert named["thin bands 13x6 K9"]["bands"][0] == (0, 1)
    assert all(r["sent"] > 0 for r in results["thin bands 13x6 K9"])


def test_bytes_sent_match_the_formula(run):
    world, results, _ = run
    inner = ALIGNED["dim"] // 2
    for rank, r in enumerate(results["aligned"]):
        neighbours = (rank > 0) + (rank < world - 1)
        expected = block_bytes_sent(neighbours, ALIGNED["w"], ALIGNED["dim"], inner, ALIGNED["kernel_size"],
                                    ALIGNED["scales"], ALIGNED["batch"], 4, ALIGNED["h"])
        assert r["sent"] == expected, (world, rank, r["sent"], expected)
