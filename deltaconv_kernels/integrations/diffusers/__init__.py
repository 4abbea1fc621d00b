"""ΔConvBlocks in diffusers models and pipelines (DESIGN §5, §8): the public API.

    report = convert(pipe)                  # every self-attention attn1 -> DeltaConvAttention (released K, gate)
    print(report)                           # table: layer, level, H/W, C, K, gate
    save(pipe, "out/"); load(fresh_pipe, "out/")
    save_pretrained(pipe, "shipped/"); pipe = from_pretrained("shipped/", dtype=torch.float16)   # or a Hub repo id
    import_released(pipe, "released_ckpt.safetensors")   # ΔConvFusion's released weights
    convert(unet, keep_attention=True); set_mode(unet, "distill")   # distillation hooks
    revert(unet)                            # back to the original attention (kept ones only)
    replace_attention(unet, "linfusion")    # an attention baseline in every attn1 slot instead (benchmarks)
    load_linfusion(unet, "LinFusion-1-5/")   # the trained LinFusion modules (keys to_q_/to_k_ -> phi_q/phi_k)

Layout (imports only downward; docs/DESIGN.md §5, §8):

    files, sites          leaves: error type, file names, reading and checking tensors / supported models, sites
    hub                   local path or Hub repo id (files)
    attention             DeltaConvAttention and its base, the (H, W) hooks
    layers                walking and filling the replaced layers of a model (sites, attention)
    saving                save, save_pretrained (files, hub, sites, layers)
    conversion            convert, revert (sites, attention, layers, saving)
    loading               load, from_pretrained (files, hub, sites, attention, layers, saving, conversion)
    released, baselines, linfusion   released weights; the attention baselines and LinFusion's weights
    __init__              this public face
(The modules are not named save / convert / load: here those names are the public functions.)

Supported denoisers: UNet2DConditionModel (SD1.5 / SDXL layouts, any other with kernel_sizes given),
PixArtTransformer2DModel (α, Σ) and DiTTransformer2DModel, or any pipeline holding one as `unet`/`transformer`.
"""

from deltaconv_kernels.integrations.diffusers.attention import MODES, DeltaConvAttention, SpatialSize
from deltaconv_kernels.integrations.diffusers.baselines import METHODS, BaselineAttention, replace_attention
from deltaconv_kernels.integrations.diffusers.conversion import (
    ConversionReport,
    LayerReport,
    convert,
    revert,
    set_attn_processor,
)
from deltaconv_kernels.integrations.diffusers.files import CheckpointError
from deltaconv_kernels.integrations.diffusers.layers import deltaconv_parameters, iter_deltaconv_modules, set_mode
from deltaconv_kernels.integrations.diffusers.linfusion import load_linfusion
from deltaconv_kernels.integrations.diffusers.loading import from_pretrained, load
from deltaconv_kernels.integrations.diffusers.released import import_released
from deltaconv_kernels.integrations.diffusers.saving import save, save_pretrained
from deltaconv_kernels.integrations.diffusers.sites import (
    RELEASED_TRANSFORMER,
    RELEASED_UNET,
    SUPPORTED,
    fingerprint,
    resolve_denoiser,
)

__all__ = [
    "METHODS", "MODES", "RELEASED_TRANSFORMER", "RELEASED_UNET", "SUPPORTED", "BaselineAttention", "CheckpointError",
    "ConversionReport", "DeltaConvAttention", "LayerReport", "SpatialSize", "convert", "deltaconv_parameters",
    "fingerprint", "from_pretrained", "import_released", "iter_deltaconv_modules", "load", "load_linfusion",
    "replace_attention", "resolve_denoiser", "revert", "save", "save_pretrained", "set_attn_processor", "set_mode",
]
