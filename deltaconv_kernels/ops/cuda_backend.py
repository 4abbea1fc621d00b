"""The `cuda` backend: CUDA kernels of the C++ extension (csrc/cuda). Owned by the C++ work."""

from __future__ import annotations

DESCRIPTION = "CUDA C++ kernels (deltaconv_kernels._C)"


def probe() -> str | None:
    import torch
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}, torch.version.cuda={torch.version.cuda})"
    return "the CUDA kernels are not implemented yet"
