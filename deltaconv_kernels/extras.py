"""The optional dependencies, one table: which pip extra each feature needs.

Read by setup.py (without importing torch) for `extras_require`, by the CLI to refuse a subcommand whose extra is
not installed (`deltaconv <cmd>: error: needs X: pip install "deltaconv_kernels[extra]"`), and by the test set-up.
Standard library only: this module must import where nothing optional is installed.
"""

from __future__ import annotations

import importlib.util

# extra -> pip requirements. numpy and torch are real dependencies (install_requires), not extras.
EXTRAS: dict[str, tuple[str, ...]] = {
    "diffusers": ("diffusers>=0.30", "transformers", "accelerate", "safetensors", "huggingface_hub"),
    "bench": ("tqdm", "matplotlib", "pytest", "pytest-benchmark"),
    "distill": ("diffusers>=0.30", "transformers", "accelerate", "safetensors", "huggingface_hub", "tqdm",
                "matplotlib"),
    "analysis": ("diffusers>=0.30", "transformers", "accelerate", "safetensors", "huggingface_hub", "tqdm",
                 "matplotlib"),
    "test": ("pytest", "pytest-benchmark", "hypothesis", "scikit-learn", "scikit-image"),
}
EXTRAS["all"] = tuple(dict.fromkeys(r for reqs in EXTRAS.values() for r in reqs))

# pip name -> import name, where they differ.
IMPORT_NAMES = {"scikit-learn": "sklearn", "scikit-image": "skimage", "pytest-benchmark": "pytest_benchmark",
                "huggingface_hub": "huggingface_hub"}


def pip_name(requirement: str) -> str:
    """`diffusers>=0.30` -> `diffusers`."""
    for sep in "<>=!~[; ":
        requirement = requirement.split(sep)[0]
    return requirement


def import_name(requirement: str) -> str:
    name = pip_name(requirement)
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def missing(extra: str) -> list[str]:
    """The pip names of the extra's packages that are not importable here (found without importing them)."""
    if extra not in EXTRAS:
        raise ValueError(f"extra must be one of {sorted(EXTRAS)}, got {extra!r}")
    return [pip_name(r) for r in EXTRAS[extra] if importlib.util.find_spec(import_name(r)) is None]
