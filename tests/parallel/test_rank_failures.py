"""Failure behaviour of band parallelism (docs/DESIGN.md §9) on gloo processes: a rank that raises, exits or
hangs makes the others raise RankFailureError naming the rank they lost, within a bounded time (never a hang);
ranks given different inputs (size, seed, dtype) all refuse with InputMismatchError before any band work."""

from __future__ import annotations

import time

import pytest

from deltaconv_kernels.parallel.checks import failure_drill, mismatch_drill
from deltaconv_kernels.parallel.launch import run_local

TIMEOUT_S = 4.0  # the communication timeout of the drill
BOUND_S = 45.0   # the whole run, slack included for a loaded machine (a hang would run to run_local's 90 s)


@pytest.mark.parametrize("world, victim, how, named_by", [
    (2, 1, "raise", {0: 1}),
    (3, 2, "exit", {1: 2, 0: None}),   # rank 0 talks only to rank 1, which fails on losing rank 2
    (3, 1, "hang", {0: 1, 2: 1}),
])
def test_lost_rank_makes_the_others_fail_in_bounded_time(world, victim, how, named_by):
    start = time.monotonic()
    outcomes = run_local(failure_drill, world, victim, how, TIMEOUT_S, timeout_s=90)
    assert time.monotonic() - start < BOUND_S
    for rank, lost in named_by.items():
        o = outcomes[rank]
        assert not o.ok and "RankFailureError" in o.error, (rank, o)
        if lost is not None:
            assert f"with rank {lost} failed or timed out" in o.error, (rank, o.error)
        assert "killed after" not in o.error


def test_mismatched_inputs_are_refused_before_any_work():
    fields = ["size", "seed", "dtype"]
    outcomes = run_local(mismatch_drill, 2, 1, fields, timeout_s=120, preload=("diffusers",))
    for o in outcomes:
        assert o.ok, o.error
        for field, result in zip(fields, o.value):
            assert result["error"] is not None and "were given different inputs" in result["error"], (field, result)
            assert set(result["sent"]) == {"check"}, (field, result)  # nothing but the input check moved
    size_error = outcomes[0].value[0]["error"]
    assert "rank 1 got" in size_error and "(1, 4, 10, 10)" in size_error
    assert "torch.float64" in outcomes[0].value[2]["error"]
