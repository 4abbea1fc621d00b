"""Build decisions for setup.py (not installed): the torch to build against, the sources, the CPU instruction sets,
CUDA or not, and why.

Kept out of setup.py so the decisions can be printed, tested and reused by .ci scripts.

Which torch: `_C` must be compiled against the torch it will run with, so the build never installs one. Plain
`pip install .` runs setup.py in an isolated build environment (setuptools and wheel only; listing torch in
build-system.requires would download a second torch, GBs and possibly another CUDA build). There `import torch` fails,
so `import_torch` asks the interpreter running the build (pip runs it with the interpreter of the environment it
installs into) for its own import path, with pip's isolation variables (PYTHONPATH, which pip points at its
sitecustomize, and PYTHONNOUSERSITE) removed, and appends that path to sys.path: setuptools and wheel still come
from the build environment, torch and its dependencies from the target. Under `pip install --no-build-isolation .`
torch is importable directly. A front end that builds with another interpreter (uv, `python -m build`) finds no
torch there and gets the message of `no_torch_message`.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys

ISA_DEF = os.path.join("csrc", "cpu", "isa.def")
# Written next to _C by the build: what _C was built against (deltaconv_kernels/ops/extension.py reads it).
BUILD_RECORD = "_C_build.json"
# The variables pip's isolated build environment sets to hide the target environment's packages.
ISOLATION_VARS = ("PYTHONPATH", "PYTHONNOUSERSITE")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def version(root: str) -> str:
    """The package version: the one `__version__ = "..."` line of deltaconv_kernels/__init__.py."""
    with open(os.path.join(root, "deltaconv_kernels", "__init__.py"), encoding="utf-8") as f:
        found = re.findall(r'^__version__ = "([^"]+)"$', f.read(), re.M)
    if len(found) != 1:
        raise SystemExit(f"deltaconv_kernels/__init__.py must hold exactly one `__version__ = \"...\"` line, "
                         f"found {len(found)}")
    return found[0]


# ---- the torch to build against --------------------------------------------------------------------------------

def no_torch_message(looked: str) -> str:
    return (
        "deltaconv_kernels: torch is not installed where this build can see it, and the C++ extension is built\n"
        "against the torch of the environment you install into (the build never installs one itself).\n"
        "Install torch into that environment first, then retry `pip install .`:\n"
        "    pip install torch --index-url https://download.pytorch.org/whl/cpu   # the CPU-only wheel\n"
        "    pip install torch                                                    # a CUDA build (Linux; for other\n"
        "                                                                         # CUDA versions see pytorch.org)\n"
        f"({looked})\n"
        "If torch is installed there, your build front end builds with an interpreter of its own (uv and\n"
        "`python -m build` do): build in the target environment instead with\n"
        "    pip install --no-build-isolation .\n"
        "    (uv pip install --no-build-isolation .; python -m build --no-isolation)\n"
        "which needs setuptools>=70.1 there. DELTACONV_SKIP_EXT=1 gives a pure-Python install without the extension.")


def target_sys_path(python: str) -> tuple[bool, list[str]]:
    """(has torch, sys.path) of `python` outside any isolated build environment."""
    env = {k: v for k, v in os.environ.items() if k not in ISOLATION_VARS}
    code = ("import importlib.util, json, sys; "
            "print(json.dumps([importlib.util.find_spec('torch') is not None, sys.path]))")
    try:
        out = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
        has_torch, path = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        raise SystemExit(no_torch_message(f"asking {python} where its packages are failed: {e}")) from None
    return bool(has_torch), [p for p in path if p and os.path.isabs(p)]


def import_torch():
    """torch, imported from this interpreter's path or else from the target environment's (see the module doc)."""
    try:
        import torch
        return torch
    except ImportError:
        pass
    has_torch, path = target_sys_path(sys.executable)
    if not has_torch:
        raise SystemExit(no_torch_message(f"looked with {sys.executable}, outside the isolated build environment"))
    sys.path.extend(p for p in path if p not in sys.path)
    try:
        import torch
    except ImportError as e:
        raise SystemExit(no_torch_message(f"torch of {sys.executable} found but failed to import: {e}")) from None
    return torch


# ---- CPU instruction sets ---------------------------------------------------------------------------------------

def isa_table(root: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(per-ISA sources, [(ISA, CPU features)]) of csrc/cpu/isa.def, in its order."""
    sources, isas = [], []
    with open(os.path.join(root, ISA_DEF), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("//"):
                continue
            m = re.fullmatch(r"DELTACONV_(ISA_SOURCE|ISA)\(([^)]*)\)", line)
            if not m:
                raise SystemExit(f"{ISA_DEF}:{n}: cannot parse {line!r}")
            args = [a.strip() for a in m.group(2).split(",")]
            if m.group(1) == "ISA_SOURCE":
                sources.append(os.path.join("csrc", "cpu", args[0]))
            else:
                isas.append((args[0], args[1:]))
    return sources, isas


def isa_builds(root: str, machine: str | None = None) -> list[tuple[str, list[str]]]:
    """[(ISA, compiler flags)] to compile the per-ISA sources for: all of isa.def on x86-64, else DEFAULT."""
    machine = (machine or platform.machine()).lower()
    x86 = machine in ("x86_64", "amd64")
    return [(name, [f"-m{f}" for f in feats]) for name, feats in isa_table(root)[1] if x86 or not feats]


# ---- the C++ standard ----------------------------------------------------------------------------------------------

# The sources use C++20 (constinit kernel tables, designated initialisers). torch's cpp_extension adds its own
# `-std=` only when none is given, and its default moved from c++17 (torch <= 2.12) to c++20 (2.13): set it here so
# every supported torch compiles the same language, for g++ and nvcc alike.
CXX_STD = "-std=c++20"
# The oldest torch the package is built and tested against (the GPU image's; CI runs 2.13).
OLDEST_TORCH = "2.11"


# ---- CUDA --------------------------------------------------------------------------------------------------------

def has_cuda_headers(home: str | None) -> bool:
    """Whether `home` is a CUDA toolkit folder the CUDA sources can compile against."""
    return bool(home) and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))


def nvcc_toolkit(nvcc: str) -> str | None:
    """The CUDA toolkit folder of `nvcc`, as nvcc itself reports it (`--dryrun` prints `_HERE_=<toolkit>/bin`).
    Asking nvcc is what works when the nvcc on PATH is a wrapper script outside the toolkit: torch would take the
    wrapper's parent folder and find no cuda_runtime.h there."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (out.stdout + out.stderr).splitlines():
        m = re.match(r"#\$ _HERE_=(.+)$", line.strip())
        if m and has_cuda_headers(home := os.path.dirname(os.path.normpath(m.group(1).strip()))):
            return home
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return home if has_cuda_headers(home) else None


def cuda_home() -> tuple[str | None, str]:
    """(CUDA toolkit folder or None, where it came from). CUDA_HOME / CUDA_PATH win when set; else the toolkit of
    the nvcc on PATH. Must be decided before torch.utils.cpp_extension is imported (it reads CUDA_HOME once)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var], f"${var}"
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None, "no nvcc on PATH and CUDA_HOME not set"
    home = nvcc_toolkit(nvcc)
    if home is None:
        return None, f"{nvcc} did not name a toolkit folder with include/cuda_runtime.h (set CUDA_HOME)"
    return home, f"the toolkit of {nvcc}"


def set_cuda_home() -> tuple[str | None, str]:
    """Export the toolkit folder as CUDA_HOME for torch's cpp_extension (when one is found)."""
    home, source = cuda_home()
    if home:
        os.environ["CUDA_HOME"] = home
        # cpp_extension reads CUDA_HOME once, at import: if something imported it already, correct its copy too.
        ext = sys.modules.get("torch.utils.cpp_extension")
        if ext is not None:
            ext.CUDA_HOME = home
    return home, source


def cuda_decision(torch) -> tuple[bool, str]:
    """(build CUDA?, reason)."""
    from torch.utils.cpp_extension import CUDA_HOME
    home = f"CUDA_HOME={CUDA_HOME or '(none)'}"
    forced = env_flag("DELTACONV_FORCE_CUDA")
    if torch.version.cuda is None:
        if forced:
            raise SystemExit(f"DELTACONV_FORCE_CUDA=1 but torch {torch.__version__} is a CPU-only build: "
                             "install a CUDA build of torch first")
        return False, f"torch {torch.__version__} has no CUDA"
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        if forced:
            raise SystemExit(f"DELTACONV_FORCE_CUDA=1 but nvcc was not found ({home}; set CUDA_HOME to the CUDA "
                             "toolkit folder)")
        return False, f"nvcc not found ({home}; set CUDA_HOME to build the CUDA kernels)"
    missing = None
    if not has_cuda_headers(CUDA_HOME):
        missing = f"{home} has no include/cuda_runtime.h: set CUDA_HOME to the CUDA toolkit folder"
    # torch takes the architectures from TORCH_CUDA_ARCH_LIST, else from the visible GPUs: with neither it has none
    # (and fails inside cpp_extension with an IndexError).
    elif not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        missing = "no GPU visible and TORCH_CUDA_ARCH_LIST not set (e.g. TORCH_CUDA_ARCH_LIST=9.0 builds for sm_90)"
    if missing:
        if forced:
            raise SystemExit(f"DELTACONV_FORCE_CUDA=1 but {missing}")
        return False, missing
    if forced:
        return True, f"forced by DELTACONV_FORCE_CUDA (torch CUDA {torch.version.cuda}, nvcc {nvcc}, {home})"
    return True, f"torch has CUDA {torch.version.cuda} and nvcc is at {nvcc} ({home})"


# ---- the extension ---------------------------------------------------------------------------------------------------

def common_sources(root: str) -> list[str]:
    """The C++ sources compiled once, without ISA flags: everything in csrc/ and csrc/cpu but the per-ISA ones."""
    per_isa = {os.path.normpath(os.path.join(root, s)) for s in isa_table(root)[0]}
    found = sorted(glob.glob(os.path.join(root, "csrc", "*.cpp")) +
                   glob.glob(os.path.join(root, "csrc", "cpu", "*.cpp")))
    return [p for p in found if os.path.normpath(p) not in per_isa]


def cuda_sources(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "csrc", "cuda", "*.cu")) +
                  glob.glob(os.path.join(root, "csrc", "cuda", "*.cpp")))


def extensions(root: str) -> tuple[list, str]:
    """The `_C` extension (or none) and a report of what is built and why."""
    if env_flag("DELTACONV_SKIP_EXT"):
        return [], "deltaconv_kernels: DELTACONV_SKIP_EXT=1: pure-Python install, no C++ extension"
    torch = import_torch()
    set_cuda_home()
    from torch.utils import cpp_extension
    rel = lambda paths: [os.path.relpath(p, root) for p in paths]  # noqa: E731  (setuptools wants relative paths)
    with_cuda, cuda_reason = cuda_decision(torch)
    per_isa_sources, _ = isa_table(root)
    isas = isa_builds(root)
    sources = rel(common_sources(root))
    cxx = [CXX_STD, "-O3", "-g0", "-fopenmp", "-DDELTACONV_PYTHON_MODULE"]
    # Rebuild when any source, isa.def or the torch headers change (distutils only compares sources and depends
    # with the built library, and the per-ISA sources are not among the extension's sources).
    depends = rel(glob.glob(os.path.join(root, "csrc", "**", "*"), recursive=True))
    depends = [d for d in depends if os.path.isfile(os.path.join(root, d))]
    depends += glob.glob(os.path.join(os.path.dirname(torch.__file__), "include", "torch", "csrc", "api", "include",
                                      "torch", "version.h"))
    kwargs = {"include_dirs": [os.path.join(root, "csrc", "include")], "extra_link_args": ["-fopenmp"],
              "depends": depends}
    lines = [f"deltaconv_kernels: building deltaconv_kernels._C against torch {torch.__version__} "
             f"({os.path.dirname(torch.__file__)})",
             f"  C++ CPU kernels: {', '.join(rel(per_isa_sources))} for {', '.join(n for n, _ in isas)} "
             f"(chosen at run time, {ISA_DEF}); {len(sources)} more files; OpenMP via at::parallel_for"]
    if with_cuda:
        cu = rel(cuda_sources(root))
        cxx.append("-DDELTACONV_WITH_CUDA")
        nvcc = [CXX_STD, "-O3", "-DDELTACONV_WITH_CUDA", "--expt-relaxed-constexpr"]
        ext = cpp_extension.CUDAExtension("deltaconv_kernels._C", sources + cu,
                                          extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
        lines.append(f"  CUDA kernels: {len(cu)} files ({cuda_reason}); "
                     f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch default: this GPU)')}")
    else:
        ext = cpp_extension.CppExtension("deltaconv_kernels._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
        lines.append(f"  CUDA kernels: skipped ({cuda_reason})")
    ext.deltaconv_isa = (rel([os.path.join(root, s) for s in per_isa_sources]), isas)
    return [ext], "\n".join(lines)


def record_next_to(ext_path: str) -> str:
    return os.path.join(os.path.dirname(ext_path), BUILD_RECORD)


def build_ext_class():
    """torch's BuildExtension, plus the per-ISA objects of every extension and its build record."""
    import torch
    from torch.utils.cpp_extension import BuildExtension

    base = BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)

    class BuildExt(base):
        def isa_objects(self, ext) -> list[str]:
            """Compiles the per-ISA sources once per instruction set, each with its flags and macros. The objects
            are linked after the extension's own ones, lowest ISA first: an inline function that several objects
            emit (a std:: template, say) is then taken from a baseline or lower-ISA object (the linker keeps the
            first), never from an AVX-512 one. tests/cpu/test_cpu_isa.py checks the result."""
            sources, isas = ext.deltaconv_isa
            args = ext.extra_compile_args
            cxx = list(args["cxx"] if isinstance(args, dict) else args)
            objects = []
            for name, flags in isas:
                objects += self.compiler.compile(
                    sources, output_dir=os.path.join(self.build_temp, "isa", name),
                    macros=[*ext.define_macros, ("CPU_CAPABILITY", name), (f"CPU_CAPABILITY_{name}", None)],
                    include_dirs=ext.include_dirs, debug=self.debug, extra_postargs=cxx + flags, depends=ext.depends)
            return objects

        def record_path(self, ext) -> str:
            return record_next_to(self.get_ext_fullpath(ext.name))

        def build_extension(self, ext):
            own = ext.extra_objects
            ext.extra_objects = [*(own or []), *self.isa_objects(ext)] if hasattr(ext, "deltaconv_isa") else own
            try:
                super().build_extension(ext)
            finally:
                ext.extra_objects = own
            with open(self.record_path(ext), "w", encoding="utf-8") as f:
                from torch.utils.cpp_extension import CUDA_HOME
                json.dump({"torch": str(torch.__version__), "torch_cuda": torch.version.cuda,
                           "cuda_home": CUDA_HOME if torch.version.cuda else None}, f)
                f.write("\n")

        def get_outputs(self):
            return [*super().get_outputs(), *(self.record_path(ext) for ext in self.extensions)]

        # setuptools builds in build_lib and then copies the extensions (only) into the source tree for
        # `build_ext --inplace` and editable installs: the record goes along with each.
        def record_copies(self) -> list[tuple[str, str]]:
            build_py = self.get_finalized_command("build_py")
            pairs = (self._get_inplace_equivalent(build_py, ext) for ext in self.extensions)
            return [(record_next_to(regular), record_next_to(inplace)) for inplace, regular in pairs]

        def copy_extensions_to_source(self):
            super().copy_extensions_to_source()
            for regular, inplace in self.record_copies():
                self.copy_file(regular, inplace, level=self.verbose)

        def _get_output_mapping(self):
            yield from super()._get_output_mapping()
            if self.inplace:
                yield from self.record_copies()

    return BuildExt
