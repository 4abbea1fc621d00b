"""One definition of each named image size (resolutions.py), shared by the layer grid and the FLOPs tables: "2K"
and "4K" mean one size each, the paper's other column sizes have their own names, and the grid between two
sizes includes spelled ends."""

from __future__ import annotations

from deltaconv_kernels import flops
from deltaconv_kernels.resolutions import GRID, NAMED, grid_between, resolution


def test_names_are_unique_and_the_grid_is_ordered():
    assert len({r.label.lower() for r in NAMED}) == len(NAMED)
    assert len({(r.height, r.width) for r in NAMED}) == len(NAMED)
    assert [r.label for r in GRID] == ["512", "1K", "2K", "4K", "8K", "16K"]
    assert [r.pixels for r in GRID] == sorted(r.pixels for r in GRID)
    assert (resolution("2K").height, resolution("2K").width) == (2048, 2048)
    assert (resolution("4K").height, resolution("4K").width) == (3840, 2160)


def test_flops_table_uses_the_same_names():
    for model, names in flops.PAPER_SIZES.items():
        assert flops.PAPER_RESOLUTIONS[model] == tuple((resolution(n).height, resolution(n).width) for n in names)
    assert flops.PAPER_SIZES["sd15"][2] == "QHD" and flops.PAPER_SIZES["pixart"][3] == "4K-DCI"
    text = flops.format_table1()
    assert "QHD (2560x1440)" in text and "4K-DCI (4096x2160)" in text and "2K (2048x2048)" in text


def test_grid_between_adds_spelled_ends():
    assert [r.label for r in grid_between(resolution("512"), resolution("2K"))] == ["512", "1K", "2K"]
    assert [r.label for r in grid_between(resolution("300"), resolution("1280x720"))] == ["300", "512", "1280x720"]
    assert [r.label for r in grid_between(resolution("1K"), resolution("1024"))] == ["1K"]
