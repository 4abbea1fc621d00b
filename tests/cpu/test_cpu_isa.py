"""The CPU kernels are compiled once per instruction set of csrc/cpu/isa.def and chosen at run time: every one this
CPU runs matches the reference when forced with DELTACONV_CPU_CAPABILITY, the automatic choice is the highest the
CPU has (read independently from /proc/cpuinfo), bad values are errors naming the variable, and no code outside the
AVX2 / AVX-512 kernels carries AVX instructions, so a `_C` built here loads and runs on a baseline x86-64 CPU."""

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from source_tree import ROOT, build_helpers

from deltaconv_kernels import ops
from deltaconv_kernels.ops import extension
from deltaconv_kernels.testing import check_block_backend, check_pyramid_backend

INFO = ops.available_backends()["cpu"]
if not INFO.available:
    print(f"test_cpu_isa: skipping, the cpu backend is unavailable: {INFO.reason}")
    pytest.skip(f"cpu backend unavailable: {INFO.reason}", allow_module_level=True)


BUILD = extension.build_info()
FEATURES = dict(build_helpers.isa_table(str(ROOT))[1])  # ISA -> CPU features, from isa.def
X86 = platform.machine().lower() in ("x86_64", "amd64")
ENV = "DELTACONV_CPU_CAPABILITY"


# isa.def names CPU features as GCC does; /proc/cpuinfo spells some of them otherwise.
CPUINFO_NAME = {"avx512bf16": "avx512_bf16"}


def cpuinfo_features(isa: str) -> set[str]:
    return {CPUINFO_NAME.get(f, f) for f in FEATURES[isa]}


def cpuinfo_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(m.group(1).split()) if m else None


def test_every_isa_is_compiled():
    expected = [name for name, flags in build_helpers.isa_builds(str(ROOT))]
    assert BUILD["cpu_compiled"] == expected
    assert BUILD["cpu_compiled"][0] == "DEFAULT"
    if X86:
        assert BUILD["cpu_compiled"] == list(FEATURES)


def test_runnable_and_automatic_choice_follow_the_cpu(monkeypatch):
    flags = cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags to compare the CPU detection with")
    runnable = [isa for isa in BUILD["cpu_compiled"] if cpuinfo_features(isa) <= flags]
    assert BUILD["cpu_runnable"] == runnable
    monkeypatch.delenv(ENV, raising=False)
    assert extension.cpu_capability() == runnable[-1]


CASES = [
    (1, 13, 9, 12, 3, (1.0, 0.5), "scaled"),
    (2, 25, 17, 20, 5, (1.0, 0.5, 0.25), "sigmoid"),
    (1, 7, 5, 34, 13, (1.0, 0.5), "sigmoid"),
]


@pytest.fixture(params=BUILD["cpu_compiled"])
def forced_isa(request, monkeypatch):
    isa = request.param
    if isa not in BUILD["cpu_runnable"]:
        missing = sorted(cpuinfo_features(isa) - (cpuinfo_flags() or set()))
        pytest.skip(f"CPU lacks {', '.join(missing) or 'a feature'}: it cannot run the {isa} kernels "
                    f"(it runs {BUILD['cpu_runnable']})")
    monkeypatch.setenv(ENV, isa.lower())
    assert extension.cpu_capability() == isa
    return isa


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_forced_isa_matches_reference(forced_isa, dtype, gen):
    for case in CASES:
        check_pyramid_backend("cpu", case, dtype, generator=gen, strided_u=False, strided_grad=True)
    check_block_backend("cpu", dtype, "sigmoid", generator=gen)


# u read where it lies (docs/DESIGN.md §2), cases that reach every branch of the register-blocked loops: (B, H, W,
# Ci, K, scales, gate). Widths leave full interior blocks, edge blocks on both sides, more than one pixel tile and
# single-pixel tails; K from 1 to 15 (the fixed loops, one and several tap chunks) and 17 (the generic loop);
# channel halves of whole vectors (16) and of partial ones (12, 3); few rows for a large K (rows outside the map).
DIRECT_CASES = [
    (1, 5, 45, 32, 13, (1.0, 0.5), "sigmoid"),
    (2, 7, 40, 24, 7, (1.0, 0.5), "scaled"),
    (1, 4, 37, 32, 3, (1.0,), "scaled"),
    (1, 6, 20, 6, 15, (1.0, 0.5), "sigmoid"),
    (1, 3, 19, 32, 17, (1.0,), "scaled"),
    (1, 2, 9, 32, 1, (1.0,), "sigmoid"),
]


@pytest.mark.parametrize("case", DIRECT_CASES, ids=lambda c: f"{c[2]}w-K{c[4]}-ci{c[3]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_forced_isa_reads_u_in_place(forced_isa, dtype, case, gen):
    """bf16 / fp16 u converted in registers as loaded, u strided over pixels (a channel slice of a wider tensor)."""
    check_pyramid_backend("cpu", case, dtype, generator=gen, strided_u=True, strided_grad=True)


def test_forced_isas_agree_exactly_in_fp64(monkeypatch, gen):
    """The ISAs differ only in vector width and FMA contraction, so fp64 results agree to rounding."""
    u = torch.randn(1, 11, 7, 10, generator=gen, dtype=torch.float64)
    weights = [torch.randn(5, 5, 10, generator=gen, dtype=torch.float64) for _ in range(2)]
    outs = {}
    for isa in BUILD["cpu_runnable"]:
        monkeypatch.setenv(ENV, isa)
        outs[isa] = torch.ops.deltaconv_C.pyramid_forward(u, weights, [1.0, 0.5], True, 1.0)
    first = outs[BUILD["cpu_runnable"][0]]
    for out in outs.values():
        torch.testing.assert_close(out, first, rtol=1e-12, atol=1e-12)


def test_bad_capability_is_an_error_naming_the_variable(monkeypatch):
    u = torch.randn(1, 4, 4, 6)
    monkeypatch.setenv(ENV, "avx9")
    with pytest.raises(RuntimeError, match=r"DELTACONV_CPU_CAPABILITY must be one of default, avx2, avx512.*'avx9'"):
        torch.ops.deltaconv_C.pyramid_forward(u, [torch.randn(3, 3, 6)], [1.0], False, 1.0)
    with pytest.raises(RuntimeError, match="DELTACONV_CPU_CAPABILITY"):
        extension.cpu_capability()
    assert "none: DELTACONV_CPU_CAPABILITY must be one of" in extension.describe()


def test_forcing_an_isa_this_cpu_lacks_is_an_error(monkeypatch):
    lacking = [isa for isa in BUILD["cpu_compiled"] if isa not in BUILD["cpu_runnable"]]
    if not lacking:
        pytest.skip(f"this CPU runs every compiled ISA {BUILD['cpu_compiled']}")
    monkeypatch.setenv(ENV, lacking[0])
    with pytest.raises(RuntimeError, match=f"DELTACONV_CPU_CAPABILITY={lacking[0]}: this CPU lacks"):
        extension.cpu_capability()


# ---- the instructions of the built library -------------------------------------------------------------------

# Code of a per-ISA copy carries its namespace deltaconv::cpu::<ISA> (or at::vec::<ISA>) in its mangled name,
# also as a template argument (a lambda of the kernels, an OpenMP outlined region of one).
ISA_MARK = re.compile(r"(?<![0-9])(4AVX2|6AVX512|10AVX512BF16)")
AVX = re.compile(r"^\s*[0-9a-f]+:\s+v[a-z0-9]+\b|%[xyz]mm(1[6-9]|2[0-9]|3[01])\b|%[yz]mm|%k[0-7]\b")


def avx_functions(lib: str) -> dict[str, str]:
    """{mangled function name: first instruction using AVX (VEX/EVEX)} of the shared library `lib`."""
    dump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", lib], capture_output=True, text=True, check=True)
    found, current = {}, None
    for line in dump.stdout.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            current = head.group(1)
        elif current and current not in found and AVX.search(line):
            found[current] = line.strip()
    return found


def local_symbols(lib: str) -> set[str]:
    out = subprocess.run(["nm", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    return {parts[2] for parts in (line.split() for line in out.splitlines()) if len(parts) == 3 and parts[1] == "t"}


@pytest.mark.skipif(not X86, reason="the instruction check is for x86-64 builds")
def test_no_avx_outside_the_per_isa_kernels():
    """Everything a baseline x86-64 CPU executes (the library's load-time initialisers, the bindings, the ISA
    choice, the DEFAULT kernels, the std:: code they share) must be free of AVX instructions. Allowed: functions
    of an AVX2 / AVX-512 copy, and local functions (a clone of the compiler's in one object) other than load-time
    initialisers: only the code of their own object calls them, and the baseline objects contain no AVX."""
    if shutil.which("objdump") is None or shutil.which("nm") is None:
        pytest.skip("objdump / nm (binutils) not installed")
    import deltaconv_kernels._C as C
    avx = avx_functions(C.__file__)
    local = local_symbols(C.__file__)
    bad = {name: ins for name, ins in avx.items()
           if not ISA_MARK.search(name) and (name not in local or name.startswith("_GLOBAL__sub_I"))}
    assert not bad, f"AVX instructions outside the per-ISA kernels of {C.__file__}: {bad}"
    assert any("6AVX512" in name for name in avx) and any("4AVX2" in name for name in avx), "no AVX kernels found"
