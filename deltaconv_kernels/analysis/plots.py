"""PNG plots of an `AnalysisReport`: M(k) and dM/dk per layer, the high-pass version, ERF and kernel size per
layer, and attention maps around the plotted queries. matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from deltaconv_kernels.analysis.pipeline import AnalysisReport  # noqa: E402

_SHORT = ((r"\.attn1$", ""), (r"down_blocks\.", "down"), (r"up_blocks\.", "up"), (r"mid_block", "mid"),
          (r"\.attentions\.", ".a"), (r"(^|\.)transformer_blocks\.", r"\1t"))


def short_name(layer: str) -> str:
    """Plot label: `down_blocks.1.attentions.0.transformer_blocks.2.attn1` -> `down1.a0.t2`,
    `transformer_blocks.3.attn1` -> `t3`."""
    for pattern, repl in _SHORT:
        layer = re.sub(pattern, repl, layer)
    return layer


def _colors(n: int):
    cmap = plt.get_cmap("viridis" if n > 10 else "tab10")
    return [cmap(i / max(n - 1, 1)) if n > 10 else cmap(i) for i in range(n)]


def _legend(ax, n: int) -> None:
    ax.legend(fontsize=7 if n <= 12 else 5, ncol=1 if n <= 12 else 2, loc="center left", bbox_to_anchor=(1.01, 0.5))


def plot_mass(report: AnalysisReport, path, highpass: bool = False) -> Path:
    """M(k) (left) and dM/dk (right), one line per layer; the threshold as a dashed line."""
    fig, (ax_m, ax_g) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    layers = list(report.layers.items())
    for color, (name, r) in zip(_colors(len(layers)), layers):
        s = r.stats
        mass, grad = (s.hp_mass, s.hp_mass_grad) if highpass else (s.mass, s.mass_grad)
        if mass is None:
            continue
        label = f"{short_name(name)} ({s.hw[0]}x{s.hw[1]})"
        ax_m.plot(s.kernel_sizes, mass, "-o", ms=2.5, color=color, label=label)
        ax_g.plot(s.kernel_sizes, grad, "-o", ms=2.5, color=color, label=label)
    what = "M_hp(k) (Butterworth high-pass)" if highpass else "M(k)"
    ax_m.axhline(report.settings.threshold, ls="--", color="gray", lw=1)
    ax_m.set(xlabel="window size k", ylabel=what, title=f"score mass {what}", ylim=(0, 1.02))
    ax_g.set(xlabel="window size k", ylabel="dM/dk", title="gradient over k")
    for ax in (ax_m, ax_g):
        ax.grid(alpha=0.3)
    _legend(ax_g, len(layers))
    fig.suptitle(f"{report.model}, latent {report.latent_hw[0]}x{report.latent_hw[1]}, "
                 f"timesteps {list(report.settings.timesteps)}", fontsize=10)
    return _save(fig, path)


def plot_erf(report: AnalysisReport, path) -> Path:
    """Grouped bars per layer: ERF, high-pass ERF and the recommended kernel size."""
    names = list(report.layers)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 4.5), constrained_layout=True)
    x = range(len(names))
    groups = (("ERF M", [r.erf for r in report.layers.values()]),
              ("ERF M_hp", [r.hp_erf for r in report.layers.values()]),
              ("recommended K", [r.kernel_size for r in report.layers.values()]))
    width = 0.27
    for i, (label, values) in enumerate(groups):
        ax.bar([xi + (i - 1) * width for xi in x], [v or 0 for v in values], width, label=label)
    ax.set_xticks(list(x), [short_name(n) for n in names], rotation=60 if len(names) > 6 else 0, ha="right"
                  if len(names) > 6 else "center", fontsize=8)
    ax.set(ylabel="kernel size", title=f"effective receptive field (M >= {report.settings.threshold}) per layer")
    ax.grid(axis="y", alpha=0.3)
    tallest = max((v or 0) for _, values in groups for v in values)
    ax.set_ylim(0, max(tallest, 1) * 1.2)  # headroom so the legend never covers a bar
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    return _save(fig, path)


def plot_maps(report: AnalysisReport, path, max_layers: int = 6) -> Path:
    """Head-, batch- and timestep-mean attention maps around the plotted queries for up to `max_layers` layers
    (evenly spaced), the query marked and its ERF window and recommended kernel drawn."""
    names = list(report.layers)
    if len(names) > max_layers:
        names = [names[round(i * (len(names) - 1) / (max_layers - 1))] for i in range(max_layers)]
    n_queries = max(len(report.layers[n].stats.example_maps) for n in names)
    if n_queries == 0:
        raise ValueError("the report holds no example maps (settings.plot_queries was empty)")
    fig, axes = plt.subplots(len(names), n_queries, figsize=(2.6 * n_queries + 0.6, 2.4 * len(names)),
                             squeeze=False, constrained_layout=True)
    for row, name in zip(axes, names):
        r = report.layers[name]
        for ax, ((qy, qx), attn_map) in zip(row, r.stats.example_maps.items()):
            im = ax.imshow(attn_map.numpy(), cmap="magma", interpolation="nearest")
            ax.plot(qx, qy, "c+", ms=8, mew=1.5)
            for k, color in ((r.erf, "lime"), (r.kernel_size, "cyan")):
                if k is not None:
                    ax.add_patch(Rectangle((qx - k / 2, qy - k / 2), k, k, fill=False, ec=color, lw=1))
            h, w = attn_map.shape
            ax.set_xlim(-0.5, w - 0.5)  # windows are clipped at the border, like the measure
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_title(f"{short_name(name)} q=({qy},{qx})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        for ax in row[len(r.stats.example_maps):]:
            ax.axis("off")
    fig.suptitle("mean attention maps (+ query, green: ERF window, cyan: recommended K)", fontsize=9)
    return _save(fig, path)


def write_plots(report: AnalysisReport, out_dir) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [plot_mass(report, out_dir / "mass.png"), plot_erf(report, out_dir / "erf.png"),
             plot_maps(report, out_dir / "attention_maps.png")]
    if any(r.stats.hp_mass is not None for r in report.layers.values()):
        paths.insert(1, plot_mass(report, out_dir / "mass_highpass.png", highpass=True))
    return paths


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
