"""`attention_stats.collect` on a real (tiny) diffusers model: with every query sampled, the mean relative pattern
and the input second moment equal a brute-force computation from the full attention matrices, and a model
converted with its attention kept (in the "teacher" mode) gives the same statistics."""

from __future__ import annotations

import torch

from deltaconv_kernels.analysis.attention_stats import collect
from deltaconv_kernels.analysis.capture import attention_logits_inputs

torch.set_num_threads(1)


def _brute_force(model, kwargs, hw):
    """{attn1 name: (relative pattern [2H-1, 2W-1], E[x x^T])} from the full softmax matrices."""
    h, w = hw
    found, handles = {}, []
    for name, module in model.named_modules():
        if name.endswith("attn1"):
            def hook(attn, args, kw, output, name=name):
                x = args[0] if args else kw["hidden_states"]
                q, k = attention_logits_inputs(attn, x, torch.arange(h * w))
                probs = torch.softmax(q.double() @ k.double().transpose(-1, -2) * attn.scale, -1)  # [B, heads, N, N]
                rel = torch.zeros(2 * h - 1, 2 * w - 1, dtype=torch.float64)
                maps = probs.sum((0, 1)).view(h * w, h, w)
                for i in range(h * w):
                    qy, qx = divmod(i, w)
                    rel[h - 1 - qy:2 * h - 1 - qy, w - 1 - qx:2 * w - 1 - qx] += maps[i]
                flat = x.double().reshape(-1, x.shape[-1])
                found[name] = (rel / (probs.shape[0] * probs.shape[1] * h * w), flat.t() @ flat / flat.shape[0])
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
    with torch.no_grad():
        model(**kwargs)
    for handle in handles:
        handle.remove()
    return found


def test_collect_matches_brute_force_on_tiny_pixart_and_on_its_converted_copy():
    from tiny_models import pixart_inputs, tiny_pixart

    from deltaconv_kernels.integrations.diffusers import convert, set_mode

    model = tiny_pixart()
    kwargs = pixart_inputs(model, batch=2, height=12, width=10)  # patch 2: a 6x5 token map
    expected = _brute_force(model, kwargs, (6, 5))
    stats = collect(model, lambda m: m(**kwargs), num_queries=30)  # every query of the 6x5 map
    assert set(stats) == set(expected)
    for name, s in stats.items():
        pattern, moment = expected[name]
        assert s.hw == (6, 5) and s.tokens == 2 * 30 and s.maps == 2 * model.config.num_attention_heads * 30
        torch.testing.assert_close(s.pattern, pattern, rtol=0, atol=1e-6)
        torch.testing.assert_close(s.second_moment, moment, rtol=1e-9, atol=1e-9)
        assert abs(float(s.pattern.sum()) - 1) < 1e-6

    convert(model, kernel_sizes=3, keep_attention=True, backend="torch")
    set_mode(model, "teacher")
    again = collect(model, lambda m: m(**kwargs), num_queries=30)
    for name, s in again.items():
        torch.testing.assert_close(s.pattern, stats[name].pattern, rtol=0, atol=1e-7)
        torch.testing.assert_close(s.second_moment, stats[name].second_moment)


def test_sampled_queries_bound_the_memory_and_keep_the_pattern_a_distribution():
    from tiny_models import tiny_dit

    model = tiny_dit()
    g = torch.Generator().manual_seed(0)
    kwargs = dict(hidden_states=torch.randn(1, model.config.in_channels, 16, 16, generator=g),
                  timestep=torch.tensor([500]), class_labels=torch.tensor([1]))
    stats = collect(model, lambda m: m(**kwargs), num_queries=5, max_elements=64)  # chunks of a few scores
    for s in stats.values():
        assert s.maps == model.config.num_attention_heads * 5 and s.tokens == s.hw[0] * s.hw[1]
        assert torch.isfinite(s.pattern).all() and abs(float(s.pattern.sum()) - 1) < 1e-6
