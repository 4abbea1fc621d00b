"""`python -m deltaconv_kernels.cli ...` is `deltaconv ...` (how `deltaconv bench --processes` starts its fresh
processes)."""

import sys

from deltaconv_kernels.cli.dispatch import main

sys.exit(main())
