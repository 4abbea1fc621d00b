"""Attention baselines ΔConvBlock is compared against (docs/DESIGN.md §7). Each takes `[B, N, C]` hidden states
with the diffusers `Attention` call signature plus the spatial size; see `base.AttentionBaseline`.

The names below load their module on first use (module `__getattr__`), so importing a torch-free submodule,
`baselines.window_blocks` (the windowed implementations' geometry) or `baselines.ditfastattn_schedule`
(DiTFastAttn's plan), which flops.py counts from, loads no layer and no torch."""

from importlib import import_module

# public name -> the submodule that defines it
_WHERE = {
    "AttentionBaseline": "base",
    "DiTFastAttnAttention": "ditfastattn", "window_attention_1d": "ditfastattn",
    "DiTFastAttnSchedule": "ditfastattn_schedule",
    "flex_status": "flex",
    "LinFusionAttention": "linfusion", "generalized_linear_attention": "linfusion",
    "MediatorAttention": "mediator", "mediator_attention": "mediator",
    "NeighborhoodAttention": "neighborhood", "natten_status": "neighborhood",
    "neighborhood_attention": "neighborhood", "neighborhood_attention_flex": "neighborhood",
    "SDPASelfAttention": "sdpa",
}

_SUBMODULES = ("base", "ditfastattn", "ditfastattn_schedule", "flex", "linfusion", "mediator", "neighborhood", "sdpa",
               "window_blocks")

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _SUBMODULES:  # `baselines.flex` without importing it first, as with an eager __init__
        return import_module(f"{__name__}.{name}")
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE) | set(_SUBMODULES))
