"""The `triton` backend: fused Triton kernels (deltaconv_kernels/triton). Owned by the Triton work."""

from __future__ import annotations

DESCRIPTION = "fused Triton kernels"


def probe() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton is not installed ({e})"
    return "the Triton kernels are not implemented yet"
