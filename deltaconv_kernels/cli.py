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


# ---- argument checks shared by the subcommands (each raises ValueError naming the option; main prints it)

def check_device(name: str, option: str = "--device"):
    """`cpu` or `cuda[:i]` on a machine that has it, as a torch.device."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{option} must be cpu or cuda, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{option} must be cpu or cuda, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option} {name}: no CUDA GPU is available here (torch.cuda.is_available() is False)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{option} {name}: there are only {torch.cuda.device_count()} CUDA devices")
    return device


def check_output_dir(path, option: str):
    """A folder that exists or can be created: refused up front when it (or a parent) is a file."""
    from pathlib import Path

    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise ValueError(f"{option} {path}: {p} is a file, not a folder")
    return path


def check_at_least(value, minimum, option: str):
    if value is not None and not value >= minimum:
        raise ValueError(f"{option} must be >= {minimum}, got {value}")
    return value


def check_positive(value, option: str):
    if value is not None and not value > 0:
        raise ValueError(f"{option} must be > 0, got {value}")
    return value


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
    """Run a subcommand. A bad argument or input is `deltaconv <command>: error: ...` on stderr and exit code 2
    (as argparse does for its own errors), never a traceback."""
    from deltaconv_kernels.ops.registry import BackendUnavailableError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return importlib.import_module(SUBCOMMANDS[args.command][0]).run(args)
    except (ValueError, TypeError, OSError, BackendUnavailableError) as exc:
        print(f"deltaconv {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
