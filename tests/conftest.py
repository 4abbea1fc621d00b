import os
import sys
from pathlib import Path

import pytest
import torch

from deltaconv_kernels import extras

# The shared test helpers (tiny_models, independent, source_tree) are imported by name from every test folder.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

# Keep CPU tests deterministic and bounded on a 2-core machine.
torch.manual_seed(0)
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def gen():
    """A seeded generator so every test draws its own fresh random inputs reproducibly."""
    return torch.Generator().manual_seed(1234)


# Optional third-party packages (import name -> pip name), from the extras table: a test that needs one that is not
# installed here (the GPU image has torch, triton and numpy only) is reported as skipped with the package named, not
# as failed. Only these, and only when find_spec says the package is absent: a missing module of our own still fails.
OPTIONAL_PACKAGES = {extras.import_name(r): extras.pip_name(r) for r in extras.EXTRAS["all"]}


def _absent_optional(exc) -> str | None:
    import importlib.util

    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    root = exc.name.split(".")[0]
    if root in OPTIONAL_PACKAGES and importlib.util.find_spec(root) is None:
        return OPTIONAL_PACKAGES[root]
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and report.failed:
        package = _absent_optional(call.excinfo.value)
        if package:
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0,
                               f"Skipped: needs {package}, which is not installed here")
