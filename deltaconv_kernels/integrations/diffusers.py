"""ΔConvBlocks in diffusers models and pipelines (DESIGN §5, §8): the public API.

    report = convert(pipe)                  # every self-attention attn1 -> DeltaConvAttention (released K, gate)
    print(report)                           # table: layer, level, H/W, C, K, gate
    save(pipe, "out/"); load(fresh_pipe, "out/")
    save_pretrained(pipe, "shipped/"); pipe = from_pretrained("shipped/")   # or a Hub repo id
    import_released(pipe, "released_ckpt.safetensors")   # ΔConvFusion's released weights
    convert(unet, keep_attention=True); set_mode(unet, "distill")   # distillation hooks
    revert(unet)                            # back to the original attention (kept ones only)
    replace_attention(unet, "linfusion")    # an attention baseline in every attn1 slot instead (benchmarks)
    load_linfusion(unet, "LinFusion-1-5/")   # the trained LinFusion modules (keys to_q_/to_k_ -> phi_q/phi_k)

Supported denoisers: UNet2DConditionModel (SD1.5 / SDXL layouts, any other with kernel_sizes given),
PixArtTransformer2DModel (α, Σ) and DiTTransformer2DModel, or any pipeline holding one as `unet`/`transformer`.
"""

from deltaconv_kernels.integrations.diffusers_attention import MODES, DeltaConvAttention, SpatialSize
from deltaconv_kernels.integrations.diffusers_baselines import METHODS, BaselineAttention, replace_attention
from deltaconv_kernels.integrations.diffusers_checkpoint import CheckpointError, load, save
from deltaconv_kernels.integrations.diffusers_convert import (
    ConversionReport,
    LayerReport,
    convert,
    deltaconv_parameters,
    iter_deltaconv_modules,
    revert,
    set_attn_processor,
    set_mode,
)
from deltaconv_kernels.integrations.diffusers_linfusion import load_linfusion
from deltaconv_kernels.integrations.diffusers_models import (
    RELEASED_TRANSFORMER,
    RELEASED_UNET,
    SUPPORTED,
    fingerprint,
    resolve_denoiser,
)
from deltaconv_kernels.integrations.diffusers_pretrained import from_pretrained, save_pretrained
from deltaconv_kernels.integrations.diffusers_released import import_released

__all__ = [
    "METHODS", "MODES", "RELEASED_TRANSFORMER", "RELEASED_UNET", "SUPPORTED", "BaselineAttention", "CheckpointError",
    "ConversionReport", "DeltaConvAttention", "LayerReport", "SpatialSize", "convert", "deltaconv_parameters",
    "fingerprint", "from_pretrained", "import_released", "iter_deltaconv_modules", "load", "load_linfusion",
    "replace_attention", "resolve_denoiser", "revert", "save", "save_pretrained", "set_attn_processor", "set_mode",
]
