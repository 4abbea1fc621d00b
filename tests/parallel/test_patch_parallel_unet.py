"""`patch_parallel` on converted tiny SD1.5- and SDXL-layout U-Net pipelines (docs/DESIGN.md §9): every spatial
convolution with its halo, GroupNorm statistics all-reduced, down/upsampling across levels whose bands are not
aligned (odd latent sizes), attn2 untouched; the images from 2, 3 and 4 gloo processes equal the one-process image
within the fp32 tolerance. An unconverted U-Net is refused with an error naming its first self-attention layer."""

from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # diffusers' pipeline modules import it

import tiny_models  # noqa: E402

from deltaconv_kernels.parallel import patch_parallel  # noqa: E402
from deltaconv_kernels.parallel.checks import combine, pipeline_cases  # noqa: E402
from deltaconv_kernels.parallel.launch import run_local  # noqa: E402
from deltaconv_kernels.testing import tolerance  # noqa: E402

# Tiny VAE factor 2: 26 x 22 px -> 13 x 11 latent (levels 13, 7, 4, 2 rows); 54 x 18 px -> 27 x 9 (27, 14, 7, 4);
# the SDXL layout (3 levels, linear projections, 2 transformer layers per block) at 34 x 22 px -> 17 x 11.
RUNS = [("sd15", dict(kind="sd", height=26, width=22), 2), ("sd15", dict(kind="sd", height=54, width=18), 4),
        ("sdxl", dict(kind="sd", height=34, width=22), 3)]


@pytest.mark.parametrize("layout, case, world", RUNS,
                         ids=[f"{layout}-{c['height']}x{c['width']}px-{w} ranks" for layout, c, w in RUNS])
def test_image_equals_one_process(layout, case, world):
    build = functools.partial(tiny_models.tiny_sd_pipeline, layout)
    outcomes = run_local(pipeline_cases, world, build, [case], timeout_s=300, preload=("diffusers", "tiny_models"))
    for o in outcomes:
        assert o.ok, f"rank {o.rank}: {o.error}"
    per_rank = [o.value[0] for o in outcomes]
    max_rel, norm_rel = combine(per_rank)
    tol = tolerance(torch.float32)
    assert max_rel <= tol.max_rel and norm_rel <= tol.norm_rel, (max_rel, norm_rel)
    for r in per_rank:
        assert r["sent"]["conv halo"] > 0 and r["sent"]["groupnorm"] > 0 and r["sent"]["halo"] > 0


def test_unconverted_unet_is_refused():
    with pytest.raises(ValueError, match=r"down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn1 is still"):
        patch_parallel(tiny_models.tiny_unet())
