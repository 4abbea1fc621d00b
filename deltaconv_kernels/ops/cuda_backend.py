"""The `cuda` backend: the CUDA kernels of the extension `deltaconv_kernels._C` (csrc/cuda), called through
`torch.ops.deltaconv_C.*`, which dispatch on the CUDA key and launch on the current stream. See registry.py
for the contract. The extension contains them only when built with CUDA (setup.py prints whether it did)."""

from __future__ import annotations

import torch

from deltaconv_kernels.ops import cpu_backend, extension

DESCRIPTION = "CUDA C++ kernels (deltaconv_kernels._C)"


def probe() -> str | None:
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}, torch.version.cuda={torch.version.cuda})"
    reason = extension.problem()
    if reason:
        return reason
    if not extension.build_info()["cuda"]:
        return ("deltaconv_kernels._C was built without CUDA kernels (torch had no CUDA or nvcc was not found at "
                "build time); rebuild with `DELTACONV_FORCE_CUDA=1 pip install .`")
    return None


# The ops are the same as the cpu backend's: the dispatcher picks the CUDA implementation for CUDA tensors.
pyramid_forward = cpu_backend.pyramid_forward
pyramid_backward = cpu_backend.pyramid_backward
pooled_bias = cpu_backend.pooled_bias
