"""Band (row) parallelism: one image split across processes on torch.distributed (docs/DESIGN.md §9).

    torch.distributed.init_process_group()          # under torchrun: NCCL on GPUs, gloo on CPU
    dd.convert(pipe); patch_parallel(pipe)           # then pipe(...) as usual, the same call on every rank

`band_block_forward` runs one ΔConvBlock on a band of rows; `patch_parallel` a whole converted denoiser (needs
diffusers, imported on first use)."""

from deltaconv_kernels.parallel.bands import check_bands, split_rows
from deltaconv_kernels.parallel.block import band_block_forward
from deltaconv_kernels.parallel.comm import BandComm, InputMismatchError, RankFailureError

_DENOISERS = ("patch_parallel", "unpatch_parallel", "bytes_sent")

__all__ = ["BandComm", "InputMismatchError", "RankFailureError", "band_block_forward", "check_bands", "split_rows",
           *_DENOISERS]


def __getattr__(name):  # the denoiser patching imports diffusers: only when asked for
    if name in _DENOISERS:
        from deltaconv_kernels.parallel import denoisers
        return getattr(denoisers, name)
    raise AttributeError(f"module 'deltaconv_kernels.parallel' has no attribute {name!r}")
