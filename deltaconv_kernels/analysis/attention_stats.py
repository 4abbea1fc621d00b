"""The statistics the attention-informed initialisation needs (docs/DESIGN.md §10), as a consumer of `AttentionCapture`:
per layer the head-averaged mean softmax row relative to its query (from the capture's sampled queries, so memory
stays at one `[2H-1, 2W-1]` sum per layer, never an N x N matrix) and the second moment `E[x x^T]` of the attn1
inputs. `deltaconv analyze` writes them next to analysis.json as `attention_statistics.safetensors`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from deltaconv_kernels.analysis.capture import DEFAULT_MAX_ELEMENTS, AttentionCapture, CapturedMaps, attention_of
from deltaconv_kernels.fileio import atomic_write
from deltaconv_kernels.init_from_attention import LayerStatistics

STATS_NAME = "attention_statistics.safetensors"
STATS_FORMAT = "deltaconv_kernels.attention_statistics"


class AttentionStatistics:
    """Consumer for `AttentionCapture` (the maps) plus forward pre-hooks on attn1 (the inputs)."""

    def __init__(self):
        self._pattern: dict[str, torch.Tensor] = {}
        self._maps: dict[str, int] = {}
        self._moment: dict[str, torch.Tensor] = {}
        self._tokens: dict[str, int] = {}
        self._hw: dict[str, tuple[int, int]] = {}

    def __call__(self, c: CapturedMaps) -> None:
        h, w = c.hw
        if self._hw.setdefault(c.layer, (h, w)) != (h, w):
            raise ValueError(f"{c.layer}: calibration maps of {self._hw[c.layer]} and {(h, w)}: the statistics "
                             "need calibration inputs of one size")
        rel = self._pattern.get(c.layer)
        if rel is None:
            rel = self._pattern[c.layer] = torch.zeros(2 * h - 1, 2 * w - 1, dtype=torch.float64)
            self._maps[c.layer] = 0
        summed = c.maps.to(torch.float64).sum((0, 1)).cpu()  # [S, H, W]: over samples and heads
        for s, (qy, qx) in enumerate(zip(c.qy.tolist(), c.qx.tolist())):
            rel[h - 1 - qy:2 * h - 1 - qy, w - 1 - qx:2 * w - 1 - qx] += summed[s]
        self._maps[c.layer] += c.maps.shape[0] * c.maps.shape[1] * c.maps.shape[2]

    def input_hook(self, name: str):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
            moment = flat.t() @ flat
            if name in self._moment:
                self._moment[name] += moment.cpu()
            else:
                self._moment[name] = moment.cpu()
            self._tokens[name] = self._tokens.get(name, 0) + flat.shape[0]
        return hook

    def results(self) -> dict[str, LayerStatistics]:
        missing = [n for n in self._moment if n not in self._pattern]
        if missing:
            raise RuntimeError(f"layers {missing} ran but produced no attention maps")
        return {n: LayerStatistics(self._hw[n], self._pattern[n] / self._maps[n],
                                   self._moment[n] / self._tokens[n], self._maps[n], self._tokens[n])
                for n in self._pattern}


def collect(model: torch.nn.Module, run: Callable[[torch.nn.Module], object], num_queries: int = 64, seed: int = 0,
            layers: Sequence[str] | None = None,
            max_elements: int = DEFAULT_MAX_ELEMENTS) -> dict[str, LayerStatistics]:
    """The statistics of every (or every named) self-attention layer of `model` while `run(model)` calls it
    (e.g. on calibration inputs at several timesteps). `model` is unconverted, or converted with its attention
    kept (then it must be in the "teacher" mode, so that the kept attention computes the maps)."""
    stats = AttentionStatistics()
    capture = AttentionCapture(model, stats, num_queries, seed, layers, max_elements=max_elements)
    with capture, hooked_inputs(capture, stats), torch.no_grad():
        run(model)
    result = stats.results()
    never = [n for n in capture.layers if n not in result]
    if never:
        raise RuntimeError(f"layers {never} never ran during the calibration forwards")
    return result


class hooked_inputs:  # noqa: N801 - used as a context manager like a function
    """Registers `stats.input_hook` on the attention of every layer of `capture` while active."""

    def __init__(self, capture: AttentionCapture, stats: AttentionStatistics):
        self.capture, self.stats, self.handles = capture, stats, []

    def __enter__(self):
        for name, block in self.capture.layers.items():
            self.handles.append(attention_of(block).register_forward_pre_hook(self.stats.input_hook(name),
                                                                              with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def save_statistics(stats: dict[str, LayerStatistics], path, settings: dict | None = None) -> Path:
    """`{layer}.pattern` and `{layer}.second_moment` tensors; H, W and counts in the JSON metadata."""
    tensors, meta = {}, {}
    for name, s in stats.items():
        tensors[f"{name}.pattern"] = s.pattern.contiguous()
        tensors[f"{name}.second_moment"] = s.second_moment.contiguous()
        meta[name] = {"hw": list(s.hw), "maps": s.maps, "tokens": s.tokens}
    path = Path(path)
    data = safetensors_bytes(tensors, metadata={"format": STATS_FORMAT, "layers": json.dumps(meta),
                                                "settings": json.dumps(settings or {})})
    atomic_write(path, lambda f: f.write(data))
    return path


def load_statistics(path) -> dict[str, LayerStatistics]:
    """Read what `save_statistics` wrote (a file, or a folder holding `attention_statistics.safetensors`)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATS_NAME
    if not path.is_file():
        raise ValueError(f"calibration: no {STATS_NAME} at {path} (run `deltaconv analyze` on the model first)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != STATS_FORMAT:
                raise ValueError(f"calibration: {path} is not an attention-statistics file (format "
                                 f"{meta.get('format')!r})")
            layers = json.loads(meta["layers"])
            return {name: LayerStatistics(tuple(v["hw"]), f.get_tensor(f"{name}.pattern"),
                                          f.get_tensor(f"{name}.second_moment"), int(v["maps"]), int(v["tokens"]))
                    for name, v in layers.items()}
    except (OSError, KeyError, json.JSONDecodeError, RuntimeError, SafetensorError) as e:
        raise ValueError(f"calibration: {path} could not be read as attention statistics ({e})") from e
