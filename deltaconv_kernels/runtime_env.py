"""Environment switches read in one place (a leaf module: it imports nothing from the package, nor triton)."""

import os


def triton_interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run in Triton's interpreter on CPU tensors (it must be set before triton
    is imported, so reading it once per call is exact)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
