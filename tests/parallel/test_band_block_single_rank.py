"""The band-parallel block in this process on a one-rank gloo group (docs/DESIGN.md §9): the whole map as one band
equals the one-process block, and a call that autograd would record is refused (inference only: no gradient
flows back through exchanged rows)."""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from deltaconv_kernels import DeltaConvBlock
from deltaconv_kernels.parallel import BandComm, band_block_forward, split_rows
from deltaconv_kernels.testing import assert_close


@pytest.fixture(scope="module")
def comm():
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(os.path.join(tmp, "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=timedelta(seconds=30))
        try:
            yield BandComm(timeout_s=30.0)
        finally:
            dist.destroy_process_group()


def test_one_band_equals_the_block(comm):
    torch.manual_seed(0)
    block = DeltaConvBlock(16, 5)
    x = torch.randn(2, 9, 7, 16)
    with torch.no_grad():
        assert_close(band_block_forward(block, x, comm, split_rows(9, 1)), block(x))


def test_autograd_is_refused(comm):
    block = DeltaConvBlock(16, 5)
    with pytest.raises(RuntimeError, match="inference only"):
        band_block_forward(block, torch.randn(1, 5, 4, 16), comm, split_rows(5, 1))
