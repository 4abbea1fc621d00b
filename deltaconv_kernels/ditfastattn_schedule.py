"""Old path of `deltaconv_kernels.baselines.ditfastattn_schedule`, kept for one release: flops.py imports it from
here."""

from deltaconv_kernels.baselines.ditfastattn_schedule import (  # noqa: F401
    MODES,
    PERIODIC_LABEL,
    PUBLISHED_WINDOW,
    DiTFastAttnSchedule,
    residual_needed,
    window_half_width,
)
