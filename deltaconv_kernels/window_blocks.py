"""Old path of `deltaconv_kernels.baselines.window_blocks`, kept for one release: flops.py imports it from here."""

from deltaconv_kernels.baselines.window_blocks import (  # noqa: F401
    BAND_IMPLS,
    FLEX_BLOCK,
    NEIGHBORHOOD_IMPLS,
    axis_tiling,
    band_block,
    band_covers_all,
    band_flex_blocks,
    band_reference_pairs,
    band_reference_spans,
    flex_block_pairs,
    neighborhood_flex_blocks,
    neighborhood_reference_pairs,
    neighborhood_tile,
    window_start,
)
