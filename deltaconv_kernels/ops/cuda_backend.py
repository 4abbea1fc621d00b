"""The `cuda` backend: the CUDA kernels of the extension `deltaconv_kernels._C` (csrc/cuda), called through
`torch.ops.deltaconv_C.*`, which dispatch on the CUDA key and launch on the current stream. See registry.py
for the contract. The extension contains them only when built with CUDA (setup.py prints whether it did)."""

from __future__ import annotations

import torch

from deltaconv_kernels.ops import cpu_backend

DESCRIPTION = "CUDA C++ kernels (deltaconv_kernels._C)"


def probe() -> str | None:
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}, torch.version.cuda={torch.version.cuda})"
    try:
        info = cpu_backend.build_info()
    except ImportError as e:
        return (f"the C++ extension deltaconv_kernels._C is not built ({e}); build it with "
                "`pip install --no-build-isolation .` on a machine with nvcc")
    except (AttributeError, RuntimeError) as e:
        return f"deltaconv_kernels._C imports but lacks its ops ({type(e).__name__}: {e}); rebuild it"
    if info.get("cuda") != "1":
        return ("deltaconv_kernels._C was built without CUDA kernels (torch had no CUDA or nvcc was not found at "
                "build time); rebuild with `DELTACONV_FORCE_CUDA=1 pip install --no-build-isolation .`")
    return None


# The ops are the same as the cpu backend's: the dispatcher picks the CUDA implementation for CUDA tensors.
pyramid_forward = cpu_backend.pyramid_forward
pyramid_backward = cpu_backend.pyramid_backward
pooled_bias = cpu_backend.pooled_bias
