"""Build decisions for setup.py (not installed): which sources, which CPU instruction set, CUDA or not, and why.

Kept out of setup.py so the decisions can be printed, tested and reused by .ci scripts.
"""

from __future__ import annotations

import glob
import os
import shutil

# The instruction sets csrc/cpu/kernels.cpp can be compiled for (DELTACONV_CPU_CAPABILITY).
CPU_CAPABILITIES = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}
# Compiler flags per instruction set (what torch uses for its own AVX2 / AVX-512 kernels). They apply to the
# whole extension: it is built for the build machine's CPU, and probe() refuses a CPU lacking the ISA.
ISA_FLAGS = {"DEFAULT": [], "AVX2": ["-mavx2", "-mfma", "-mf16c"],
             "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]}

INSTALL_HINT = ("torch must already be installed to build the C++ extension, and pip must build against it:\n"
                "    pip install --no-build-isolation .\n"
                "(plain `pip install .` builds in an isolated environment and would have to download a second torch;\n"
                " set DELTACONV_SKIP_EXT=1 for a pure-Python install without the extension)")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def cpu_capability(torch) -> tuple[str, str]:
    """(ISA name, reason): $DELTACONV_CPU_CAPABILITY, else the best one torch uses on this machine."""
    forced = os.environ.get("DELTACONV_CPU_CAPABILITY", "").strip().upper()
    if forced:
        if forced not in CPU_CAPABILITIES:
            raise SystemExit(f"DELTACONV_CPU_CAPABILITY must be one of {sorted(CPU_CAPABILITIES)}, got {forced!r}")
        return forced, "forced by DELTACONV_CPU_CAPABILITY"
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "DEFAULT", f"{platform.machine()} is not x86-64: portable at::vec code"
    torch_cap = torch.backends.cpu.get_cpu_capability()
    if torch_cap.startswith("AVX512"):
        return "AVX512", f"torch reports {torch_cap} on this build machine"
    if torch_cap == "AVX2":
        return "AVX2", "torch reports AVX2 on this build machine"
    return "DEFAULT", f"torch reports {torch_cap} on this build machine"


def cuda_decision(torch) -> tuple[bool, str]:
    """(build CUDA?, reason)."""
    from torch.utils.cpp_extension import CUDA_HOME
    forced = env_flag("DELTACONV_FORCE_CUDA")
    if torch.version.cuda is None:
        if forced:
            raise SystemExit(f"DELTACONV_FORCE_CUDA=1 but torch {torch.__version__} is a CPU-only build: "
                             "install a CUDA build of torch first")
        return False, f"torch {torch.__version__} has no CUDA"
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        if forced:
            raise SystemExit("DELTACONV_FORCE_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        return False, "nvcc not found (set CUDA_HOME to build the CUDA kernels)"
    if forced:
        return True, f"forced by DELTACONV_FORCE_CUDA (torch CUDA {torch.version.cuda}, nvcc {nvcc})"
    return True, f"torch has CUDA {torch.version.cuda} and nvcc is at {nvcc}"


def cpu_sources(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "csrc", "cpu", "*.cpp"))) + [os.path.join(root, "csrc", "schema.cpp")]


def cuda_sources(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "csrc", "cuda", "*.cu")) +
                  glob.glob(os.path.join(root, "csrc", "cuda", "*.cpp")))


def extensions(root: str) -> tuple[list, str]:
    """The `_C` extension (or none) and a report of what is built and why."""
    if env_flag("DELTACONV_SKIP_EXT"):
        return [], "deltaconv_kernels: DELTACONV_SKIP_EXT=1: pure-Python install, no C++ extension"
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        raise SystemExit("deltaconv_kernels: cannot import torch in the build environment.\n" + INSTALL_HINT) from None
    rel = lambda paths: [os.path.relpath(p, root) for p in paths]  # noqa: E731  (setuptools wants relative paths)
    isa, isa_reason = cpu_capability(torch)
    with_cuda, cuda_reason = cuda_decision(torch)
    sources = rel(cpu_sources(root))
    cxx = ["-O3", "-g0", "-fopenmp", "-DDELTACONV_PYTHON_MODULE", f"-DDELTACONV_CPU_CAPABILITY={CPU_CAPABILITIES[isa]}",
           *ISA_FLAGS[isa]]
    kwargs = {"include_dirs": [os.path.join(root, "csrc", "include")], "extra_link_args": ["-fopenmp"]}
    lines = [f"deltaconv_kernels: building deltaconv_kernels._C against torch {torch.__version__}",
             f"  C++ CPU kernels: {len(sources)} files, {isa} ({isa_reason}), OpenMP via at::parallel_for"]
    if with_cuda:
        cu = rel(cuda_sources(root))
        cxx.append("-DDELTACONV_WITH_CUDA")
        nvcc = ["-O3", "-DDELTACONV_WITH_CUDA", "--expt-relaxed-constexpr"]
        ext = cpp_extension.CUDAExtension("deltaconv_kernels._C", sources + cu,
                                          extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
        lines.append(f"  CUDA kernels: {len(cu)} files ({cuda_reason}); "
                     f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch default: this GPU)')}")
    else:
        ext = cpp_extension.CppExtension("deltaconv_kernels._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
        lines.append(f"  CUDA kernels: skipped ({cuda_reason})")
    return [ext], "\n".join(lines)


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension
    return BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
