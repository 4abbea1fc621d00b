import os

import pytest
import torch

# Keep CPU tests deterministic and bounded on a 2-core machine.
torch.manual_seed(0)
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def gen():
    """A seeded generator so every test draws its own fresh random inputs reproducibly."""
    return torch.Generator().manual_seed(1234)
