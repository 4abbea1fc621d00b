"""`import deltaconv_kernels` does not import the band-parallel package (torch.distributed, diffusers); the names
`deltaconv_kernels.parallel` and `deltaconv_kernels.patch_parallel` load it on first use."""

from __future__ import annotations

import subprocess
import sys


def test_package_import_leaves_parallel_unloaded_until_used():
    code = ("import sys, deltaconv_kernels as dk\n"
            "assert 'deltaconv_kernels.parallel' not in sys.modules\n"
            "assert dk.parallel.split_rows(5, 2) == ((0, 2), (2, 5))\n"
            "assert 'deltaconv_kernels.parallel.denoisers' not in sys.modules\n"
            "assert dk.patch_parallel is dk.parallel.denoisers.patch_parallel\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
