"""The communication of band parallelism on torch.distributed (docs/DESIGN.md §9): row exchanges between ranks
(point-to-point, so a lost peer is named), the all-reduce of partial sums, the gather of the output bands and
the check that every rank got the same inputs. Every wait is bounded: a rank that fails, exits or hangs makes
the others raise `RankFailureError` naming it within `timeout_s`, whatever the process group's own timeout.
Every byte sent is counted per kind (`BandComm.sent`), for the cost tables in benchmarks/RESULTS.md."""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from datetime import timedelta

import torch
import torch.distributed as dist

from deltaconv_kernels.parallel.bands import Band, overlap


class RankFailureError(RuntimeError):
    """Another rank failed, exited or did not answer in time."""


class InputMismatchError(ValueError):
    """The ranks were given different inputs (sizes, dtypes, values): refused before any work."""


class BandComm:
    """One rank's view of a process group for band-parallel work. `group=None` is the default group."""

    def __init__(self, group=None, timeout_s: float = 300.0):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("band parallelism needs an initialised torch.distributed process group: run under "
                               "torchrun and call torch.distributed.init_process_group() first")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.timeout = timedelta(seconds=float(timeout_s))
        self.sent: Counter = Counter()  # kind -> bytes this rank sent

    # -- plumbing ------------------------------------------------------------------------------------------
    def _global(self, r: int) -> int:
        return r if self.group is None else dist.get_global_rank(self.group, r)

    @contextlib.contextmanager
    def _naming(self, what: str, peers):
        """Turn a failure of posting or waiting on an op with `peers` into RankFailureError naming them."""
        try:
            yield
        except RankFailureError:
            raise
        except Exception as e:  # gloo/NCCL raise RuntimeError or DistBackendError
            names = ", ".join(f"rank {p}" for p in peers)
            raise RankFailureError(f"rank {self.rank}: {what} with {names} failed or timed out after "
                                   f"{self.timeout.total_seconds():g} s ({names} failed, exited or hangs): "
                                   f"{type(e).__name__}: {e}") from e

    def _exchange(self, sends: dict[int, torch.Tensor], recvs: dict[int, torch.Tensor], what: str, kind: str):
        """Post every send and receive, then wait on each, naming the peer of the first one that fails."""
        works = []
        for peer, t in recvs.items():
            with self._naming(what, [peer]):
                works.append((dist.irecv(t, self._global(peer), group=self.group), peer))
        for peer, t in sends.items():
            t = t.contiguous()
            sends[peer] = t  # keep the buffer alive until its send completes
            self.sent[kind] += t.numel() * t.element_size()
            with self._naming(what, [peer]):
                works.append((dist.isend(t, self._global(peer), group=self.group), peer))
        for work, peer in works:
            with self._naming(what, [peer]):
                work.wait(self.timeout)

    def _collective(self, op, what: str) -> None:
        """Run the async collective `op()` and wait on it, naming every other rank if it fails."""
        with self._naming(what, [r for r in range(self.world) if r != self.rank]):
            op().wait(self.timeout)

    # -- row exchanges -------------------------------------------------------------------------------------
    def swap_rows(self, local: torch.Tensor, dim: int, have: list[Band], need: list[Band], kind: str = "halo"):
        """Every rank holds rows `have[r]` of a global map (along `dim` of `local`) and needs rows `need[r]`.
        Returns `[(start, tensor)]`: the pieces of `need[self.rank]` held by each rank (own piece included),
        in rank order. Ranges of `have` may overlap (partial sums)."""
        me = self.rank
        sends, recvs, pieces = {}, {}, {}
        for peer in range(self.world):
            out = overlap(have[me], need[peer])
            inc = overlap(have[peer], need[me])
            if peer == me:
                if inc is not None:
                    pieces[me] = (inc[0], local.narrow(dim, inc[0] - have[me][0], inc[1] - inc[0]))
                continue
            if out is not None:
                sends[peer] = local.narrow(dim, out[0] - have[me][0], out[1] - out[0])
            if inc is not None:
                shape = list(local.shape)
                shape[dim] = inc[1] - inc[0]
                recvs[peer] = local.new_empty(shape)
                pieces[peer] = (inc[0], recvs[peer])
        self._exchange(sends, recvs, f"exchanging {kind} rows", kind)
        return [pieces[r] for r in sorted(pieces)]

    def gather_rows(self, local: torch.Tensor, dim: int, have: list[Band], need: list[Band], kind: str = "halo"):
        """Rows `need[self.rank]` of the global map assembled from the disjoint bands `have`; rows no rank holds
        (outside the map) are zeros, as a zero-padded convolution sees them."""
        return self._assemble(local, dim, have, need, kind, torch.Tensor.copy_)

    def sum_rows(self, local: torch.Tensor, dim: int, have: list[Band], need: list[Band], kind: str = "partial"):
        """Rows `need[self.rank]` of the sum over ranks of their partial maps `have[r]` (added in rank order)."""
        return self._assemble(local, dim, have, need, kind, torch.Tensor.add_)

    def _assemble(self, local, dim, have, need, kind, put):
        lo, hi = need[self.rank]
        shape = list(local.shape)
        shape[dim] = hi - lo
        out = local.new_zeros(shape)
        for start, piece in self.swap_rows(local, dim, have, need, kind):
            put(out.narrow(dim, start - lo, piece.shape[dim]), piece)
        return out

    # -- collectives ---------------------------------------------------------------------------------------
    def all_reduce_sum(self, t: torch.Tensor, kind: str = "allreduce") -> torch.Tensor:
        t = t.contiguous()
        self.sent[kind] += t.numel() * t.element_size()
        self._collective(lambda: dist.all_reduce(t, group=self.group, async_op=True), f"all-reduce ({kind})")
        return t

    def gather_bands(self, local: torch.Tensor, dim: int, bands: list[Band]) -> torch.Tensor:
        """The whole map from every rank's band along `dim` (each padded to the thickest band: all_gather
        takes equal sizes), identical on every rank."""
        thickest = max(e - s for s, e in bands)
        pad = list(local.shape)
        pad[dim] = thickest - local.shape[dim]
        buf = torch.cat([local, local.new_zeros(pad)], dim=dim).contiguous()
        parts = [torch.empty_like(buf) for _ in range(self.world)]
        self.sent["gather"] += buf.numel() * buf.element_size()
        self._collective(lambda: dist.all_gather(parts, buf, group=self.group, async_op=True),
                         "gathering the output bands")
        return torch.cat([p.narrow(dim, 0, e - s) for p, (s, e) in zip(parts, bands)], dim=dim)

    def check_same(self, fields: dict[str, object]) -> None:
        """Refuse (InputMismatchError on every rank) unless every rank passed equal `fields`: tensors compare by
        shape, dtype and exact bytes, anything else by repr. One small message to every peer (the fingerprint and
        the shapes, to name what differs), before any work."""
        mine = describe(fields)
        message = torch.frombuffer(bytearray(_fingerprint(fields) + _padded(mine)), dtype=torch.uint8)
        theirs = {p: torch.empty_like(message) for p in range(self.world) if p != self.rank}
        self._exchange({p: message for p in theirs}, theirs, "checking that the ranks got the same inputs", "check")
        differ = {p: m for p, m in theirs.items() if not torch.equal(m[:_DIGEST], message[:_DIGEST])}
        if differ:
            lines = "; ".join(f"rank {p} got ({bytes(m[_DIGEST:].tolist()).rstrip(bytes(1)).decode(errors='replace')})"
                              for p, m in sorted(differ.items()))
            raise InputMismatchError(
                f"rank {self.rank}: the ranks were given different inputs: this rank got ({mine}); {lines} (values "
                "differ where the shapes agree); every rank must call the model with the same sizes, dtypes, "
                "seeds and values")


_DIGEST, _DESCRIPTION = 32, 480  # bytes of the check message: sha256 of the inputs, then their shapes as text


def _padded(text: str) -> bytes:
    raw = text.encode()[:_DESCRIPTION]
    return raw + bytes(_DESCRIPTION - len(raw))


def _fingerprint(fields: dict[str, object]) -> bytes:
    h = hashlib.sha256()
    for name in sorted(fields):
        value = fields[name]
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            h.update(f"{tuple(value.shape)} {value.dtype}".encode())
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.digest()


def describe(fields: dict[str, object]) -> str:
    """Shapes and dtypes of the tensors (and reprs of the rest), for error messages."""
    return ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor) else f"{k}: {v!r}"
                     for k, v in sorted(fields.items()))
