"""Every bad input gets a clear error naming the argument and what was expected."""

import pytest
import torch

from deltaconv_kernels import DeltaConvBlock, pooled_bias, pyramid


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(dim=16, kernel_size=4), ValueError, "kernel_size must be a positive odd int"),
    (dict(dim=16, kernel_size=3.0), TypeError, "kernel_size must be an int"),
    (dict(dim=10, inter_ratio=0.5), ValueError, "must be even"),
    (dict(dim=16, scales=(1.0, 1.5)), ValueError, r"scales must lie in \(0, 1\]"),
    (dict(dim=16, scales=(0.0,)), ValueError, r"scales must lie in \(0, 1\]"),
    (dict(dim=16, scales=()), ValueError, "at least one scale"),
    (dict(dim=16, gate="relu"), ValueError, "gate must be one of"),
    (dict(dim=0), ValueError, "dim must be a positive int"),
    (dict(dim=16, backend="tpu"), ValueError, "backend must be one of"),
])
def test_constructor_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        DeltaConvBlock(**kwargs)


@pytest.fixture
def block():
    return DeltaConvBlock(8, kernel_size=3)


def test_wrong_rank(block):
    with pytest.raises(ValueError, match=r"\[B, H, W, C\] or \[B, N, C\], got rank 2"):
        block(torch.randn(4, 8))


def test_sequence_needs_size(block):
    with pytest.raises(ValueError, match="pass size"):
        block(torch.randn(1, 12, 8))


def test_n_not_h_times_w(block):
    with pytest.raises(ValueError, match=r"H\*W=15, but x has N=12"):
        block(torch.randn(1, 12, 8), size=(5, 3))


def test_size_disagrees_with_4d(block):
    with pytest.raises(ValueError, match="disagrees"):
        block(torch.randn(1, 4, 3, 8), size=(3, 4))


def test_channel_mismatch(block):
    with pytest.raises(ValueError, match="expected dim=8"):
        block(torch.randn(1, 4, 3, 9))


def test_integer_dtype(block):
    with pytest.raises(TypeError, match="floating dtype"):
        block(torch.ones(1, 4, 3, 8, dtype=torch.int64))


def test_dtype_mismatch(block):
    with pytest.raises(TypeError, match="dtype torch.float16 but the block's parameters are torch.float32"):
        block(torch.randn(1, 4, 3, 8, dtype=torch.float16))


def test_device_mismatch(block):
    with pytest.raises(ValueError, match="is on meta but the block's parameters are on cpu"):
        block(torch.randn(1, 4, 3, 8, device="meta"))


@pytest.mark.parametrize("size,err,match", [
    ((3.9, 4.2), TypeError, r"size must be a pair \(H, W\) of ints"),
    ((2, 3, 2), ValueError, r"size must be a pair \(H, W\), got 3 values"),
    ((-3, -4), ValueError, r"size must be a pair \(H, W\) of positive ints, got \(-3, -4\)"),
    (12, TypeError, r"size must be a pair \(H, W\) of ints, got int"),
    ("34", TypeError, r"size must be a pair \(H, W\) of ints, got str"),
])
def test_bad_size(block, size, err, match):
    with pytest.raises(err, match=match):
        block(torch.randn(1, 12, 8), size=size)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(scales=0.5), TypeError, "scales must be a sequence of floats"),
    (dict(scales="1"), TypeError, "scales must be a sequence of floats"),
    (dict(scales=(1.0, "0.5")), TypeError, "scales must hold real numbers"),
    (dict(inter_ratio=float("nan")), ValueError, "inter_ratio must be a finite number > 0, got nan"),
    (dict(inter_ratio=-0.5), ValueError, "inter_ratio must be a finite number > 0"),
    (dict(gate_scale=float("nan")), ValueError, "gate_scale must be a finite number > 0, got nan"),
    (dict(gate_scale=float("inf")), ValueError, "gate_scale must be a finite number > 0, got inf"),
    (dict(gate_scale="2"), TypeError, "gate_scale must be a real number"),
])
def test_constructor_value_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        DeltaConvBlock(16, **kwargs)


def test_functional_gate_scale_checked(gen):
    with pytest.raises(ValueError, match="gate_scale must be a finite number"):
        pyramid(torch.randn(1, 4, 4, 6), [torch.randn(3, 3, 6)], [1.0], gate_scale=float("nan"))


def test_gates_defined_once():
    from deltaconv_kernels import reference, validation

    assert validation.GATES is reference.GATES


def test_functional_pyramid_errors():
    u = torch.randn(1, 5, 5, 6)
    w = torch.randn(3, 3, 6)
    with pytest.raises(ValueError, match=r"weights\[0\] must be \[K, K, Ci=6\]"):
        pyramid(u, [torch.randn(3, 3, 4)], [1.0])
    with pytest.raises(ValueError, match="kernel size must be a positive odd int"):
        pyramid(u, [torch.randn(2, 2, 6)], [1.0])
    with pytest.raises(ValueError, match="one entry per stage"):
        pyramid(u, [w, w], [1.0])
    with pytest.raises(ValueError, match="even number of channels"):
        pyramid(torch.randn(1, 5, 5, 5), [torch.randn(3, 3, 5)], [1.0])
    with pytest.raises(ValueError, match="gate must be one of"):
        pyramid(u, [w], [1.0], gate="tanh")
    with pytest.raises(ValueError, match="channels-last"):
        pyramid(torch.randn(5, 5, 6), [w], [1.0])


def test_functional_pooled_bias_errors():
    x = torch.randn(1, 3, 3, 4)
    with pytest.raises(ValueError, match=r"weight must be \[4, 4\] and bias \[4\]"):
        pooled_bias(x, torch.randn(4, 3), torch.randn(4))
