"""`convert(model, init="attention" | "attention+fit", calibration=...)` on the tiny models of every supported
family (docs/DESIGN.md §10): the blocks start next to the attention (feature error far below the 1.0 of a zero
output), the choice and the statistics are recorded in the report and in deltaconv.json, every gate /
inter_ratio / number of stages works, and bad calibration is a clear error that leaves the model as it was."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from deltaconv_kernels.integrations.diffusers import DeltaConvAttention, convert, save

torch.set_num_threads(1)  # tiny models: a second thread only adds contention on a shared machine


def _pixart_calibration(model, batch: int = 2):
    from tiny_models import pixart_inputs
    return [pixart_inputs(model, batch=batch, seed=s) for s in range(2)]


def _unet_calibration(model):
    from tiny_models import unet_inputs
    x, t, ctx = unet_inputs(model, batch=1, height=16, width=16)  # mid block 2x2: K=3 fits
    return [dict(sample=x, timestep=t, encoder_hidden_states=ctx)]


def _dit_calibration(model):
    g = torch.Generator().manual_seed(0)
    return [dict(hidden_states=torch.randn(2, model.config.in_channels, 16, 16, generator=g),
                 timestep=torch.tensor([10, 700]), class_labels=torch.tensor([0, 1]))]


def _converted(model) -> bool:
    return any(isinstance(m, DeltaConvAttention) for m in model.modules())


@pytest.mark.parametrize("family", ["pixart", "dit", "unet"])
def test_attention_init_starts_next_to_the_teacher(family, tmp_path):
    from tiny_models import tiny_dit, tiny_pixart, tiny_unet

    model = {"pixart": tiny_pixart, "dit": tiny_dit, "unet": tiny_unet}[family]()
    calibration = {"pixart": _pixart_calibration, "dit": _dit_calibration, "unet": _unet_calibration}[family](model)
    random_model = copy.deepcopy(model)
    report = convert(model, kernel_sizes=3, init="attention", calibration=calibration, backend="torch")
    layers = report.init["layers"]
    assert report.init["init"] == "attention" and set(layers) == set(report.kernel_sizes())
    for name, r in layers.items():
        assert 0 <= r["feature_error"] < 0.5 and not r["worse_than_zero"], (name, r)
        assert r["kernel_size"] == 3 and r["maps"] > 0 and r["tokens"] > 0
    assert all(m.attention is None for m in model.modules() if isinstance(m, DeltaConvAttention))
    # the kaiming start is much further away on the same data
    from deltaconv_kernels.distill import fit
    convert(random_model, kernel_sizes=3, keep_attention=True, backend="torch")
    from deltaconv_kernels.distill.initialise import runner
    fresh = fit.feature_errors(random_model, runner(calibration))
    assert sum(fresh.values()) > 2 * sum(r["feature_error"] for r in layers.values())
    config = json.loads((save(model, tmp_path / "ckpt") / "deltaconv.json").read_text())
    assert set(config["init"]) == set(layers)
    first = config["init"][next(iter(layers))]
    assert first["init"] == "attention" and first["calibration"] == "model inputs" and "beta" in first


@pytest.mark.parametrize("gate,inter_ratio,scales", [("sigmoid", 0.5, (1.0, 0.5)), ("scaled", 2.0, (1.0,)),
                                                     ("sigmoid", 0.25, (0.5, 1.0, 0.25))])
def test_fit_improves_on_the_closed_form_for_every_block_setting(gate, inter_ratio, scales):
    from tiny_models import tiny_pixart

    model = tiny_pixart()
    report = convert(model, kernel_sizes=5, gate=gate, scales=scales, inter_ratio=inter_ratio, keep_attention=True,
                     init="attention+fit", calibration=_pixart_calibration(model), backend="torch")
    layers = report.init["layers"]
    first = next(iter(layers.values()))  # the first layer sees the same inputs before and after the fit
    assert first["feature_error"] <= first["feature_error_closed_form"] + 1e-9
    assert sum(r["feature_error"] for r in layers.values()) < sum(r["feature_error_closed_form"]
                                                                  for r in layers.values())
    assert all(r["fit"]["tokens"] > 0 for r in layers.values())
    kept = [m for m in model.modules() if isinstance(m, DeltaConvAttention)]
    assert kept and all(m.attention is not None and m.mode == "student" for m in kept)


def test_statistics_folder_from_deltaconv_analyze(tmp_path, capsys):
    from deltaconv_kernels.analysis.tiny import tiny_model
    from deltaconv_kernels.cli import main

    out = tmp_path / "analysis"
    assert main(["analyze", "--tiny", "pixart", "--out", str(out), "--timesteps", "999,500", "--num-queries", "16",
                 "--no-plots", "--no-progress"]) == 0
    assert (out / "attention_statistics.safetensors").is_file()
    model = tiny_model("pixart", 0)  # the model --tiny pixart analysed
    report = convert(model, kernel_sizes=str(out / "analysis.json"), init="attention", calibration=out,
                     backend="torch")
    assert all(r["feature_error"] is None and r["maps"] > 0 for r in report.init["layers"].values())
    with pytest.raises(ValueError, match="needs model inputs"):
        convert(tiny_model("pixart", 0), kernel_sizes=3, init="attention+fit", calibration=out)


def test_bad_calibration_is_named_and_leaves_the_model_untouched(tmp_path):
    from tiny_models import tiny_pixart

    from deltaconv_kernels.analysis.attention_stats import load_statistics, save_statistics
    from deltaconv_kernels.distill.initialise import runner

    model = tiny_pixart()
    calibration = _pixart_calibration(model, batch=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def untouched():
        assert not _converted(model)
        after = model.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        with torch.no_grad():
            model(**calibration[0])  # still runs as the original model (no size hooks left behind)

    with pytest.raises(ValueError, match="init must be one of"):
        convert(model, init="attn", calibration=calibration)
    with pytest.raises(ValueError, match="needs calibration"):
        convert(model, init="attention")
    with pytest.raises(ValueError, match="calibration must be a callable"):
        convert(model, init="attention", calibration=[1, 2])
    untouched()
    with pytest.raises(ValueError, match="kernel_size 31 is larger than its 8x6 map"):
        convert(model, kernel_sizes=31, init="attention", calibration=calibration)
    untouched()
    bad = copy.deepcopy(calibration)
    bad[0]["hidden_states"][0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="not finite"):
        convert(model, kernel_sizes=3, init="attention", calibration=bad)
    untouched()
    # statistics of another model: one layer's site missing
    other = copy.deepcopy(model)
    convert(other, kernel_sizes=3, init="attention", calibration=calibration, keep_attention=True)
    from deltaconv_kernels.analysis.attention_stats import collect
    from deltaconv_kernels.integrations.diffusers import set_mode
    set_mode(other, "teacher")
    stats = collect(other, runner(calibration), 8)
    stats.pop(sorted(stats)[0])
    save_statistics(stats, tmp_path / "partial.safetensors")
    assert len(load_statistics(tmp_path / "partial.safetensors")) == len(stats)
    with pytest.raises(ValueError, match="calibration: no statistics for"):
        convert(model, kernel_sizes=3, init="attention", calibration=tmp_path / "partial.safetensors")
    untouched()
    with pytest.raises(RuntimeError, match="never ran"):
        convert(model, kernel_sizes=3, init="attention", calibration=lambda m: None)
    untouched()


def test_an_init_worse_than_zero_is_warned_about_and_recorded(monkeypatch):
    from tiny_models import tiny_pixart

    from deltaconv_kernels.distill import initialise

    closed_form = initialise.closed_form_init

    def flipped(block, *args, **kwargs):  # the closed form with its sign flipped: out ~ -teacher, error ~ 4
        record = closed_form(block, *args, **kwargs)
        with torch.no_grad():
            for p in (block.proj_out.weight, block.proj_out.bias, block.pool_proj.weight):
                p.neg_()
        return record

    monkeypatch.setattr(initialise, "closed_form_init", flipped)
    model = tiny_pixart()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = convert(model, kernel_sizes=3, init="attention", calibration=_pixart_calibration(model, 1))
    assert any("worse than a zero output" in str(w.message) for w in caught)
    assert all(r["worse_than_zero"] and r["feature_error"] > 1 for r in report.init["layers"].values())
