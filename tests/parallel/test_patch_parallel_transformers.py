"""`patch_parallel` on converted tiny PixArt and DiT pipelines (docs/DESIGN.md §9): the images from 2-4 gloo
processes at odd token maps equal the one-process images within the fp32 tolerance, and a model that still has a
self-attention layer is refused with an error naming it."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # diffusers' pipeline modules import it

import tiny_models  # noqa: E402

from deltaconv_kernels.integrations import diffusers as dd  # noqa: E402
from deltaconv_kernels.parallel import patch_parallel  # noqa: E402
from deltaconv_kernels.parallel.checks import combine, pipeline_cases  # noqa: E402
from deltaconv_kernels.parallel.launch import run_local  # noqa: E402
from deltaconv_kernels.testing import tolerance  # noqa: E402

# (build, case, world): PixArt 36 x 28 px -> 18 x 14 latent -> 9 x 7 tokens; DiT 14 x 14 latent -> 7 x 7 tokens.
RUNS = [
    (tiny_models.tiny_pixart_pipeline, dict(kind="pixart", height=36, width=28), 2),
    (tiny_models.tiny_pixart_pipeline, dict(kind="pixart", height=44, width=20), 4),
    (tiny_models.tiny_dit_pipeline, dict(kind="dit", height=14, width=14), 3),
]


@pytest.mark.parametrize("build, case, world", RUNS, ids=[f"{c['kind']}-{w} ranks" for _, c, w in RUNS])
def test_image_equals_one_process(build, case, world):
    outcomes = run_local(pipeline_cases, world, build, [case], timeout_s=240, preload=("diffusers", "tiny_models"))
    for o in outcomes:
        assert o.ok, f"rank {o.rank}: {o.error}"
    per_rank = [o.value[0] for o in outcomes]
    assert len({r["shape"] for r in per_rank}) == 1
    max_rel, norm_rel = combine(per_rank)
    tol = tolerance(torch.float32)
    assert max_rel <= tol.max_rel and norm_rel <= tol.norm_rel, (max_rel, norm_rel)
    # Every rank moved halo rows, and per step gathered only the denoiser's output: its band of the
    # [2, 8, H, W] latent (batch 2: CFG pair or two labels; 8 = learned-sigma channels) padded to the thickest band.
    latent_h, latent_w = (case["height"], case["width"]) if case["kind"] == "dit" else (
        case["height"] // 2, case["width"] // 2)
    thickest_rows = -(-(latent_h // 2) // world) * 2
    for r in per_rank:
        assert r["sent"]["halo"] > 0 and r["sent"]["pooled bias"] > 0
        assert r["sent"]["gather"] == r["steps"] * 2 * 8 * thickest_rows * latent_w * 4


def test_model_with_attention_is_refused():
    model = tiny_models.tiny_pixart()
    with pytest.raises(ValueError, match=r"transformer_blocks\.0\.attn1 is still a self-attention layer"):
        patch_parallel(model)


def test_attention_in_teacher_mode_is_refused():
    model = tiny_models.tiny_dit()
    dd.convert(model, keep_attention=True)
    dd.set_mode(model, "teacher")
    with pytest.raises(ValueError, match=r"transformer_blocks\.0\.attn1 is in mode 'teacher'"):
        patch_parallel(model)
