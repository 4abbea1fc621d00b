"""Build of deltaconv_kernels and its C++/CUDA extension `_C` (decisions live in python/build_helpers.py).

    pip install .                            # builds _C against the torch installed where pip installs (see below)
    pip install --no-build-isolation .       # the same, inside the current environment (needs setuptools>=70.1)
    python setup.py build_ext --inplace      # in-tree development build (deltaconv_kernels/_C*.so)
    DELTACONV_SKIP_EXT=1 pip install .       # pure Python, no extension

Plain `pip install .` builds in an isolated environment without torch; build_helpers.import_torch finds the torch
of the environment being installed into and builds against it, never installing a second one (its module doc says
how). The version is the `__version__` of deltaconv_kernels/__init__.py, the one place that holds it; the
dependencies and extras are deltaconv_kernels/extras.py's table, run as a file (it is standard-library only), so
the metadata needs neither torch nor the package importable.
"""

import os
import runpy
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "python"))
import build_helpers  # noqa: E402  (a non-installed helper next to this file)

ext_modules, report = build_helpers.extensions(ROOT)
print(report, flush=True)
cmdclass = {"build_ext": build_helpers.build_ext_class()} if ext_modules else {}
extras = runpy.run_path(os.path.join(ROOT, "deltaconv_kernels", "extras.py"))

setup(
    name="deltaconv_kernels",
    version=build_helpers.version(ROOT),
    description="ΔConvFusion's Pyramid Convolution Block with fused Triton, CUDA and C++ CPU kernels",
    # What is tested: CI runs Python 3.11 (Debian's and another build), the GPU image 3.12; python/dev.sh checks
    # the same floor. `python -P` (tests the installed package, not the source tree) needs 3.11.
    python_requires=">=3.11",
    packages=find_packages(include=["deltaconv_kernels*"]),
    # A range, not a pin: an existing torch (CPU or CUDA build) satisfies it, so pip installs no second torch.
    install_requires=[f"torch>={build_helpers.OLDEST_TORCH}", *extras["REQUIRES"]],
    extras_require={name: list(reqs) for name, reqs in extras["EXTRAS"].items()},
    entry_points={"console_scripts": ["deltaconv = deltaconv_kernels.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
