"""Shipping converted models the diffusers way: save_pretrained / from_pretrained of tiny SD1.5,
SDXL-layout, PixArt and DiT models and pipelines (saved to disk, loaded back as a user would), Hub repo ids through
huggingface_hub offline against a pre-filled cache, diffusers' own save/load, meta-device loads, accelerate's
offload hooks and import_released into converted models."""

from __future__ import annotations

import copy
import shutil
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from converted import randomize_blocks, released_state  # noqa: E402
from tiny_models import (  # noqa: E402
    pixart_inputs,
    tiny_dit,
    tiny_dit_pipeline,
    tiny_pixart,
    tiny_pixart_pipeline,
    tiny_sd_pipeline,
    tiny_unet,
    unet_inputs,
)

from deltaconv_kernels.integrations import diffusers as dd  # noqa: E402
from deltaconv_kernels.integrations.diffusers.files import CheckpointError  # noqa: E402

NO_TEXT = dict(text_encoder=None, tokenizer=None)
SD_NONE = dict(NO_TEXT, safety_checker=None, feature_extractor=None)


def _run_model(model):
    with torch.no_grad():
        if type(model).__name__ == "UNet2DConditionModel":
            sample, t, ctx = unet_inputs(model)
            return model(sample, t, encoder_hidden_states=ctx).sample
        if type(model).__name__ == "PixArtTransformer2DModel":
            return model(**pixart_inputs(model)).sample
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, 8, 8, generator=g).to(model.dtype)
        return model(x, timestep=torch.tensor([3, 7]), class_labels=torch.tensor([1, 2])).sample


def _run_pipe(pipe):
    if type(pipe).__name__ == "DiTPipeline":
        return torch.from_numpy(pipe(class_labels=[1, 2], guidance_scale=1.0, num_inference_steps=2,
                                     output_type="np", generator=torch.Generator().manual_seed(1)).images)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 5, 32, generator=g)
    kwargs = dict(prompt_embeds=emb, negative_prompt_embeds=torch.zeros_like(emb), num_inference_steps=2,
                  height=32, width=32, output_type="np", generator=torch.Generator().manual_seed(1))
    if "PixArt" in type(pipe).__name__:
        mask = torch.ones(1, 5, dtype=torch.long)
        kwargs.update(prompt_attention_mask=mask, negative_prompt_attention_mask=mask, use_resolution_binning=False,
                      negative_prompt=None)
    return torch.from_numpy(pipe(**kwargs).images)


MODELS = {"sd15": lambda: tiny_unet("sd15"), "sdxl": lambda: tiny_unet("sdxl"), "pixart": tiny_pixart,
          "dit": tiny_dit}
PIPES = {"sd15": lambda: tiny_sd_pipeline("sd15"), "sdxl": lambda: tiny_sd_pipeline("sdxl"),
         "pixart": tiny_pixart_pipeline, "dit": tiny_dit_pipeline}


def _converted_model(kind, keep_attention=False):
    model = MODELS[kind]()
    dd.convert(model, kernel_sizes=3, keep_attention=keep_attention)
    randomize_blocks(model, seed=5)
    return model


def _converted_pipe(kind):
    pipe = PIPES[kind]()
    dd.convert(pipe, kernel_sizes=3)
    randomize_blocks(pipe, seed=5)
    return pipe


def _pipe_kwargs(pipe):
    name = type(pipe).__name__
    return SD_NONE if "StableDiffusion" in name else {} if name == "DiTPipeline" else NO_TEXT


# --- save_pretrained / from_pretrained --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("low_cpu_mem_usage", [True, False])
def test_model_folder_round_trip(tmp_path, kind, low_cpu_mem_usage):
    model = _converted_model(kind, keep_attention=kind == "pixart")
    ref = _run_model(model)
    dd.save_pretrained(model, tmp_path / "m")
    loaded = dd.from_pretrained(tmp_path / "m", low_cpu_mem_usage=low_cpu_mem_usage)
    assert type(loaded) is type(model) and not loaded.training
    assert all(not t.is_meta for t in loaded.state_dict().values())
    assert [n for n, _ in dd.iter_deltaconv_modules(loaded)] == [n for n, _ in dd.iter_deltaconv_modules(model)]
    kept = {m.attention is not None for _, m in dd.iter_deltaconv_modules(loaded)}
    assert kept == {kind == "pixart"}
    torch.testing.assert_close(_run_model(loaded), ref, rtol=0, atol=0)


def test_model_folder_dtype_and_device_map(tmp_path):
    model = _converted_model("sd15")
    dd.save_pretrained(model, tmp_path / "m")
    loaded = dd.from_pretrained(tmp_path / "m", torch_dtype=torch.bfloat16, device_map="cpu")
    assert {t.dtype for t in loaded.state_dict().values() if t.is_floating_point()} == {torch.bfloat16}
    torch.testing.assert_close(_run_model(loaded).float(), _run_model(model.to(torch.bfloat16)).float())
    plain = _run_model(dd.from_pretrained(tmp_path / "m"))
    for device_map in ({"": "cpu"}, "auto"):
        dispatched = dd.from_pretrained(tmp_path / "m", device_map=device_map)
        assert dispatched.hf_device_map == {"": "cpu"}
        torch.testing.assert_close(_run_model(dispatched), plain, rtol=0, atol=0)
    with pytest.raises(TypeError, match="device_map"):
        dd.from_pretrained(tmp_path / "m", device_map=["cpu"])


@pytest.mark.parametrize("kind", sorted(PIPES))
def test_pipeline_folder_round_trip(tmp_path, kind):
    pipe = _converted_pipe(kind)
    ref = _run_pipe(pipe)
    dd.save_pretrained(pipe, tmp_path / "p")
    loaded = dd.from_pretrained(tmp_path / "p", **_pipe_kwargs(pipe))
    assert type(loaded) is type(pipe)
    assert len(list(dd.iter_deltaconv_modules(loaded))) == len(list(dd.iter_deltaconv_modules(pipe)))
    torch.testing.assert_close(_run_pipe(loaded), ref, rtol=0, atol=0)
    half = dd.from_pretrained(tmp_path / "p", torch_dtype=torch.bfloat16, **_pipe_kwargs(pipe))
    assert dd.resolve_denoiser(half).dtype == torch.bfloat16 and half.vae.dtype == torch.bfloat16


def _deprecations(record) -> list[str]:
    return [f"{w.category.__name__}: {w.message}" for w in record
            if issubclass(w.category, (DeprecationWarning, FutureWarning))]


def test_dtype_and_its_alias_raise_no_deprecation_warning(tmp_path):
    # The installed diffusers deprecates `torch_dtype` for `dtype` (from 0.42); our from_pretrained takes either
    # spelling and passes it the way the installed diffusers wants, so no deprecation warning comes from our calls.
    from diffusers import DiffusionPipeline

    from deltaconv_kernels.integrations.diffusers.sites import dtype_kwarg

    pipe = _converted_pipe("dit")
    dd.save_pretrained(pipe, tmp_path / "p")
    for kwargs in ({"dtype": torch.bfloat16}, {"torch_dtype": torch.bfloat16}):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            loaded = dd.from_pretrained(tmp_path / "p", **kwargs)
            model = dd.from_pretrained(tmp_path / "p" / "transformer", **kwargs)
        assert _deprecations(record) == [], kwargs
        assert loaded.transformer.dtype == torch.bfloat16 and loaded.vae.dtype == torch.bfloat16
        assert model.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="not both"):
        dd.from_pretrained(tmp_path / "p", dtype=torch.float16, torch_dtype=torch.float16)
    if "dtype" in dtype_kwarg(torch.bfloat16):  # the check above can fail: diffusers' own old spelling warns
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            DiffusionPipeline.from_pretrained(tmp_path / "p", transformer=model, torch_dtype=torch.bfloat16)
        assert any("torch_dtype" in w for w in _deprecations(record))


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        dd.from_pretrained(tmp_path / "nothing here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no deltaconv_base.safetensors"):
        dd.from_pretrained(tmp_path / "empty")
    model = tiny_dit()
    with pytest.raises(ValueError, match="not converted"):
        dd.save_pretrained(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    dd.convert(model)
    dd.save_pretrained(model, tmp_path / "dit")
    with pytest.raises(TypeError, match="unexpected arguments"):
        dd.from_pretrained(tmp_path / "dit", vae=None)
    (tmp_path / "dit" / "deltaconv_base.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no deltaconv_base.safetensors"):
        dd.from_pretrained(tmp_path / "dit")


def test_from_pretrained_checks_base_tensors(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    model = _converted_model("dit")
    dd.save_pretrained(model, tmp_path / "m")
    base_file = tmp_path / "m" / "deltaconv_base.safetensors"
    base = load_file(str(base_file))
    with safe_open(str(base_file), "pt") as f:
        header = f.metadata()
    key = next(k for k in base if k.endswith("ff.net.0.proj.weight"))
    save_file({k: v for k, v in base.items() if k != key}, str(base_file), metadata=header)
    with pytest.raises(CheckpointError, match="missing 1 tensors"):
        dd.from_pretrained(tmp_path / "m")
    save_file({**base, key: base[key][:1]}, str(base_file), metadata=header)
    with pytest.raises(CheckpointError, match="has shape"):
        dd.from_pretrained(tmp_path / "m")
    save_file(base, str(base_file), metadata={**header, "deltaconv_version": "0"})
    with pytest.raises(CheckpointError, match="version '0'"):
        dd.from_pretrained(tmp_path / "m")


# --- Hub repo ids, offline against a pre-filled cache -----------------------------------------------------------

def _fill_cache(cache, repo_id: str, folder, commit="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub's cache has after a download: models--{owner}--{name}/snapshots/<commit>/...,
    refs/main naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants
    cache = tmp_path / "hub_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_repo_ids_offline(tmp_path, offline_hub):
    pipe = _converted_pipe("pixart")
    ref = _run_pipe(pipe)
    dd.save_pretrained(pipe, tmp_path / "p")
    _fill_cache(offline_hub, "someone/tiny-pixart-deltaconv", tmp_path / "p")
    loaded = dd.from_pretrained("someone/tiny-pixart-deltaconv", **NO_TEXT)
    torch.testing.assert_close(_run_pipe(loaded), ref, rtol=0, atol=0)
    # load / import_released take repo ids too: a save folder, a pipeline repo (finds transformer/)
    fresh = tiny_pixart()
    dd.load(fresh, "someone/tiny-pixart-deltaconv")
    torch.testing.assert_close(_run_model(fresh), _run_model(pipe.transformer), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="could not be fetched"):
        dd.from_pretrained("someone/not-in-the-cache")
    with pytest.raises(CheckpointError, match="does not exist"):  # no owner/name: a missing local path
        dd.load(tiny_pixart(), "blocks/")


def test_import_released_repo_id(tmp_path, offline_hub):
    from safetensors.torch import save_file
    model = _converted_model("pixart")
    (tmp_path / "rel").mkdir()
    save_file(released_state(model), str(tmp_path / "rel" / "model.safetensors"))
    _fill_cache(offline_hub, "lab/released", tmp_path / "rel")
    fresh = tiny_pixart()
    dd.import_released(fresh, "lab/released", gate=model.transformer_blocks[0].attn1.block.gate)
    torch.testing.assert_close(_run_model(fresh), _run_model(model), rtol=0, atol=0)


# --- diffusers' own save_pretrained / from_pretrained -----------------------------------------------------------

def test_diffusers_save_pretrained_writes_converted_folder_and_diffusers_load_fails_loudly(tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    pipe = _converted_pipe("sd15")
    ref = _run_pipe(pipe)
    pipe.save_pretrained(tmp_path / "p")  # diffusers' own method
    assert not list((tmp_path / "p" / "unet").glob("diffusion_pytorch_model*.safetensors"))
    torch.testing.assert_close(_run_pipe(dd.from_pretrained(tmp_path / "p", **SD_NONE)), ref, rtol=0, atol=0)
    advice = "load-with-deltaconv_kernels.integrations.diffusers.from_pretrained"
    for low in (True, False):
        with pytest.raises(OSError, match=advice):
            StableDiffusionPipeline.from_pretrained(tmp_path / "p", low_cpu_mem_usage=low, **SD_NONE)
        with pytest.raises(OSError, match=advice):
            UNet2DConditionModel.from_pretrained(tmp_path / "p", subfolder="unet", low_cpu_mem_usage=low)
        with pytest.raises(OSError, match=advice):
            UNet2DConditionModel.from_pretrained(tmp_path / "p" / "unet", low_cpu_mem_usage=low)
    with pytest.raises(ValueError, match="takes only the folder"):
        pipe.unet.save_pretrained(tmp_path / "u", variant="fp16")
    copy_saved = copy.deepcopy(pipe.unet)  # the save hook follows the copy, not the original
    copy_saved.save_pretrained(tmp_path / "u")
    torch.testing.assert_close(_run_model(dd.from_pretrained(tmp_path / "u")), _run_model(pipe.unet))


# --- load into meta-device weights ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd15", "pixart"])
def test_load_materialises_meta_blocks(tmp_path, kind):
    model = _converted_model(kind)
    dd.save(model, tmp_path / "blocks")
    # a converted model whose ΔConvBlocks are on the meta device (e.g. converted under init_empty_weights)
    target = copy.deepcopy(model)
    for _, layer in dd.iter_deltaconv_modules(target):
        layer.block.to("meta")
    dd.load(target, tmp_path / "blocks")
    assert all(not p.is_meta for p in dd.deltaconv_parameters(target))
    torch.testing.assert_close(_run_model(target), _run_model(model), rtol=0, atol=0)
    # a fresh model built on meta: convert-and-load materialises the blocks (the base stays meta)
    from accelerate import init_empty_weights
    with init_empty_weights():
        fresh = MODELS[kind]()
    dd.load(fresh, tmp_path / "blocks")
    for (_, a), (_, b) in zip(dd.iter_deltaconv_modules(fresh), dd.iter_deltaconv_modules(model)):
        for x, y in zip(a.block.state_dict().values(), b.block.state_dict().values()):
            assert not x.is_meta and torch.equal(x, y)


# --- accelerate hooks -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(MODELS))
def test_accelerate_cpu_offload_matches(kind):
    from accelerate import cpu_offload
    model = _converted_model(kind)
    ref = _run_model(model)
    offloaded = copy.deepcopy(model)
    cpu_offload(offloaded, execution_device="cpu")
    assert offloaded.state_dict() and all(p.is_meta for p in dd.deltaconv_parameters(offloaded))
    torch.testing.assert_close(_run_model(offloaded), ref, rtol=0, atol=0)


@pytest.mark.parametrize("how", ["sequential", "model"])
def test_pipeline_offload_matches(how):
    # enable_sequential_cpu_offload with execution device "cpu" breaks in accelerate's post-forward hook even for
    # the unconverted tiny pipeline (diffusers 0.42 / accelerate 1.15): it runs where an accelerator exists.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if how == "sequential" and device == "cpu":
        pytest.skip("enable_sequential_cpu_offload needs an accelerator (fails on CPU for base pipelines too)")
    pipe = _converted_pipe("sd15")
    ref = _run_pipe(copy.deepcopy(pipe).to(device))
    if how == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.enable_model_cpu_offload(device=device)
    torch.testing.assert_close(_run_pipe(pipe), ref)


# --- import_released into a converted model ---------------------------------------------------------------------

def test_import_released_into_converted_model(tmp_path):
    from safetensors.torch import save_file
    source = _converted_model("sd15")
    save_file(released_state(source), str(tmp_path / "rel.safetensors"))
    target = tiny_unet("sd15")
    dd.convert(target, kernel_sizes=3)  # same structure, other (random) block weights
    assert dd.import_released(target, tmp_path / "rel.safetensors") is None
    torch.testing.assert_close(_run_model(target), _run_model(source), rtol=0, atol=0)
    other = tiny_unet("sd15")
    dd.convert(other, kernel_sizes=5)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"\(dim, K, scales, inter_ratio\)"):
        dd.import_released(other, tmp_path / "rel.safetensors")
    with pytest.raises(CheckpointError, match="gate 'scaled'"):
        dd.import_released(target, tmp_path / "rel.safetensors", gate="sigmoid")
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())



# --- revert, attention processors -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sdxl", "pixart"])
def test_revert_restores_original_attention(kind):
    base = MODELS[kind]()
    ref = _run_model(base)
    model = copy.deepcopy(base)
    dd.convert(model, kernel_sizes=3, keep_attention=True)
    assert not torch.equal(_run_model(model), ref)
    dd.revert(model)
    assert not list(dd.iter_deltaconv_modules(model)) and "save_pretrained" not in model.__dict__
    assert not any("_deltaconv_size_hook" in m.__dict__ for m in model.modules())
    assert model.state_dict().keys() == base.state_dict().keys()
    torch.testing.assert_close(_run_model(model), ref, rtol=0, atol=0)
    dd.convert(model, kernel_sizes=3)  # converts again after a revert
    with pytest.raises(ValueError, match="did not keep the original attention"):
        dd.revert(model)
    assert len(list(dd.iter_deltaconv_modules(model))) == len(dd.convert(copy.deepcopy(base), kernel_sizes=3))


@pytest.mark.parametrize("keep_attention", [True, False])
def test_base_processor_dict_applies_to_converted_model(keep_attention):
    from diffusers.models.attention_processor import AttnProcessor
    base = tiny_unet("sd15")
    processors = {k: AttnProcessor() for k in base.attn_processors}  # 2 per transformer block
    model = copy.deepcopy(base)
    dd.convert(model, kernel_sizes=3, keep_attention=keep_attention)
    n_blocks = len(processors) // 2
    assert len(model.attn_processors) == (2 * n_blocks if keep_attention else n_blocks)
    dd.set_attn_processor(model, processors)
    got = model.attn_processors
    assert all(isinstance(p, AttnProcessor) for p in got.values())
    attn2 = next(k for k in processors if k.endswith("attn2.processor"))
    assert got[attn2] is processors[attn2]
    if keep_attention:
        attn1 = next(k for k in processors if k.endswith("attn1.processor"))
        assert got[attn1.replace(".processor", ".attention.processor")] is processors[attn1]


def test_save_pretrained_pushes_the_folder_to_the_hub(tmp_path, monkeypatch):
    # The upload itself is huggingface_hub's; here it is intercepted (nothing leaves the machine): the repo is
    # created if missing and exactly the written folder is uploaded, and it loads back as a converted model.
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(huggingface_hub, "upload_folder",
                        lambda **kw: calls.append(("upload", kw["repo_id"], sorted(p.name for p in
                                                                                  Path(kw["folder_path"]).iterdir()))))
    model = tiny_unet("sd15")
    dd.convert(model)
    with pytest.raises(ValueError, match="needs repo_id"):
        dd.save_pretrained(model, tmp_path / "m", push_to_hub=True)
    out = dd.save_pretrained(model, tmp_path / "m", push_to_hub=True, repo_id="me/tiny-deltaconv", private=True)
    assert calls[0] == ("create", "me/tiny-deltaconv", {"private": True, "token": None, "exist_ok": True})
    assert calls[1][:2] == ("upload", "me/tiny-deltaconv") and "deltaconv.safetensors" in calls[1][2]
    assert len(list(dd.iter_deltaconv_modules(dd.from_pretrained(out)))) == 10
    calls.clear()
    dd.save(model, tmp_path / "blocks", push_to_hub=True, repo_id="me/tiny-blocks")  # the blocks alone, likewise
    assert [c[:2] for c in calls] == [("create", "me/tiny-blocks"), ("upload", "me/tiny-blocks")]
    assert calls[1][2] == ["deltaconv.json", "deltaconv.safetensors"]
