"""The `torch` backend: the reference itself. Always available.

It is not routed through the `torch.library` ops: their implementations run below the autograd key, and
the reference needs autograd for its backward. Called directly, autograd and `torch.compile` see through it.
"""

from __future__ import annotations

DESCRIPTION = "pure-PyTorch reference"


def probe() -> str | None:
    return None
