"""Helpers for tests of converted diffusers models: random ΔConvBlock weights, a forward run of a tiny model, and
a converted model's block weights written in the released ΔConvFusion key format (independently of the importer).
Import after `pytest.importorskip("diffusers")`."""

from __future__ import annotations

import torch
from tiny_models import pixart_inputs, unet_inputs

from deltaconv_kernels.integrations import diffusers as dd

_RELEASED_NAMES = {"proj_in": "conv_up", "proj_out": "conv_out", "pool_proj": "conv_pool"}


def randomize_blocks(model, seed: int = 3, std: float = 0.2) -> None:
    """Give every ΔConvBlock random non-zero weights (larger than the default init, so that a wrong weight, layer
    or token order shows up clearly in the output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dd.deltaconv_parameters(model):
            p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))


def run_unet(model):
    with torch.no_grad():
        return model(*unet_inputs(model, batch=2, height=20, width=12)).sample


def run_pixart(model):
    with torch.no_grad():
        return model(**pixart_inputs(model, batch=2, height=20, width=12)).sample


def released_state(model, prefix: str = "denoiser.") -> dict[str, torch.Tensor]:
    """The converted model's block weights under the released key names (block path + `.conv1.` + released
    parameter name)."""
    state = {}
    for name, layer in dd.iter_deltaconv_modules(model):
        block_path = prefix + name[: -len(".attn1")]
        for key, t in layer.block.state_dict().items():
            head, rest = key.split(".", 1)
            if head == "stages":
                i = rest.split(".")[0]
                released = f"gates.{i}.conv_spatial.weight"
            else:
                released = f"{_RELEASED_NAMES[head]}.{rest}"
            state[f"{block_path}.conv1.{released}"] = t.clone()
    return state
