"""`patch_parallel`: run a converted diffusers denoiser band-parallel across the ranks of a process group
(docs/DESIGN.md §9). Every rank runs the whole pipeline (text encoder, scheduler, VAE) as before; each denoiser
call checks that every rank got the same inputs, runs this rank's band of rows and gathers the output bands, so
every rank continues with the same, whole output.

Transformers (PixArt, DiT): the token map's rows are split; the patch embedding runs on the patch-aligned band of
the latent and adds the rows of the global grid's positional embedding; every ΔConvBlock runs band-parallel
(`block.band_block_forward`); everything else is token-wise. U-Nets (SD1.5 / SDXL layout): the latent's rows
are split; every spatial convolution, GroupNorm and upsampler is replaced as in `unet.py`, the ΔConvBlocks run
band-parallel on each level's bands, cross-attention (attn2) is token-wise and untouched. The patching sets
instance attributes only (no parameter, buffer or state-dict key changes) and `unpatch_parallel` removes them."""

from __future__ import annotations

import torch
from torch import nn

from deltaconv_kernels.integrations.diffusers import DeltaConvAttention, resolve_denoiser
from deltaconv_kernels.parallel.bands import Band
from deltaconv_kernels.parallel.block import band_block_forward, refuse_autograd
from deltaconv_kernels.parallel.comm import BandComm
from deltaconv_kernels.parallel.unet import level_bands, unet_patches

TRANSFORMERS = ("PixArtTransformer2DModel", "DiTTransformer2DModel")
SUPPORTED = (*TRANSFORMERS, "UNet2DConditionModel")
_PATCHED = "_deltaconv_parallel"  # instance attribute naming the patched modules' overridden forwards


class BandState:
    """What the patched modules of one denoiser share during a call: the communicator, and per level of the
    model (a U-Net's resolutions; a transformer has one) the map's size and row bands. The denoiser's wrapper
    starts level 0 before its forward and clears them after; a U-Net's resampling ops move between levels."""

    def __init__(self, comm: BandComm):
        self.comm = comm
        self.levels: dict[int, tuple[int, int, tuple[Band, ...]]] = {}
        self.level: int | None = None

    def enter(self, level: int, rows: int | None = None, cols: int | None = None) -> tuple[Band, ...]:
        """Make `level` current (recording its `rows x cols` map the first time) and return its bands."""
        if level not in self.levels:
            if rows is None:
                raise RuntimeError(f"level {level} of the map was never entered with its size")
            self.levels[level] = (rows, cols, level_bands(rows, self.comm.world, level))
        self.level = level
        return self.levels[level][2]

    def clear(self) -> None:
        self.levels, self.level = {}, None

    def level_size(self) -> tuple[int, int]:
        self._check()
        return self.levels[self.level][:2]

    @property
    def bands(self) -> tuple[Band, ...]:
        self._check()
        return self.levels[self.level][2]

    @property
    def width(self) -> int:
        return self.level_size()[1]

    def band(self) -> Band:
        return self.bands[self.comm.rank]

    def _check(self) -> None:
        if self.level is None:
            raise RuntimeError("a band-parallel module was called outside its patched denoiser's forward: call the "
                               "whole model (or pipeline), not a layer alone")


class BandBlock:
    """Replaces a DeltaConvBlock's forward: this rank's tokens `[B, h*W, C]` (or `[B, h, W, C]`) in, the same rows
    of the one-process block's output out."""

    def __init__(self, block, state: BandState):
        self.block = block
        self.state = state

    def __call__(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        s, e = self.state.band()
        width = self.state.width
        if x.dim() == 3 and (size is None or x.shape[1] != (e - s) * width):
            raise ValueError(f"got {x.shape[1]} tokens but this rank's band is {e - s} x {width} token rows")
        spatial = x.view(x.shape[0], e - s, width, x.shape[-1])
        return band_block_forward(self.block, spatial, self.state.comm, self.state.bands).view(x.shape)


class BandPatchEmbed:
    """Replaces a diffusers PatchEmbed's forward on a patch-aligned band of the latent: the patch projection
    (token-local: kernel = stride = patch) plus this band's rows of the positional embedding of the whole grid,
    computed as PatchEmbed computes it for the whole latent."""

    def __init__(self, embed: nn.Module, state: BandState):
        self.embed = embed
        self.state = state
        self._grid: dict = {}

    def _global_pos(self, rows: int, cols: int, device) -> torch.Tensor:
        e = self.embed
        key = (rows, cols, str(device))
        if key not in self._grid:
            if e.pos_embed_max_size:
                pos = e.cropped_pos_embed(rows * e.patch_size, cols * e.patch_size)
            elif (e.height, e.width) == (rows, cols):
                pos = e.pos_embed
            else:
                from diffusers.models.embeddings import get_2d_sincos_pos_embed
                pos = get_2d_sincos_pos_embed(embed_dim=e.pos_embed.shape[-1], grid_size=(rows, cols),
                                              base_size=e.base_size, interpolation_scale=e.interpolation_scale,
                                              device=device, output_type="pt").float().unsqueeze(0)
            self._grid = {key: pos}  # one size at a time: a pipeline keeps its size for all steps
        return self._grid[key]

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        e = self.embed
        s, end = self.state.band()
        tokens = e.proj(latent).flatten(2).transpose(1, 2)
        if e.layer_norm:
            tokens = e.norm(tokens)
        if e.pos_embed is None:
            return tokens
        rows, cols = self.state.level_size()
        pos = self._global_pos(rows, cols, latent.device)
        pos = pos.reshape(1, rows, cols, -1)[:, s:end].reshape(1, (end - s) * cols, -1)
        return (tokens + pos).to(tokens.dtype)


class _Capture:
    """Forward hook keeping a module's output and handing the caller a 1-token stand-in: DiT's forward
    unpatchifies assuming a square token map, so the band's output is taken here and unpatchified by the
    wrapper with the band's shape."""

    def __init__(self):
        self.value = None

    def __call__(self, module, args, output):
        self.value = output
        return output[:, :1]


class BandDenoiser:
    """Replaces the denoiser's forward: check the inputs agree across ranks, run this rank's band, gather."""

    def __init__(self, model: nn.Module, state: BandState, capture: _Capture | None):
        self.model = model
        self.state = state
        self.capture = capture
        self.patch = getattr(model.config, "patch_size", None) or 1  # a U-Net splits the latent's rows
        self.inner = False

    def __call__(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.inner:  # the band's own call (below): the model's forward proper
            return type(self.model).forward(self.model, hidden_states, *args, **kwargs)
        comm, p = self.state.comm, self.patch
        refuse_autograd(self.model, hidden_states)
        comm.check_same(_flatten({"hidden_states": hidden_states, "args": args, "kwargs": kwargs}))
        if hidden_states.dim() != 4 or hidden_states.shape[-2] % p or hidden_states.shape[-1] % p:
            raise ValueError(f"hidden_states must be a [B, C, H, W] latent with H and W multiples of the patch size "
                             f"{p}, got shape {tuple(hidden_states.shape)}")
        rows, cols = hidden_states.shape[-2] // p, hidden_states.shape[-1] // p
        bands = self.state.enter(0, rows, cols)
        s, e = bands[comm.rank]
        self.inner = True
        try:
            # Called through the module again so that its forward pre-hooks (the ΔConv layers' map-size
            # hook among them) see the band, not the whole latent.
            out = self.model(hidden_states[:, :, s * p:e * p], *args, **kwargs)
            sample = out[0] if isinstance(out, tuple) else out.sample
            if self.capture is not None:
                sample = _unpatchify(self.capture.value, e - s, cols, p)
                self.capture.value = None
        finally:
            self.state.clear()
            self.inner = False
        whole = comm.gather_bands(sample, 2, [(a * p, b * p) for a, b in bands])
        if isinstance(out, tuple):
            return (whole, *out[1:])
        out.sample = whole
        return out


def _unpatchify(tokens: torch.Tensor, rows: int, cols: int, p: int) -> torch.Tensor:
    """`[B, rows*cols, p*p*C]` patch tokens -> `[B, C, rows*p, cols*p]` (DiT's patch layout: p, p, C)."""
    b = tokens.shape[0]
    t = tokens.reshape(b, rows, cols, p, p, -1)
    return torch.einsum("nhwpqc->nchpwq", t).reshape(b, -1, rows * p, cols * p)


def _flatten(value, prefix: str = "") -> dict:
    """Nested args/kwargs as {path: leaf}, for the cross-rank input check."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, (list, tuple)):
        out = {f"{prefix}#len": len(value)}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def check_no_attention(model: nn.Module) -> list[DeltaConvAttention]:
    """The model's ΔConv layers; refuses (ValueError naming the layer) any self-attention `attn1` that is not a
    ΔConvBlock in student mode: attention would need the whole token map on every rank."""
    layers = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] != "attn1":
            continue
        if not isinstance(module, DeltaConvAttention):
            raise ValueError(f"{name} is still a self-attention layer ({type(module).__name__}): band parallelism "
                             "needs every self-attention replaced by a ΔConvBlock; run "
                             "deltaconv_kernels.integrations.diffusers.convert(...) first")
        if module.mode != "student":
            raise ValueError(f"{name} is in mode {module.mode!r}, which runs the original attention: set_mode(model, "
                             "'student') first")
        layers.append(module)
    return layers


def patch_parallel(pipe_or_model, group=None, timeout_s: float = 300.0) -> nn.Module:
    """Make the (converted) denoiser of `pipe_or_model` run band-parallel over `group` (default: the default
    process group, which must be initialised, e.g. under torchrun). Every rank must then make the same calls with
    the same inputs; each call returns the whole output on every rank. A rank that fails or hangs makes the
    others raise `RankFailureError` within `timeout_s`. Returns the denoiser."""
    model = resolve_denoiser(pipe_or_model)
    kind = type(model).__name__
    if _PATCHED in model.__dict__:
        raise ValueError(f"{kind} is already patched for band parallelism")
    if kind not in SUPPORTED:
        raise ValueError(f"patch_parallel supports {SUPPORTED}, got {kind}")
    layers = check_no_attention(model)
    if not layers:
        raise ValueError(f"{kind} has no ΔConvBlock layers: run deltaconv_kernels.integrations.diffusers.convert "
                         "first")
    state = BandState(BandComm(group, timeout_s))
    patched = [(layer.block, BandBlock(layer.block, state)) for layer in layers]
    if kind in TRANSFORMERS:
        patched.append((model.pos_embed, BandPatchEmbed(model.pos_embed, state)))
    else:
        patched += unet_patches(model, state)
    capture, hook = None, None
    if kind == "DiTTransformer2DModel":
        capture = _Capture()
        hook = model.proj_out_2.register_forward_hook(capture)
    patched.append((model, BandDenoiser(model, state, capture)))
    for module, forward in patched:
        module.forward = forward
    model.__dict__[_PATCHED] = ([module for module, _ in patched], hook, state)
    return model


def bytes_sent(pipe_or_model) -> dict[str, int]:
    """Bytes this rank has sent, per kind, since `patch_parallel` (halo rows, pooled sums, all-reduces, the
    output gather, the input check)."""
    model = resolve_denoiser(pipe_or_model)
    if _PATCHED not in model.__dict__:
        raise ValueError(f"{type(model).__name__} is not patched for band parallelism")
    return dict(model.__dict__[_PATCHED][2].comm.sent)


def unpatch_parallel(pipe_or_model) -> nn.Module:
    """Undo `patch_parallel`: the denoiser runs on one process again."""
    model = resolve_denoiser(pipe_or_model)
    modules, hook, _ = model.__dict__.pop(_PATCHED, ((), None, None))
    for module in modules:
        del module.forward
    if hook is not None:
        hook.remove()
    return model
