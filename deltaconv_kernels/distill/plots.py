"""Loss curves of a distillation run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def plot_losses(history: list[dict], path: str | Path, title: str = "ΔConvBlock distillation") -> Path:
    """Log-scale plot of every non-zero loss term against the step; written atomically as a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deltaconv_kernels.fileio import atomic_write

    if not history:
        raise ValueError("no history to plot")
    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("loss", "output", "feature", "noise"):
        values = [r.get(key, 0.0) for r in history]
        if any(v > 0 for v in values):
            ax.plot(steps, values, label="total" if key == "loss" else key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
