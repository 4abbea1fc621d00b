"""Every module of the feature packages imports when it is the first of them to be imported. The import graph
(python/import_graph.py) has no cycle between modules, but importing a submodule first runs its package's
__init__, which may import back into a module that is still half-loaded: this catches that at run time."""

import subprocess
import sys

import pytest
from source_tree import ROOT

FEATURES = ("analysis", "bench", "cli", "distill", "integrations", "parallel")

SCRIPT = f"""
import importlib, pkgutil, sys
import deltaconv_kernels  # the core (ops register torch.library ops once) stays loaded
features = tuple("deltaconv_kernels." + f for f in {FEATURES!r})
names = []
for f in features:
    pkg = importlib.import_module(f)
    names += [f] + [m.name for m in pkgutil.walk_packages(pkg.__path__, f + ".") if not m.name.endswith("__main__")]
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m.startswith(features)]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ImportError as e:
        failed.append(f"{{name}}: {{e}}")
print(len(names), "modules")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_each_feature_module_imports_first():
    pytest.importorskip("diffusers", reason="the integration modules need diffusers")
    pytest.importorskip("safetensors", reason="the integration modules need safetensors")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, cwd=ROOT.parent)
    assert done.returncode == 0, done.stdout + done.stderr
