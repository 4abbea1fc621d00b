"""The end-to-end benchmark (`deltaconv bench e2e`, bench/e2e.py): the whole code path on tiny configs of the
same model classes (denoiser steps of every variant, layer forward+backward, torch.compile), the records' schema,
that the variants really swap the attention, the full-size configs, the CLI checks (both spellings) and the merge
of runs."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from deltaconv_kernels.bench import cli as bench_cli
from deltaconv_kernels.bench import e2e
from deltaconv_kernels.bench.config import E2E_STEP_METHODS, METHODS, MODELS
from deltaconv_kernels.bench.records import BenchData, Record, merge_records, read_json
from deltaconv_kernels.bench.report import format_markdown
from deltaconv_kernels.cli import main
from deltaconv_kernels.ops import resolve

OUTPUT_NAME = bench_cli.E2E_OUTPUT


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are all per-op overhead: one thread runs them fastest, and never waits on a busy second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def namespace(tmp_path, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    args = parser.parse_args(["e2e", "--device", "cpu", "--dtype", "fp32", "--out", str(tmp_path / "out"),
                              "--tiny", "--resolutions", "512", "--rounds", "2", "--compile-backend", "eager"])
    for key, value in kw.items():
        setattr(args, key, value)
    return args


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    assert bench_cli.run(namespace(tmp)) == 0
    data = json.loads((tmp / "out" / OUTPUT_NAME).read_text())
    return data, [Record(**r) for r in data["records"]]


def test_every_part_and_variant_ran(tiny_run):
    _, records = tiny_run
    by_mode = {}
    for r in records:
        by_mode.setdefault((r.mode, r.model), []).append(r)
    for model in MODELS:
        assert [r.method for r in by_mode[("denoiser step", model)]] == list(E2E_STEP_METHODS)
    assert [r.method for r in by_mode[("forward+backward", "pixart")]] == list(METHODS)
    compiled = by_mode[("forward", "pixart")]
    assert [r.implementation for r in compiled] == [
        "torch (eager)", "torch + torch.compile(eager)", resolve(None, "cpu", torch.float32), "torch-sdpa (eager)",
        "torch-sdpa + torch.compile(eager)"]
    assert [("compile_s" in r.extra) for r in compiled] == [False, True, False, False, True]
    assert len(records) == 2 * len(E2E_STEP_METHODS) + len(METHODS) + 5


def test_records_schema_filled(tiny_run):
    data, records = tiny_run
    assert data["environment"]["dtype"] == "fp32" and data["environment"]["batch"] == 2
    for r in records:
        assert set(dataclasses.asdict(r)) == {f.name for f in dataclasses.fields(Record)}
        assert r.seconds_median > 0 and r.seconds_iqr >= 0 and r.rounds == 2 and len(r.extra["seconds"]) == 2
        assert r.seconds_median == pytest.approx(sum(r.extra["seconds"]) / 2)  # median of 2 rounds
        assert isinstance(r.peak_bytes, int) and r.peak_bytes >= 0 and "RSS" in r.extra["peak_memory"]
        assert r.processes == 1 and r.extrapolated is False and r.fit is None
        assert r.dtype == "fp32" and r.batch == 2 and r.implementation
        assert r.mode in ("denoiser step", "forward+backward", "forward")
    step = [r for r in records if r.mode == "denoiser step"]
    assert {r.resolution for r in step} == {"512 (tiny)"} and {(r.height, r.width) for r in step} == {(64, 64)}
    deltaconv = next(r for r in step if r.method == "deltaconv")
    assert deltaconv.implementation == resolve(None, "cpu", torch.float32)
    forward = [r for r in records if r.mode == "forward"]
    assert all(r.flops_ideal == 0 for r in forward)  # tiny: no FLOPs claim


def test_markdown_table(tiny_run):
    data, records = tiny_run
    text = format_markdown(BenchData(data["environment"], records))
    assert text.startswith("Device: ") and "load average" in text
    assert text.count("| resolution | method |") == 4  # pixart step, sd15 step, forward+backward, forward
    rows = [line for line in text.splitlines() if line.startswith("| 512") or line.startswith("| tiny")]
    assert len(rows) == len(records)
    assert all(line.rstrip().endswith("x |") for line in rows)  # every row has its speedup over SDPA
    assert "1.00x" in next(line for line in rows if "| sdpa |" in line)


def _out(model, inputs):
    with torch.inference_mode():
        return model(**inputs)[0]


@pytest.mark.parametrize("name", MODELS)
def test_variants_swap_the_attention(name):
    model = e2e.build_model(name, "cpu", torch.float32, tiny=True)
    inputs = e2e.model_inputs(name, model, 64, 64, batch=2)
    before = _out(model, inputs)
    variants = e2e.AttentionVariants(name, model, E2E_STEP_METHODS)
    assert variants.methods == list(E2E_STEP_METHODS)
    variants.prime(inputs)
    outs = {}
    for method in variants.methods:
        variants.call(method, inputs, lambda: None)()
        outs[method] = _out(model, inputs) if method != "ditfastattn" else None
    variants.install("sdpa")
    torch.testing.assert_close(_out(model, inputs), before, rtol=0, atol=0)  # the original is back, unchanged
    for method in ("deltaconv", "linfusion", "mediator"):
        assert not torch.allclose(outs[method], before), method
    # DiTFastAttn ran its compressed step: window attention + the residual its primed full step cached
    variants.call("ditfastattn", inputs, lambda: None)()
    assert all(layer.step == 2 for layer in variants.ditfastattn_layers)
    assert all(layer.schedule.mode(1) == e2e.DITFASTATTN_STEP for layer in variants.ditfastattn_layers)


def test_model_inputs_match_the_pipelines():
    model = e2e.build_model("pixart", "cpu", torch.float32, tiny=True)
    inputs = e2e.model_inputs("pixart", model, 128, 64, batch=2)
    assert inputs["hidden_states"].shape == (2, 4, 16, 8)
    assert inputs["encoder_hidden_states"].shape == (2, 300, model.config.caption_channels)
    assert inputs["timestep"].shape == (2,) and inputs["added_cond_kwargs"] == {"resolution": None,
                                                                                "aspect_ratio": None}
    unet = e2e.build_model("sd15", "cpu", torch.float32, tiny=True)
    inputs = e2e.model_inputs("sd15", unet, 64, 64, batch=2)
    assert inputs["sample"].shape == (2, 4, 8, 8) and inputs["encoder_hidden_states"].shape == (2, 77, 32)
    with pytest.raises(ValueError, match="multiple of the VAE factor"):
        e2e.model_inputs("sd15", unet, 60, 64, batch=2)


@pytest.mark.parametrize("name, params, sites", [("pixart", 610.9e6, 28), ("sd15", 859.5e6, 16)])
def test_full_configs_are_the_public_architectures(name, params, sites):
    import diffusers
    from accelerate import init_empty_weights
    from diffusers.models.attention import BasicTransformerBlock

    cfg = dict(e2e.FULL_CONFIGS[name])
    with init_empty_weights():
        model = getattr(diffusers, cfg.pop("_class_name"))(**cfg)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=2e-3)
    blocks = [m for m in model.modules() if isinstance(m, BasicTransformerBlock) and not m.only_cross_attention]
    assert len(blocks) == sites  # the self-attention layers a conversion replaces
    inner = {"pixart": 1152, "sd15": 320}[name]
    assert blocks[0].attn1.to_q.in_features == inner


@pytest.mark.parametrize("option, value, message", [
    ("e2e_models", "pixart,sdxl", "--models"),
    ("e2e_parts", "step,train", "--parts"),
    ("e2e_methods", "sdpa,flash", "--methods"),
    ("e2e_resolutions", "512,3K", "--resolutions"),
    ("e2e_resolutions", "", "--resolutions"),
    ("e2e_resolutions", "1000x512", "multiple of the VAE factor"),
    ("e2e_rounds", 0, "--rounds"),
    ("batch", 0, "--batch"),
    ("device", "tpu", "--device"),
    ("dtype", "fp8", "--dtype"),
    ("e2e_compile_backend", "no-such-backend", "--compile-backend"),
])
def test_cli_errors_name_the_option(tmp_path, option, value, message):
    with pytest.raises(ValueError, match=message):
        bench_cli.run(namespace(tmp_path, **{option: value}))
    assert not (tmp_path / "out").exists()  # refused before anything ran or was written


def test_method_subset(tmp_path):
    args = namespace(tmp_path, e2e_models="pixart", e2e_parts="step", e2e_methods="deltaconv,sdpa", e2e_rounds=1)
    assert bench_cli.run(args) == 0
    records = json.loads((tmp_path / "out" / OUTPUT_NAME).read_text())["records"]
    assert [(r["method"], r["rounds"]) for r in records] == [("sdpa", 1), ("deltaconv", 1)]


def test_out_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(ValueError, match="--out"):
        bench_cli.run(namespace(tmp_path))


@pytest.mark.parametrize("warmup", [0, 1])
def test_measure_peak_call_then_warmup_then_interleaved_rounds(warmup):
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    out = e2e.measure(calls, rounds=3, device="cpu", warmup=warmup)
    assert order == ["a", "b"] * (1 + warmup + 3)  # peak-memory calls first, then round-robin
    assert {name: timing.rounds for name, (timing, _, _) in out.items()} == {"a": 3, "b": 3}
    assert all(isinstance(peak, int) and "RSS" in how for _, peak, how in out.values())


def test_merge_replaces_the_cases_measured_again(tmp_path):
    first = namespace(tmp_path, e2e_models="pixart", e2e_parts="step", e2e_methods="deltaconv,sdpa", e2e_rounds=1)
    assert bench_cli.run(first) == 0
    path = tmp_path / "out" / OUTPUT_NAME
    before = read_json(path).records
    again = namespace(tmp_path, e2e_models="pixart", e2e_parts="step", e2e_methods="deltaconv,linfusion",
                      e2e_rounds=2, e2e_merge=True)
    assert bench_cli.run(again) == 0
    data = read_json(path)
    env, merged = data.environment, data.records
    assert [(r.method, r.rounds) for r in merged] == [("sdpa", 1), ("deltaconv", 2), ("linfusion", 2)]
    assert merged[0] == before[0]  # the case not measured again is kept as it was
    assert env["rounds"] == 2 and [e["rounds"] for e in env["earlier_runs"]] == [1]


def test_merge_without_an_earlier_file_is_refused_before_timing(tmp_path):
    with pytest.raises(ValueError, match="--merge"):
        bench_cli.run(namespace(tmp_path, e2e_merge=True))
    assert not (tmp_path / "out").exists()


def test_merge_records_order():
    def rec(method, resolution, seconds):
        return Record(method=method, model="pixart", resolution=resolution, height=1, width=1, dtype="bf16",
                      batch=2, implementation="x", seconds_median=seconds, seconds_iqr=0.0, rounds=1, processes=1,
                      peak_bytes=0, flops_executed=0.0, flops_ideal=0.0, extrapolated=False, mode="denoiser step")
    old = [rec("sdpa", "512", 1.0), rec("deltaconv", "512", 2.0)]
    new = [rec("deltaconv", "1K", 3.0), rec("sdpa", "512", 4.0)]
    merged = merge_records(old, new)
    assert [(r.method, r.resolution, r.seconds_median) for r in merged] == [
        ("sdpa", "512", 4.0), ("deltaconv", "512", 2.0), ("deltaconv", "1K", 3.0)]


def test_old_spelling_is_an_alias(tmp_path, capsys):
    """`deltaconv bench --end-to-end --e2e-*` still runs the end-to-end benchmark; its errors name its options."""
    assert main(["bench", "--end-to-end", "--e2e-models", "pixart,sdxl", "--out", str(tmp_path / "out")]) == 2
    assert "deltaconv bench: error: --e2e-models must be" in capsys.readouterr().err
    assert main(["bench", "--end-to-end", "--device", "cpu", "--dtype", "float32", "--out", str(tmp_path / "out"),
                 "--e2e-tiny", "--e2e-models", "sd15", "--e2e-parts", "step", "--e2e-methods", "sdpa,deltaconv",
                 "--e2e-resolutions", "512", "--e2e-rounds", "1"]) == 0
    data = read_json(tmp_path / "out" / OUTPUT_NAME)
    assert [r.method for r in data.records] == ["sdpa", "deltaconv"] and data.command.startswith("deltaconv bench")
    assert (tmp_path / "out" / "end_to_end.md").read_text().count("| resolution | method |") == 1
