"""The dtype names users type and records store: one table for every command and benchmark file.

`fp32`, `fp16` and `bf16` are the names the benchmark files and tables use; torch's names (`float32`, `float16`,
`bfloat16`) are accepted wherever a dtype is read (`deltaconv_kernels.cli.args.parse_dtype`)."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # torch's spelling -> ours


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `bf16`."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"dtype must be one of {list(DTYPES.values())}, got {dtype!r}")
