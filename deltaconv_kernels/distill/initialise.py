"""Starting ΔConvBlocks next to the attention they replace (docs/DESIGN.md §10): `convert(model, init=...,
calibration=...)` calls `initialise` on the freshly converted model (attention kept).

- "random": the blocks keep their kaiming init (as the released code starts them);
- "attention": the closed form of `init_from_attention` from each layer's statistics (mean relative attention
  pattern, input second moment) and its value path W_o W_v;
- "attention+fit": the closed form, then `fit.fit_output_projections` (step 0 of distillation).

`calibration` is what the statistics come from: a callable `run(model)` that calls the model (e.g. on real
latents noised to several timesteps), a keyword-argument dict or a list of them (`model(**d)` for each), or the folder
(or file) `deltaconv analyze` wrote its `attention_statistics.safetensors` into. With model inputs the init's
feature error on them is measured and an init that does worse than a block outputting zeros is warned about
and recorded; the fit needs model inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

# Modules, not names: both import integrations.diffusers submodules, whose package __init__ imports convert, which
# imports this module (see integrations/diffusers/conversion.py).
from deltaconv_kernels.distill import fit, models
from deltaconv_kernels.init_from_attention import closed_form_init, value_path
from deltaconv_kernels.integrations.diffusers.layers import converted_layers, set_mode

INITS = ("random", "attention", "attention+fit")


def check_init(init: str, calibration) -> None:
    """The `init` / `calibration` pair `convert` was given, checked before the model is changed."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "random":
        if calibration is not None:
            raise ValueError("calibration is only used by init='attention' or 'attention+fit', not init='random'")
        return
    if calibration is None:
        raise ValueError(f"init={init!r} needs calibration=: model inputs (a callable run(model), or a list of "
                         "keyword-argument dicts) or the folder `deltaconv analyze` wrote")
    if isinstance(calibration, (str, Path)):
        if init == "attention+fit":
            raise ValueError("init='attention+fit' fits the blocks to the attention's outputs, which needs model "
                             "inputs as calibration (a callable or a list of input dicts), not a statistics folder")
        return
    runner(calibration)


def runner(calibration) -> Callable[[torch.nn.Module], None]:
    """`run(model)` for model-input calibration: the callable itself, or one call per keyword-argument dict."""
    if callable(calibration):
        return calibration
    if isinstance(calibration, dict):  # one input
        calibration = [calibration]
    if isinstance(calibration, (list, tuple)) and calibration and all(isinstance(d, dict) for d in calibration):
        def run(model):
            for kwargs in calibration:
                model(**kwargs)
        return run
    raise ValueError("calibration must be a callable run(model), a non-empty list of keyword-argument dicts for "
                     f"the model, or a statistics folder/file path; got {type(calibration).__name__}")


def _statistics(model, calibration, num_queries: int, seed: int) -> dict:
    # deferred: attention_stats needs safetensors and diffusers, which `import deltaconv_kernels` must not
    from deltaconv_kernels.analysis.attention_stats import collect, load_statistics

    if isinstance(calibration, (str, Path)):
        return load_statistics(calibration)
    set_mode(model, "teacher")
    try:
        return collect(model, runner(calibration), num_queries, seed)
    finally:
        set_mode(model, "student")


def _value_path(attn, name: str):
    if getattr(attn, "residual_connection", False):
        raise ValueError(f"{name}: an attention with residual_connection=True is not the attn1 the closed form "
                         "models (out = W_o A W_v x + c)")
    out = attn.to_out[0]
    return value_path(attn.to_v.weight, attn.to_v.bias, out.weight, out.bias,
                      float(getattr(attn, "rescale_output_factor", 1.0)))


def initialise(model, init: str, calibration, keep_attention: bool, num_queries: int = 64, seed: int = 0) -> dict:
    """Initialise every converted layer of `model` (converted with its attention kept); afterwards drop the kept
    attention unless `keep_attention`. On an error the caller (`convert`) puts the original attention back.
    Returns the record that `save` writes into deltaconv.json."""
    record = _initialise(model, init, calibration, num_queries, seed)
    for module in converted_layers(model).values():
        module.init_record = {"init": init, "calibration": record["calibration"], **record["layers"][
            module.layer_name]}
        if not keep_attention:
            module.attention = None
    return record


def _initialise(model, init: str, calibration, num_queries: int, seed: int) -> dict:

    layers = converted_layers(model)
    stats = _statistics(model, calibration, num_queries, seed)
    missing = [n for n in layers if n not in stats]
    if missing:
        raise ValueError(f"calibration: no statistics for {missing[:3]}{'...' if len(missing) > 3 else ''} "
                         f"(it has {sorted(stats)[:3]}...): calibrate on this model, with inputs that reach "
                         "every self-attention layer")
    records = {}
    for name, module in layers.items():
        m, c = _value_path(module.attention, name)
        records[name] = closed_form_init(module.block, stats[name], m, c, name)
    described = str(calibration) if isinstance(calibration, (str, Path)) else "model inputs"
    if isinstance(calibration, (str, Path)):  # statistics only: no inputs to measure the result on
        for r in records.values():
            r["feature_error"] = None
        return {"init": init, "calibration": described, "layers": records}
    run = runner(calibration)
    errors = fit.feature_errors(model, run)
    if init == "attention+fit":
        for name, r in fit.fit_output_projections(model, run).items():
            records[name]["fit"] = r
        fitted = fit.feature_errors(model, run)
        for name in records:
            records[name]["feature_error_closed_form"] = errors[name]
        errors = fitted
    worse = {n: e for n, e in errors.items() if e > 1.0}
    for name, r in records.items():
        r["feature_error"] = errors[name]
        r["worse_than_zero"] = name in worse
    if worse:
        warnings.warn(f"init={init!r} does worse than a zero output on its own calibration data in {len(worse)} "
                      f"layers (feature error > 1: {', '.join(f'{n} {e:.3f}' for n, e in worse.items())}); "
                      "recorded as worse_than_zero in the checkpoint's init record", RuntimeWarning, stacklevel=3)
    return {"init": init, "calibration": described, "layers": records}


def dataset_calibration(dataset, noise_scheduler, samples: int = 32, batch_size: int = 8, seed: int = 0):
    """`run(model)` over `samples` training samples of the most common latent size (the statistics need one map
    size per layer), each noised to its own timestep spread evenly over the schedule, `batch_size` at a time: the
    calibration `deltaconv distill --init attention|attention+fit` uses. Same samples, noise and timesteps on
    every call (the fit calls it once per layer)."""
    from collections import Counter


    sizes = dataset.sizes()
    common = Counter(sizes).most_common(1)[0][0]
    pool = [i for i, s in enumerate(sizes) if s == common]
    gen = torch.Generator().manual_seed(seed)
    picked = [pool[i] for i in torch.randperm(len(pool), generator=gen)[:samples].tolist()]
    num_t = noise_scheduler.config.num_train_timesteps
    timesteps = torch.linspace(0, num_t - 1, len(picked)).round().long()
    batches = []
    for start in range(0, len(picked), batch_size):
        batch = dataset.collate(picked[start:start + batch_size])
        t = timesteps[start:start + batch_size]
        noise = torch.randn(batch["latents"].shape, generator=gen)
        batches.append((batch, t, noise_scheduler.add_noise(batch["latents"], noise, t)))

    @torch.no_grad()
    def run(model):
        param = next(model.parameters())
        for batch, t, noisy in batches:
            moved = {k: v.to(param.device) for k, v in batch.items()}
            models.predict(model, noisy.to(param.device, param.dtype), t.to(param.device), moved)
    return run
