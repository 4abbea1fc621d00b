"""Old path of `deltaconv_kernels.integrations.diffusers.sites`, kept for one release: bench_e2e imports
`find_sites` from here. New code imports the sites module."""

from deltaconv_kernels.integrations.diffusers.sites import (  # noqa: F401
    ARCHITECTURE_KEYS,
    RELEASED_TRANSFORMER,
    RELEASED_UNET,
    SUPPORTED,
    Site,
    find_denoiser,
    find_sites,
    fingerprint,
    pipeline_vae_scale_factor,
    released_gate,
    released_kernel_size,
    released_preset,
    require_diffusers,
    resolve_denoiser,
)
