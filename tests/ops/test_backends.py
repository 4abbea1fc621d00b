"""Backend registry: every backend is listed with a reason, forcing is honoured or fails loudly."""

import pytest
import torch

from deltaconv_kernels import BackendUnavailableError, DeltaConvBlock, available_backends
from deltaconv_kernels.ops import registry


def test_every_backend_listed_with_reason():
    info = available_backends()
    assert set(info) == {"triton", "cuda", "cpu", "torch"}
    assert info["torch"].available
    for name, i in info.items():
        assert isinstance(i.reason, str) and i.reason, name
        print(f"{name}: {i!r}")


def test_cuda_backend_reason_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the no-GPU reason does not apply")
    info = available_backends()["cuda"]
    assert not info.available and "CUDA" in info.reason


def test_automatic_choice_on_cpu_prefers_cpu_kernels():
    expected = "cpu" if available_backends()["cpu"].available else "torch"
    assert registry.resolve(None, "cpu") == expected


def test_forcing_unavailable_backend_lists_reasons():
    missing = [n for n, i in available_backends().items() if not i.available]
    if not missing:
        pytest.skip("every backend is available on this machine: nothing to force")
    with pytest.raises(BackendUnavailableError, match=f"backend '{missing[0]}' was forced but is unavailable") as e:
        DeltaConvBlock(8, kernel_size=3, backend=missing[0])(torch.randn(1, 4, 4, 8))
    for name in available_backends():
        assert name in str(e.value)


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "torch")
    assert registry.resolve(None, "cpu") == "torch"
    monkeypatch.setenv(registry.ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match="backend must be one of"):
        registry.resolve(None, "cpu")


def test_explicit_argument_beats_env_var(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "nonsense")
    assert registry.resolve("torch", "cpu") == "torch"


def test_backend_on_wrong_device_type():
    if not available_backends()["cpu"].available:
        pytest.skip(f"cpu backend unavailable: {available_backends()['cpu'].reason}")
    with pytest.raises(BackendUnavailableError, match="cannot run on cuda tensors"):
        registry.resolve("cpu", "cuda")


def test_automatic_choice_for_fp64_is_the_reference():
    assert registry.resolve(None, "cpu", torch.float64) == "torch"
    assert registry.resolve(None, "cuda", torch.float64) == "torch"
