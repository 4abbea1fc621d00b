"""The source tree the tests live in: its root, and python/build_helpers.py (setup.py's helper, not installed)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_spec = importlib.util.spec_from_file_location("build_helpers", ROOT / "python" / "build_helpers.py")
build_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_helpers)
