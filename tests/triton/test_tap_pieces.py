"""launch.tap_pieces: the weight-gradient kernel's register tiles of taps (powers of two) cover every tap of a
K x K kernel with at most 10% padded taps (docs/DESIGN.md §2)."""

import pytest

pytest.importorskip("triton")

from deltaconv_kernels.triton import launch  # noqa: E402


@pytest.mark.parametrize("k", range(1, 32, 2))
def test_pieces_cover_the_taps_with_little_padding(k):
    pieces = launch.tap_pieces(k * k)
    used = [p for p in pieces if p]
    assert all(p & (p - 1) == 0 for p in used)
    assert sum(used) >= k * k
    assert (sum(used) - k * k) / sum(used) <= 0.10, pieces


def test_k13_has_no_padded_tap():
    assert launch.tap_pieces(169) == (128, 32, 8, 1)
