"""`deltaconv` command line: `dispatch` (the entry point, `deltaconv = deltaconv_kernels.cli:main`), `info` (the
`deltaconv info` command) and `args` (the checks and parsers the subcommands share). The subcommands themselves
live with their code: bench/cli.py, distill/cli.py, analysis/cli.py; they import `cli.args`, never the
dispatcher's names."""

# the checks' old import path (deltaconv_kernels.cli.check_*), kept for one release
from deltaconv_kernels.cli.args import check_at_least, check_device, check_output_dir, check_positive
from deltaconv_kernels.cli.dispatch import build_parser, main

__all__ = ["build_parser", "check_at_least", "check_device", "check_output_dir", "check_positive", "main"]
