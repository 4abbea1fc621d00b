"""`DeltaConvAttention`: a drop-in for a diffusers self-attention `attn1` that runs a `DeltaConvBlock`, on the
`DistillableAttention` base it shares with the baselines' slot (teacher / student / distill modes), and the
hooks that tell it the (H, W) of its token map (diffusers passes only `[B, N, C]` tokens; DESIGN §5)."""

from __future__ import annotations

import torch
from torch import nn

from deltaconv_kernels.modules import DeltaConvBlock

MODES = ("student", "teacher", "distill")


class SpatialSize:
    """(H, W) of the token map of one 4-D-input module, written by `RecordSize` before each of its forwards."""

    def __init__(self, source: str):
        self.source = source  # who records it, for error messages
        self.hw: tuple[int, int] | None = None

    def get(self, num_tokens: int, layer: str) -> tuple[int, int]:
        if self.hw is None:
            raise RuntimeError(f"{layer}: the (H, W) of its token map is unknown: it is recorded by a hook on "
                               f"{self.source}'s forward with a 4-D [B, C, H, W] input, which has not run "
                               "(call the whole model, not the layer alone)")
        h, w = self.hw
        if h * w != num_tokens:
            raise RuntimeError(f"{layer}: recorded map {h}x{w} from {self.source} has {h * w} tokens but the "
                               f"layer got N={num_tokens}")
        return h, w


class RecordSize:
    """Forward pre-hook (with kwargs) storing `H // patch, W // patch` of the module's `hidden_states`.
    A callable object rather than a closure, so that `copy.deepcopy(model)` keeps hook and size paired."""

    def __init__(self, size: SpatialSize, patch: int):
        self.size = size
        self.patch = patch

    def __call__(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            self.size.hw = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        else:
            # Not a 4-D map (e.g. vectorised input): make any later read fail instead of using a stale size.
            self.size.hw = None
        return None


def detach_size_hooks(model) -> None:
    """Remove every hook `attach_size_hook` registered on `model`'s modules."""
    for module in model.modules():
        handle = module.__dict__.pop("_deltaconv_size_hook", None)
        if handle is not None:
            handle.remove()
            module.__dict__.pop("_deltaconv_size", None)


def attach_size_hook(site) -> SpatialSize:
    """The SpatialSize of a `sites.Site`'s owner, registering its hook once (layers share owners)."""
    owner = site.owner
    size = owner.__dict__.get("_deltaconv_size")
    if size is None:
        size = SpatialSize(site.owner_name)
        handle = owner.register_forward_pre_hook(RecordSize(size, site.patch), with_kwargs=True)
        owner.__dict__["_deltaconv_size"] = size
        owner.__dict__["_deltaconv_size_hook"] = handle
    return size


class DistillableAttention(nn.Module):
    """Base of the layers that take an `attn1` slot (`DeltaConvAttention`, the baselines' `BaselineAttention`):
    the trained module is `.student` (the attribute named by `student_attr`). With `attention` given the original
    layer is kept as `.attention` for distillation, and `.mode` selects what forward returns: "student" the
    student's output, "teacher" the original attention's output, "distill" the student's output while storing
    `last_features = (student_out, teacher_out)` (teacher under no_grad, same input)."""

    student_attr = "block"

    def __init__(self, size: SpatialSize, name: str, attention: nn.Module | None = None):
        super().__init__()
        self.attention = attention
        self.layer_name = name
        self._size = size
        self._mode = "student"
        self.last_features: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def student(self) -> nn.Module:
        return getattr(self, self.student_attr)

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {value!r}")
        if value != "student" and self.attention is None:
            raise ValueError(f"{self.layer_name}: mode {value!r} needs the original attention, which was not "
                             "kept: convert (or replace_attention) with keep_attention=True")
        self._mode = value
        if value != "distill":
            self.last_features = None

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **cross_attention_kwargs) -> torch.Tensor:
        if self._mode == "teacher":
            return self.attention(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                  attention_mask=attention_mask, **cross_attention_kwargs)
        student = self._student(hidden_states, encoder_hidden_states, attention_mask, **cross_attention_kwargs)
        if self._mode == "distill":
            with torch.no_grad():
                teacher = self.attention(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                         attention_mask=attention_mask, **cross_attention_kwargs)
            self.last_features = (student, teacher)
        return student

    def _student(self, hidden_states, encoder_hidden_states, attention_mask, **cross_attention_kwargs):
        raise NotImplementedError  # pragma: no cover - abstract

    def extra_repr(self) -> str:
        return f"mode={self._mode!r}, kept_attention={self.attention is not None}"


class DeltaConvAttention(DistillableAttention):
    """Replaces a self-attention `Attention` inside a `BasicTransformerBlock`; same call signature.

    `.block` is the `DeltaConvBlock` (the student); modes as in `DistillableAttention`.
    """

    def __init__(self, block: DeltaConvBlock, size: SpatialSize, name: str, attention: nn.Module | None = None):
        super().__init__(size, name, attention)
        self.block = block

    def _student(self, hidden_states, encoder_hidden_states, attention_mask, **cross_attention_kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.layer_name}: got encoder_hidden_states, but a ΔConvBlock replaces "
                             "self-attention only")
        if attention_mask is not None:
            raise ValueError(f"{self.layer_name}: got an attention_mask, which a ΔConvBlock cannot apply "
                             "(it has no token mask); pass attention_mask=None")
        if hidden_states.dim() != 3:
            raise ValueError(f"{self.layer_name}: hidden_states must be [B, N, C] tokens, got shape "
                             f"{tuple(hidden_states.shape)}")
        size = self._size.get(hidden_states.shape[1], self.layer_name)
        try:
            return self.block(hidden_states, size=size)
        except (ValueError, TypeError) as e:  # an error of this one layer names it
            raise type(e)(f"{self.layer_name}: {e}") from e
