"""The dependencies, one table: what the package always needs and which pip extra each feature needs.

Read by setup.py (run as a file, so building imports neither torch nor the package) for `install_requires` and
`extras_require`, by python/dev.sh for what to install, by the CLI to refuse a subcommand whose extra is not
installed (`deltaconv <cmd>: error: needs X: pip install "deltaconv_kernels[extra]"`), and by the test set-up.
tests/build/test_extras.py checks every third-party import of the package against it.
Standard library only: this module must import where nothing optional is installed.
"""

from __future__ import annotations

import importlib.util
import platform

# Always installed besides torch (whose floor is build_helpers.OLDEST_TORCH: setup.py adds it).
REQUIRES: tuple[str, ...] = ("numpy",)

_DIFFUSERS = ("diffusers>=0.30", "transformers", "accelerate", "safetensors", "huggingface_hub")

# extra -> pip requirements (a `; platform_system == "..."` marker limits one to a platform).
EXTRAS: dict[str, tuple[str, ...]] = {
    "diffusers": _DIFFUSERS,
    "bench": ("tqdm", "matplotlib", "pytest", "pytest-benchmark"),
    # pillow reads the image folders of `--images` (diffusers and matplotlib require it too).
    "distill": (*_DIFFUSERS, "tqdm", "matplotlib", "pillow"),
    "analysis": (*_DIFFUSERS, "tqdm", "matplotlib"),
    # The test suite needs every feature's extra too ([all]); triton runs the kernels' tests in its interpreter
    # and has Linux wheels only.
    "test": ("pytest", "pytest-benchmark", "hypothesis", "scikit-learn", "scikit-image",
             'triton; platform_system == "Linux"'),
}
EXTRAS["all"] = tuple(dict.fromkeys(r for reqs in EXTRAS.values() for r in reqs))

# The modules of a feature -> the extras whose packages they may import (a name covers its sub-modules; the longest
# matching name counts). The rest of the package imports only torch, numpy and the standard library, plus
# OPTIONAL_BACKENDS where installed. The end-to-end benchmark builds diffusers models.
FEATURE_EXTRAS: dict[str, tuple[str, ...]] = {
    "deltaconv_kernels.integrations": ("diffusers",),
    "deltaconv_kernels.analysis": ("analysis",),
    "deltaconv_kernels.distill": ("distill",),
    "deltaconv_kernels.bench": ("bench",),
    "deltaconv_kernels.bench.e2e": ("bench", "diffusers"),
    "deltaconv_kernels.bench_report": ("bench",),
    "deltaconv_kernels.bench_e2e": ("bench", "diffusers"),
}
# Used when importable, never required: the backend or implementation that needs one reports itself unavailable.
OPTIONAL_BACKENDS = ("triton", "natten")

# pip name -> import name, where it is not the pip name with '-' -> '_'.
IMPORT_NAMES = {"scikit-learn": "sklearn", "scikit-image": "skimage", "pillow": "PIL"}


def pip_name(requirement: str) -> str:
    """`diffusers>=0.30` -> `diffusers`."""
    for sep in "<>=!~[; ":
        requirement = requirement.split(sep)[0]
    return requirement


def import_name(requirement: str) -> str:
    name = pip_name(requirement)
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def applies_here(requirement: str) -> bool:
    """Whether the requirement's marker (only `platform_system == "X"` is used in the table) holds here."""
    if ";" not in requirement:
        return True
    key, op, value = requirement.split(";", 1)[1].split()
    if key != "platform_system" or op != "==":
        raise ValueError(f"unsupported marker in {requirement!r}: only platform_system == \"...\" is evaluated")
    return platform.system() == value.strip("\"'")


def extras_for(module: str) -> tuple[str, ...]:
    """The extras a module of the package may import from (empty: torch, numpy and the standard library only)."""
    matches = [prefix for prefix in FEATURE_EXTRAS if module == prefix or module.startswith(prefix + ".")]
    return FEATURE_EXTRAS[max(matches, key=len)] if matches else ()


def missing(extra: str) -> list[str]:
    """The pip names of the extra's packages that are not importable here (found without importing them)."""
    if extra not in EXTRAS:
        raise ValueError(f"extra must be one of {sorted(EXTRAS)}, got {extra!r}")
    return [pip_name(r) for r in EXTRAS[extra]
            if applies_here(r) and importlib.util.find_spec(import_name(r)) is None]
