"""Run a function on `world` local CPU processes joined by a gloo process group (tests, the CPU benchmark and the
`python -m deltaconv_kernels.parallel` demo). Bounded: processes that have not reported by the deadline are
killed and reported as such; every process uses one thread unless told otherwise."""

from __future__ import annotations

import os
import queue
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.multiprocessing as mp


@dataclass
class Outcome:
    """What one rank did: `value` when ok, else `error` (the formatted exception, or how the process ended)."""
    rank: int
    ok: bool
    value: object = None
    error: str = ""


def _child(rank: int, world: int, store_path: str, timeout_s: float, threads: int, fn, args, results) -> None:
    import torch.distributed as dist
    torch.set_num_threads(threads)
    try:
        store = dist.FileStore(store_path, world)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
        results.put((rank, True, fn(rank, world, *args)))
    except BaseException as e:  # reported to the parent, which decides
        results.put((rank, False, "".join(traceback.format_exception(e))))
        return  # a group whose peer failed may not tear down cleanly: leave it to process exit
    dist.destroy_process_group()


def run_local(fn, world: int, *args, timeout_s: float = 60.0, group_timeout_s: float = 30.0,
              threads: int = 1, preload: tuple[str, ...] = ()) -> list[Outcome]:
    """`fn(rank, world, *args)` on `world` new processes (fn and args must pickle); one Outcome per rank.
    A process still running after `timeout_s` is killed and reported as not ok. The processes fork from a
    fork server (never from this process, whose OpenMP threads a fork would break) that imports torch, this
    package and `preload` once per session, so each run pays no import time."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", "deltaconv_kernels.parallel.checks", *preload])
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="deltaconv_gloo_") as tmp:
        store_path = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_child, args=(r, world, store_path, group_timeout_s, threads, fn, args, results),
                             daemon=True) for r in range(world)]
        for p in procs:
            p.start()
        outcomes: dict[int, Outcome] = {}
        deadline = time.monotonic() + timeout_s
        while len(outcomes) < world and time.monotonic() < deadline:
            try:
                rank, ok, value = results.get(timeout=0.2)
                outcomes[rank] = Outcome(rank, ok, value if ok else None, "" if ok else value)
            except queue.Empty:
                # A process that ended without reporting (os._exit, a signal) will never report.
                if all(not p.is_alive() for p in procs):
                    _drain(results, outcomes)
                    break
        for r, p in enumerate(procs):
            p.join(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
            if p.is_alive():
                p.kill()
                p.join()
                outcomes.setdefault(r, Outcome(r, False, error=f"killed after the {timeout_s:g} s deadline"))
            outcomes.setdefault(r, Outcome(r, False, error=f"exited with code {p.exitcode} without reporting"))
    return [outcomes[r] for r in range(world)]


def _drain(results, outcomes: dict) -> None:
    while True:
        try:
            rank, ok, value = results.get(timeout=0.5)
        except queue.Empty:
            return
        outcomes[rank] = Outcome(rank, ok, value if ok else None, "" if ok else value)
