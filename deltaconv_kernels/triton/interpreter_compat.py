"""Triton's interpreter under numpy >= 2.4 (imported by `launch`; does nothing unless TRITON_INTERPRET=1).

The interpreter holds a kernel's scalar arguments as 1-element numpy arrays, and a `range()` over a run-time bound
turns one into a Python int with `int(array)`, which numpy 2.4 made an error for arrays with ndim > 0 (triton 3.6's
interpreter.py; `TypeError: only 0-dimensional arrays can be converted to Python scalars`). This wraps the
interpreter's own tensor patching so that the conversion goes through `.item()` (the same value, any numpy). The
compiled kernels are untouched: the interpreter is the only code path this changes.
"""

from __future__ import annotations

import functools

from deltaconv_kernels.runtime_env import triton_interpreting


def _scalar_index(tensor) -> int:
    data = tensor.handle.data
    if getattr(data, "size", 1) != 1:
        raise TypeError(f"a Triton block of {data.size} elements has no single integer value")
    return int(data.reshape(()).item()) if hasattr(data, "reshape") else int(data)


def install() -> bool:
    """Patch the interpreter once; True when it is (or already was) patched."""
    if not triton_interpreting():
        return False
    from triton.runtime import interpreter

    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "_deltaconv_scalar_index", False):
        return patch is not None

    @functools.wraps(patch)
    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", _scalar_index)

    patched._deltaconv_scalar_index = True
    interpreter._patch_lang_tensor = patched
    return True
