"""Build of deltaconv_kernels and its C++/CUDA extension `_C` (decisions live in python/build_helpers.py).

    pip install --no-build-isolation .       # against the torch already installed
    python setup.py build_ext --inplace      # in-tree development build (deltaconv_kernels/_C*.so)
    DELTACONV_SKIP_EXT=1 pip install .       # pure Python, no extension
"""

import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "python"))
import build_helpers  # noqa: E402  (a non-installed helper next to this file)

ext_modules, report = build_helpers.extensions(ROOT)
print(report, flush=True)
cmdclass = {"build_ext": build_helpers.build_ext_class()} if ext_modules else {}

setup(
    name="deltaconv_kernels",
    version="0.1.0",
    description="ΔConvFusion's Pyramid Convolution Block with fused Triton, CUDA and C++ CPU kernels",
    python_requires=">=3.9",
    packages=find_packages(include=["deltaconv_kernels*"]),
    # A range, not a pin: an existing torch (CPU or CUDA build) satisfies it, so pip installs no second torch.
    install_requires=["torch>=2.4"],
    extras_require={
        "test": ["pytest", "hypothesis", "pytest-benchmark"],
        "diffusers": ["diffusers>=0.30", "accelerate", "safetensors"],
    },
    entry_points={"console_scripts": ["deltaconv = deltaconv_kernels.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
