"""The `deltaconv` dispatcher. Each subcommand lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`; only the chosen one is imported, after its optional dependencies were found (so a missing
package is one line naming the extra to install, and `deltaconv info` starts fast)."""

from __future__ import annotations

import argparse
import importlib
import sys

from deltaconv_kernels.extras import missing
from deltaconv_kernels.ops.registry import BackendUnavailableError

# name -> (module, help, the extras it needs)
SUBCOMMANDS = {
    "info": ("deltaconv_kernels.cli.info", "show the build (torch, CPU instruction sets, CUDA archs) and the backends",
             ()),
    "bench": ("deltaconv_kernels.bench.cli", "latency/FLOPs table, JSON and log-log plot of ΔConvBlock vs attention "
              "(`bench e2e`: whole denoiser steps)", ("bench",)),
    "distill": ("deltaconv_kernels.distill.cli", "distill a model's self-attention into ΔConvBlocks", ("distill",)),
    "analyze": ("deltaconv_kernels.analysis.cli", "attention-locality analysis and recommended kernel sizes",
                ("analysis",)),
}
# Words after the command that need one more extra: `bench e2e` (and its old spelling) builds diffusers models.
EXTRA_EXTRAS = {("bench", "e2e"): ("diffusers",), ("bench", "--end-to-end"): ("diffusers",)}


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def needed_extras(argv: list[str]) -> list[str]:
    """The extras the command line `argv` needs, in the order to name them."""
    command = _command(argv)
    if command not in SUBCOMMANDS:
        return []
    rest = argv[argv.index(command) + 1:]
    extras = list(SUBCOMMANDS[command][2])
    for (cmd, word), more in EXTRA_EXTRAS.items():
        if cmd == command and word in rest:
            extras += more
    return list(dict.fromkeys(extras))


def missing_message(argv: list[str]) -> str | None:
    """`deltaconv <cmd>: error: needs X, Y: pip install "deltaconv_kernels[extra]"`, or None when nothing is
    missing."""
    extras = needed_extras(argv)
    absent = {extra: missing(extra) for extra in extras}
    packages = list(dict.fromkeys(p for ps in absent.values() for p in ps))
    if not packages:
        return None
    wanted = ",".join(e for e in extras if absent[e])
    return (f"deltaconv {_command(argv)}: error: needs {', '.join(packages)}: "
            f"pip install \"deltaconv_kernels[{wanted}]\"")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deltaconv", description="ΔConvFusion kernels and tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _command(argv)
    for name, (module, help_text, _) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the module of the command being run
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. A missing optional package, a bad argument or input is `deltaconv <command>: error: ...`
    on stderr and exit code 2 (as argparse does for its own errors), never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    message = missing_message(argv)
    if message is not None:
        print(message, file=sys.stderr)
        return 2
    args = build_parser(argv).parse_args(argv)
    try:
        return importlib.import_module(SUBCOMMANDS[args.command][0]).run(args)
    except (ValueError, TypeError, OSError, BackendUnavailableError) as exc:
        print(f"deltaconv {args.command}: error: {exc}", file=sys.stderr)
        return 2
