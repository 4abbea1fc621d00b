"""`deltaconv info`: the build (torch, the C++/CUDA extension) and every backend with the reason it is or is not
available."""

from __future__ import annotations

import argparse

import torch

from deltaconv_kernels import __version__, available_backends
from deltaconv_kernels.ops import extension


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print(f"deltaconv_kernels {__version__}, torch {torch.__version__}")
    print(f"  _C: {extension.describe()}")
    for name, info in available_backends().items():
        print(f"  {name:7s} {'yes' if info.available else 'no '}  {info.reason}")
    return 0
