"""`deltaconv` command line. Each subcommand lives in its own module exposing
`add_arguments(parser)` and `run(args) -> int`; this file only wires them up (imported lazily so that
`deltaconv info` starts fast and a broken subcommand never breaks the others)."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "info": ("deltaconv_kernels.cli", "show the build (torch, CPU instruction sets, CUDA archs) and the backends"),
    "bench": ("deltaconv_kernels.bench", "latency/FLOPs table, JSON and log-log plot of ΔConvBlock vs attention"),
    "distill": ("deltaconv_kernels.distill.cli", "distill a model's self-attention into ΔConvBlocks"),
    "analyze": ("deltaconv_kernels.analysis.cli", "attention-locality analysis and recommended kernel sizes"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:  # for `info`
    pass


def run(args: argparse.Namespace) -> int:  # `info`
    import torch

    from deltaconv_kernels import __version__, available_backends
    from deltaconv_kernels.ops import extension
    print(f"deltaconv_kernels {__version__}, torch {torch.__version__}")
    print(f"  _C: {extension.describe()}")
    for name, info in available_backends().items():
        print(f"  {name:7s} {'yes' if info.available else 'no '}  {info.reason}")
    return 0


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deltaconv", description="ΔConvFusion kernels and tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the module of the command being run
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    return importlib.import_module(SUBCOMMANDS[args.command][0]).run(args)


if __name__ == "__main__":
    sys.exit(main())
