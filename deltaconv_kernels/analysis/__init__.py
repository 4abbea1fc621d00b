"""Attention-locality analysis (paper §3.2): how local is a diffusers model's self-attention, and which
ΔConvBlock kernel size does each layer need.

    from deltaconv_kernels.analysis.pipeline import AnalysisSettings, analyze
    report = analyze(unet, AnalysisSettings(timesteps=(999, 500, 1)), latent_hw=(64, 64))
    convert(unet, kernel_sizes=report.kernel_sizes)

Modules: `capture` (hooks on attn1, sampled-query chunked softmax), `locality` (M(k), dM/dk, Butterworth
high-pass, ERF), `aggregate` (running averages), `recommend` (kernel-size rule), `pipeline` (inputs, timesteps,
report/JSON), `plots`, `tiny` (random demo models), `attention_stats` (mean relative pattern and input second
moment for the attention-informed init, docs/DESIGN.md §10), `cli` (`deltaconv analyze`). Nothing is imported
here so that `locality` stays usable without diffusers.
"""
