"""The `cpu` backend: the C++ extension `deltaconv_kernels._C` (csrc/cpu). Owned by the C++ work."""

from __future__ import annotations

DESCRIPTION = "C++ CPU kernels (deltaconv_kernels._C)"


def probe() -> str | None:
    try:
        from deltaconv_kernels import _C  # noqa: F401
    except ImportError as e:
        return f"the C++ extension deltaconv_kernels._C is not built ({e}); reinstall without DELTACONV_SKIP_EXT"
    return "the C++ CPU kernels are not implemented yet"
