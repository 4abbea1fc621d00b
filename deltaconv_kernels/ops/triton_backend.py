"""The `triton` backend: fused Triton kernels (deltaconv_kernels/triton), on CUDA tensors, or on CPU tensors
under TRITON_INTERPRET=1 (the Triton interpreter; that is how CI tests the kernels without a GPU).

The pooled-bias branch computes the mean over H, W in Triton and the small C x C product in torch (fp32).
"""

from __future__ import annotations

DESCRIPTION = "fused Triton kernels"


def probe() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton is not installed ({e})"
    import torch

    from deltaconv_kernels.runtime_env import triton_interpreting

    if not torch.cuda.is_available() and not triton_interpreting():
        return ("no CUDA device; set TRITON_INTERPRET=1 (before triton is imported) to run the kernels in the "
                "Triton interpreter on CPU tensors")
    import deltaconv_kernels.triton  # noqa: F401  (fails here, reported by the registry, if the kernels do not load)

    return None


def pyramid_forward(u, weights, scales, sigmoid_gate, gate_scale):
    from deltaconv_kernels.triton import pyramid_forward as forward

    return forward(u, weights, scales, sigmoid_gate, gate_scale)


def pyramid_backward(grad_out, u, weights, scales, sigmoid_gate, gate_scale):
    from deltaconv_kernels.triton import pyramid_backward as backward

    return backward(grad_out, u, weights, scales, sigmoid_gate, gate_scale)


def pooled_bias(x, weight, bias):
    from deltaconv_kernels.triton import pooled_bias as bias_fn

    return bias_fn(x, weight, bias)
