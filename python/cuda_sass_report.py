"""Static report of the CUDA kernels (csrc/cuda/*.cu), no GPU needed: compiles each file with nvcc for the given
architectures with `-Xptxas -v`, reads registers and spills per kernel, disassembles with `cuobjdump -sass` and
measures the share of FMA instructions (FFMA, DFMA, HFMA2) in each kernel's hot loop: the loop (a backward
branch and its target) with the most FMAs among the innermost loops that hold FMAs, or the whole kernel when it
has no such loop (fully unrolled).

    python python/cuda_sass_report.py [--arch 80 90] [--filter REGEX] [--min-fma-share 0.6]

Prints one line per kernel and architecture; exits 1 when a kernel spills, or when one of the K x K kernels
(--fma-kernels, a regex) has a hot loop with an FMA share below --min-fma-share.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMA = re.compile(r"\b(FFMA|DFMA|HFMA2)\b")
INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
BRANCH_TARGET = re.compile(r"0x([0-9a-f]+)")  # cuobjdump prints branch targets as addresses
FUNC = re.compile(r"Function : (\S+)")
PTXAS_FUNC = re.compile(r"Compiling entry function '(\S+)' for 'sm_(\d+)'")
PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
PTXAS_REGS = re.compile(r"Used (\d+) registers")


def demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def compile_file(src: str, archs: list[str], out_dir: str) -> tuple[str, str]:
    obj = os.path.join(out_dir, os.path.basename(src) + ".o")
    cmd = [os.environ.get("NVCC", "nvcc"), "-std=c++17", "-O3", "-I", os.path.join(ROOT, "csrc", "include"),
           "-Xptxas", "-v", "-c", src, "-o", obj]
    for a in archs:
        cmd[1:1] = ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"error: nvcc failed on {src}:\n{res.stderr}")
    return obj, res.stderr


def ptxas_info(log: str) -> dict[tuple[str, str], dict]:
    info, current = {}, None
    for line in log.splitlines():
        if m := PTXAS_FUNC.search(line):
            current = (m.group(1), m.group(2))
            info[current] = {"spill": 0, "regs": None}
        elif current and (m := PTXAS_SPILL.search(line)):
            info[current]["spill"] = int(m.group(1)) + int(m.group(2))
        elif current and (m := PTXAS_REGS.search(line)):
            info[current]["regs"] = int(m.group(1))
    return info


def find_cuobjdump() -> str | None:
    """$CUOBJDUMP, else cuobjdump on PATH, else the copy Triton ships (triton/backends/nvidia/bin)."""
    if os.environ.get("CUOBJDUMP"):
        return os.environ["CUOBJDUMP"]
    if shutil.which("cuobjdump"):
        return shutil.which("cuobjdump")
    try:
        import triton
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else None


def sass_functions(obj: str, arch: str, cuobjdump: str) -> dict[str, list[str]]:
    res = subprocess.run([cuobjdump, "-sass", "-arch", f"sm_{arch}", obj], capture_output=True, text=True,
                         check=True)
    funcs, name = {}, None
    for line in res.stdout.splitlines():
        if m := FUNC.search(line):
            name = m.group(1)
            funcs[name] = []
        elif name is not None:
            funcs[name].append(line.strip())
    return funcs


def hot_loop_share(lines: list[str]) -> tuple[float, int, int]:
    """(FMA share, FMAs, instructions) of the loop with the most FMAs, or of the whole kernel."""
    instrs, index = [], {}  # (opcode, operands); address -> instruction index
    for line in lines:
        if m := INSTR.search(line):
            index[int(m.group(1), 16)] = len(instrs)
            instrs.append((m.group(3), m.group(4)))
    loops = []  # (fmas, start, end) of every loop holding an FMA
    for i, (op, args) in enumerate(instrs):
        m = BRANCH_TARGET.search(args) if op.startswith("BRA") else None
        start = index.get(int(m.group(1), 16)) if m else None
        if start is not None and start <= i:  # a backward branch closes a loop [start, i]
            fmas = sum(1 for o, _ in instrs[start:i + 1] if FMA.search(o))
            if fmas:
                loops.append((fmas, start, i + 1))
    # The hot loop: an innermost one (no FMA loop inside it) with the most FMAs.
    inner = [lp for lp in loops if not any(o is not lp and lp[1] <= o[1] and o[2] <= lp[2] for o in loops)]
    best = max(inner, default=(0, 0, len(instrs)))
    fmas, start, end = best
    if fmas == 0:  # no loop holds an FMA: fully unrolled (or no FMA at all)
        start, end = 0, len(instrs)
        fmas = sum(1 for o, _ in instrs if FMA.search(o))
    n = max(1, end - start)
    return fmas / n, fmas, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", default=["80", "90"], help="SM architectures (default: 80 90)")
    p.add_argument("--filter", default="", help="only report kernels whose demangled name matches this regex")
    p.add_argument("--min-fma-share", type=float, default=None,
                   help="fail when the hot loop of a kernel matching --fma-kernels has a lower FMA share")
    p.add_argument("--fma-kernels", default=r"(tile_conv|weight_grad)_kernel<"
                   r"(?!double)", help="regex of the kernels --min-fma-share applies to (default: the K x K kernels "
                   "computing in fp32; fp64 is the exactness path, two lanes per 16-byte vector)")
    p.add_argument("sources", nargs="*", help="default: csrc/cuda/*.cu")
    args = p.parse_args(argv)
    cuobjdump = find_cuobjdump()
    if not shutil.which(os.environ.get("NVCC", "nvcc")) or cuobjdump is None:
        print("error: nvcc and cuobjdump are needed (set NVCC / CUOBJDUMP, or put them on PATH)", file=sys.stderr)
        return 2
    sources = args.sources or sorted(os.path.join(ROOT, "csrc", "cuda", f)
                                     for f in os.listdir(os.path.join(ROOT, "csrc", "cuda")) if f.endswith(".cu"))
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            obj, log = compile_file(src, args.arch, tmp)
            info = ptxas_info(log)
            for arch in args.arch:
                funcs = sass_functions(obj, arch, cuobjdump)
                names = demangle(list(funcs))
                for mangled, lines in sorted(funcs.items(), key=lambda kv: names[kv[0]]):
                    pretty = names[mangled]
                    if not re.search(args.filter, pretty):
                        continue
                    share, fmas, n = hot_loop_share(lines)
                    pi = info.get((mangled, arch), {"spill": 0, "regs": None})
                    bad = pi["spill"] > 0 or (args.min_fma_share is not None and
                                              re.search(args.fma_kernels, pretty) is not None and
                                              share < args.min_fma_share)
                    failed |= bad
                    print(f"sm_{arch} regs={pi['regs']} spill_bytes={pi['spill']} fma_share={share:.2f} "
                          f"({fmas}/{n}) {'FAIL ' if bad else ''}{pretty}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
