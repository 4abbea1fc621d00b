"""Ahead-of-time compile report of every GPU kernel the package launches, without a GPU.

Triton: the block's pyramid forward/backward and pooled-bias mean run at each shape and dtype with their launches
*recorded* (deltaconv_kernels.triton.launch.record_launches: CPU tensors, nothing runs); each recorded launch,
with every autotune config, is compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`
exactly as the JIT would specialise it (the JIT's own argument specialisation: dtypes, 16-divisibility, ints == 1).
CUDA: every csrc/cuda/*.cu through `nvcc -Xptxas -v` per arch.
Per kernel: registers and stack of the cubin Triton itself built (`cuobjdump -res-usage`: the binary Triton runs,
built with Triton's own ptxas options), spill bytes (the STL/LDL local-memory instructions of its SASS), shared
memory, compile time, and the hot loop: the innermost loop (a backward branch and its target, holding no other loop)
with the most FMAs, or the whole kernel when its FMAs are unrolled straight-line code. `fma_share`: the FFMA + HFMA2
share (DFMA for fp64) of its SASS instructions (null for a kernel without FMAs; HFMA2.MMA is a register move, not
counted); `cvt_per_fma`: fp16/bf16 -> fp32 conversions per FMA; `ldg128_per_fma`: global loads per FMA in 128-bit
units (a 64-bit load counts 1/2).
Per kernel launch at its real grid, ESTIMATES for an H100 SXM (132 SMs x 4 schedulers x 1.75 GHz; nothing measured):
dynamic warp instructions (hot-loop passes from the launch's FMA count, every other loop from its trip count, the rest
once per warp) over the issue rate (`issue_us`), and global load + store traffic at one 32-bit lane-word per SM cycle
per warp (a 128-bit warp load = 4 cycles; `l1_us`); `est_us` = the larger. The autotuned conv counts the config with
the smallest estimate. Summed per shape and dtype: the forward and the forward+backward of the block's Triton kernels.

    python python/aot_report.py                         # table, sm_80 + sm_90, fp16/bf16/fp32, both shapes
    python python/aot_report.py --dtypes fp16 --json report.json
    python python/aot_report.py --arch 90 --dtypes fp16 --estimates   # + the per-launch estimates and the sums
Exit status 1 when any kernel fails to compile or spills (CI runs it for fp16).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The block shapes of the report: (name, B, H, W, Ci, K, scales, sigmoid gate). Ci = C * inter_ratio 0.5.
SHAPES = {
    "pixart1024": ("PixArt-1024", 2, 64, 64, 576, 13, (1.0, 0.5), True),
    "sd15-l1": ("SD1.5 level 1", 2, 64, 64, 160, 7, (1.0, 0.5), False),
}
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def error(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------------------------------- recording
def record_block_launches(shape: str, dtype_name: str) -> list:
    """(label, kernel, args, meta) of every Triton launch of the block's forward and backward at `shape`."""
    import torch

    from deltaconv_kernels import reference
    from deltaconv_kernels.triton import launch, pooled_bias, pyramid_backward, pyramid_forward

    _, b, h, w, ci, k, scales, sigmoid = SHAPES[shape]
    dtype = getattr(torch, DTYPES[dtype_name])
    u = torch.zeros(b, h, w, ci, dtype=dtype)
    weights = [torch.zeros(k, k, ci, dtype=dtype) for _ in scales]
    # The concat gradient's stage slices are strided views, as in autograd.
    grad = torch.zeros(b, h, w, ci // 2 * len(scales), dtype=dtype)
    x = torch.zeros(b, h, w, 2 * ci, dtype=dtype)
    gate_scale = reference.default_gate_scale(ci)
    with launch.record_launches() as fwd:
        pyramid_forward(u, weights, scales, sigmoid, gate_scale)
        pooled_bias(x, torch.zeros(2 * ci, 2 * ci, dtype=dtype), torch.zeros(2 * ci, dtype=dtype))
    with launch.record_launches() as bwd:
        pyramid_backward(grad, u, weights, scales, sigmoid, gate_scale)
    return [("fwd", *rec) for rec in fwd] + [("bwd", *rec) for rec in bwd]


def _specialize(value):
    """(type, attribute) of one launch argument, by the JIT's own specialisation."""
    from triton.backends.nvidia.compiler import CUDABackend

    try:
        from triton._C.libtriton import native_specialize_impl
    except ImportError:  # Triton 3.6 and older: the Python twin
        from triton.runtime.jit import specialize_impl as native_specialize_impl
    return native_specialize_impl(CUDABackend, value, False, True, True)[:2]


def compile_jobs(records, dtype_name: str, shape: str, archs) -> tuple[list[dict], list[dict]]:
    """One job per (kernel, specialisation, config, arch), duplicates (same kernel compiled the same way) merged; and
    one entry per recorded launch: its phase, kernel, and per config the job key, the grid and the argument values."""
    import triton

    jobs, seen, launches = [], set(), []
    for phase, kernel, grid, args, meta in records:
        autotuned = isinstance(kernel, triton.runtime.Autotuner)
        fn = kernel.fn if autotuned else kernel
        configs = kernel.configs if autotuned else [None]
        launch = {"phase": phase, "shape": shape, "dtype": dtype_name, "kernel": fn.__name__, "configs": []}
        launches.append(launch)
        for config in configs:
            opts = dict(meta)
            if config is not None:
                opts.update(config.kwargs)
                opts["num_warps"], opts["num_stages"] = config.num_warps, config.num_stages
            num_warps = opts.pop("num_warps", 4)
            num_stages = opts.pop("num_stages", 3)
            names = fn.arg_names
            values = dict(zip(names, args))
            values.update(opts)
            signature, constexprs, attrs = {}, {}, {}
            for i, name in enumerate(names):
                if fn.params[i].is_constexpr:
                    signature[name] = "constexpr"
                    constexprs[name] = values[name]
                    continue
                ty, attr = _specialize(values[name])
                if ty == "constexpr":
                    signature[name] = "constexpr"
                    constexprs[name] = attr
                else:
                    signature[name] = ty
                    if attr:
                        attrs[(i,)] = [["tt.divisibility", 16]]
            key = (fn.__name__, json.dumps(signature, sort_keys=True), json.dumps(constexprs, sort_keys=True,
                                                                                   default=str),
                   str(sorted(attrs)), num_warps, num_stages)
            programs = grid(values) if callable(grid) else grid
            launch["configs"].append({"key": key, "grid": tuple(programs), "num_warps": num_warps,
                                      "values": {k: v for k, v in values.items() if isinstance(v, (int, float))}})
            if key in seen:
                continue
            seen.add(key)
            shown = {k: v for k, v in constexprs.items() if k.isupper() or k.startswith("BLOCK")}
            config_str = ",".join(f"{k}={v}" for k, v in shown.items()) + f",warps={num_warps},stages={num_stages}"
            src_dtypes = ",".join(v[1:] for v in signature.values() if v.startswith("*"))
            for arch in archs:
                jobs.append({"kind": "triton", "fn": fn, "kernel": fn.__name__, "phase": phase, "shape": shape,
                             "arch": f"sm_{arch}", "cap": arch, "dtype": dtype_name, "config": config_str,
                             "pointer_dtypes": src_dtypes, "signature": signature, "constexprs": constexprs,
                             "attrs": attrs, "num_warps": num_warps, "num_stages": num_stages, "key": key})
    return jobs, launches


# ----------------------------------------------------------------------------------------------------- analysis
def triton_tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found (neither bundled with Triton nor on PATH)")
    return found


PTXAS_RE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_st": re.compile(r"(\d+) bytes spill stores"),
    "spill_ld": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


def parse_ptxas(text: str) -> dict:
    out = {}
    for key, rx in PTXAS_RE.items():
        m = rx.search(text)
        out[key] = int(m.group(1)) if m else None
    return out


RES_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def parse_res_usage(text: str) -> dict:
    """Registers, stack, shared and local bytes of the (first) function of `cuobjdump -res-usage` output."""
    m = RES_USAGE.search(text)
    if not m:
        return {"registers": None, "stack": None, "shared": None, "local": None}
    return dict(zip(("registers", "stack", "shared", "local"), map(int, m.groups())))


SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def _is_fma(op: str) -> bool:
    return op.startswith(("FFMA", "DFMA")) or (op.startswith("HFMA2") and not op.startswith("HFMA2.MMA"))


def _is_cvt(op: str, operands: str) -> bool:
    """An fp16/bf16 -> fp32 conversion: F2F, HADD2.F32 (fp16 -> fp32), PRMT (the compiler's bf16 unpack), or one
    of the two halves of the int32-pair bf16 read (`<< 16`, `& 0xffff0000`)."""
    if op.startswith(("F2F", "HADD2.F32", "PRMT")):
        return True
    if op.startswith(("IMAD.SHL", "IMAD.U32")) and "0x10000" in operands:
        return True
    if op.startswith("SHF.L") and re.search(r",\s*0x10\s*,", operands + ","):
        return True
    return op.startswith("LOP3") and "0xffff0000" in operands


def _lsu_cycles(op: str) -> int:
    """SM cycles of one warp's global or shared load/store: one 32-bit word per lane per cycle."""
    if not op.startswith(("LDG", "STG", "LDS", "STS", "LD.", "ST.")):
        return 0
    return 4 if ".128" in op else 2 if ".64" in op else 1


def _is_global_load(op: str) -> bool:
    return op.startswith(("LDG", "LD."))


def sass_instructions(sass: str) -> list[tuple[int, str, str]]:
    return [(int(m.group(1), 16), m.group(2), m.group(3)) for m in SASS_LINE.finditer(sass)]


def loops_of(instrs) -> list[tuple[int, int]]:
    """(first, last address) of every loop: a backward branch and its target."""
    loops = []
    for addr, op, operands in instrs:
        if op.split(".")[0] not in ("BRA", "JMP"):
            continue
        target = re.search(r"0x([0-9a-f]+)", operands)
        if target and int(target.group(1), 16) < addr:
            loops.append((int(target.group(1), 16), addr))
    return loops


def innermost_loops(instrs) -> list[tuple[int, int]]:
    """The loops (`loops_of`) that hold no other loop."""
    loops = loops_of(instrs)
    return [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]


def loop_barriers(instrs) -> int:
    """Barrier instructions (BAR.*) inside any loop."""
    loops = loops_of(instrs)
    return sum(op.startswith("BAR") and any(a <= addr <= b for a, b in loops) for addr, op, _ in instrs)


def body_stats(body) -> dict:
    """Counts of a list of (addr, op, operands): instructions, FMAs, conversions, global loads in 128-bit units,
    LSU cycles per warp."""
    return {"instr": len(body), "fma": sum(_is_fma(op) for _, op, _ in body),
            "cvt": sum(_is_cvt(op, operands) for _, op, operands in body),
            "ldg128": sum(_lsu_cycles(op) for _, op, _ in body if _is_global_load(op)) / 4,
            "lsu_cycles": sum(_lsu_cycles(op) for _, op, _ in body)}


def sass_profile(sass: str) -> dict:
    """The kernel's whole SASS, its hot loop (the innermost loop with the most FMAs; the whole kernel when its FMAs
    are unrolled straight-line code; None without FMAs) and its other innermost loops, as `body_stats`."""
    instrs = sass_instructions(sass)
    bodies = [[ins for ins in instrs if start <= ins[0] <= end] for start, end in innermost_loops(instrs)]
    with_fma = [b for b in bodies if any(_is_fma(op) for _, op, _ in b)]
    hot = max(with_fma, key=lambda b: sum(_is_fma(op) for _, op, _ in b)) if with_fma else None
    if hot is None and any(_is_fma(op) for _, op, _ in instrs):
        hot = instrs
    return {"total": body_stats(instrs), "hot": body_stats(hot) if hot else None,
            "hot_is_loop": hot is not None and hot is not instrs,
            "others": [body_stats(b) for b in bodies if b is not hot]}


def hot_loop_ratios(profile: dict) -> dict:
    hot = profile["hot"]
    if not hot or not hot["fma"]:
        return {"fma_share": None, "cvt_per_fma": None, "ldg128_per_fma": None}
    return {"fma_share": round(hot["fma"] / hot["instr"], 3), "cvt_per_fma": round(hot["cvt"] / hot["fma"], 3),
            "ldg128_per_fma": round(hot["ldg128"] / hot["fma"], 3)}


def innermost_loop_fma_share(sass: str) -> float | None:
    """FMA share of the hot loop (`sass_profile`); None for a kernel without FMAs."""
    return hot_loop_ratios(sass_profile(sass))["fma_share"]


def sass_of(cubin_path: str) -> str:
    return subprocess.run([triton_tool("cuobjdump"), "-sass", cubin_path], capture_output=True, text=True,
                          check=True).stdout


def spill_bytes(instrs) -> tuple[int, int]:
    """(store, load) bytes of the local-memory instructions (register spills: Triton kernels have no local arrays)."""
    def width(op):
        return 16 if ".128" in op else 8 if ".64" in op else 4
    return (sum(width(op) for _, op, _ in instrs if op.startswith("STL")),
            sum(width(op) for _, op, _ in instrs if op.startswith("LDL")))


def compile_triton(job: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    rec = {k: job[k] for k in ("kernel", "phase", "shape", "arch", "dtype", "config", "pointer_dtypes")}
    rec.update(compiled=False, error=None, registers=None, spill_bytes=None, shared_bytes=None, compile_s=None,
               fma_share=None, cvt_per_fma=None, ldg128_per_fma=None, ld_global=None, profile=None,
               loop_barriers=None,
               key=list(job["key"]))
    fn = job["fn"]
    constexprs = {(fn.arg_names.index(k),): v for k, v in job["constexprs"].items()}
    t0 = time.perf_counter()
    try:
        src = ASTSource(fn, job["signature"], constexprs, job["attrs"])
        ck = triton.compile(src, target=GPUTarget("cuda", job["cap"], 32),
                            options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]})
    except Exception as e:  # a compile error is a result of the report, not a crash of it
        rec["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:400]
        rec["compile_s"] = round(time.perf_counter() - t0, 2)
        return rec
    rec["compile_s"] = round(time.perf_counter() - t0, 2)
    rec["compiled"] = True
    rec["shared_bytes"] = int(getattr(ck.metadata, "shared", 0))
    rec["ld_global"] = len(re.findall(r"\bld\.global", ck.asm["ptx"]))
    with tempfile.TemporaryDirectory() as tmp:
        # The cubin Triton built (its own ptxas and options), read back: what the GPU would run.
        cubin_path = os.path.join(tmp, "k.cubin")
        Path(cubin_path).write_bytes(ck.asm["cubin"])
        usage = parse_res_usage(subprocess.run([triton_tool("cuobjdump"), "-res-usage", cubin_path],
                                               capture_output=True, text=True).stdout)
        sass = sass_of(cubin_path)
    st, ld = spill_bytes(sass_instructions(sass))
    profile = sass_profile(sass)
    rec.update(hot_loop_ratios(profile))
    rec["profile"] = profile
    rec["loop_barriers"] = loop_barriers(sass_instructions(sass))
    rec["registers"] = usage["registers"]
    rec["spill_bytes"] = st + ld
    rec["stack_bytes"] = usage["stack"]
    if usage["registers"] is None:
        rec["compiled"] = False
        rec["error"] = "cuobjdump -res-usage: no resource usage for the kernel"
    return rec


# ----------------------------------------------------------------------------------------------------- estimates
# H100 SXM: SMs, warp schedulers per SM, boost clock, registers per SM, resident warps and CTAs per SM, shared bytes.
H100 = {"sms": 132, "schedulers": 4, "clock_hz": 1.755e9, "regs": 65536, "warps": 64, "ctas": 32, "shared": 232448}


def loop_work(kernel: str, v: dict, grid: tuple) -> tuple[int, int]:
    """(lane-FMAs the launch executes in the kernel's hot loop, passes of each of its other innermost loops per
    warp), from the kernel's source: the hot-loop passes follow from the FMA count whatever ptxas unrolled."""
    programs = grid[0] * grid[1] * (grid[2] if len(grid) > 2 else 1)
    if kernel in ("_conv_gate_kernel", "_gate_bwd_kernel", "_conv_input_bwd_kernel"):
        lanes = programs * v["BLOCK_H"] * v["BLOCK_W"] * v["BLOCK_C"] * 2 * v["K"] ** 2
        trips = v["span_h"] * v["span_w"] if kernel == "_gate_bwd_kernel" and v["UPSAMPLED"] else 1
        return lanes, trips
    if kernel == "_weight_grad_kernel":
        images = grid[0] // v["splits"]
        taps = v["T1"] + v["T2"] + v["T3"] + v["T4"]
        return grid[1] * images * v["map_h"] * v["map_w"] * taps * v["BLOCK_C"], 1
    if kernel == "_pool_kernel":
        return 0, v["max_wh"] * v["max_ww"]
    if kernel == "_sum_partial_kernel":
        return 0, -(-v["pix_per_split"] // v["BLOCK_P"])
    return 0, 1


def occupancy(registers: int, warps: int, shared: int) -> int:
    """Resident CTAs per SM (registers allocated in 8-register steps per thread)."""
    per_cta = -(-registers // 8) * 8 * 32 * warps
    ctas = min(H100["ctas"], H100["warps"] // warps, H100["regs"] // per_cta)
    return min(ctas, H100["shared"] // shared) if shared else ctas


def estimate(kernel: str, cfg: dict, rec: dict) -> dict:
    """Issue-bound and L1-bound time of one launch (see the module docstring)."""
    grid, warps = cfg["grid"], cfg["num_warps"]
    programs = grid[0] * grid[1] * (grid[2] if len(grid) > 2 else 1)
    prof = rec["profile"]
    lanes, trips = loop_work(kernel, cfg["values"], grid)
    hot = prof["hot"] if prof["hot_is_loop"] else None
    loops_instr = (hot["instr"] if hot else 0) + sum(o["instr"] for o in prof["others"])
    loops_cyc = (hot["lsu_cycles"] if hot else 0) + sum(o["lsu_cycles"] for o in prof["others"])
    passes = lanes / (32 * hot["fma"]) if hot and hot["fma"] else 0.0
    warps_total = programs * warps
    once = warps_total * (prof["total"]["instr"] - loops_instr + sum(o["instr"] for o in prof["others"]) * trips)
    instr = passes * (hot["instr"] if hot else 0) + once
    cyc = passes * (hot["lsu_cycles"] if hot else 0) + warps_total * (
        prof["total"]["lsu_cycles"] - loops_cyc + sum(o["lsu_cycles"] for o in prof["others"]) * trips)
    ctas = occupancy(rec["registers"], warps, rec["shared_bytes"] or 0)
    # A launch too small to fill the GPU runs on fewer schedulers / SMs.
    schedulers = min(H100["sms"] * H100["schedulers"], warps_total)
    sms = min(H100["sms"], programs)
    issue_us = instr / (schedulers * H100["clock_hz"]) * 1e6
    l1_us = cyc / (sms * H100["clock_hz"]) * 1e6
    return {"programs": programs, "warps": warps, "ctas_per_sm": ctas,
            "waves": round(programs / (H100["sms"] * max(ctas, 1)), 2), "warp_instr": int(instr),
            "issue_us": round(issue_us, 2), "l1_us": round(l1_us, 2), "est_us": round(max(issue_us, l1_us), 2)}


def launch_estimates(launches: list[dict], records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per launch and arch: the estimate of its (best) config; per shape, dtype and arch: forward and
    forward+backward sums."""
    by_key = {(json.dumps(r["key"]), r["arch"]): r for r in records if r.get("key") and r["compiled"]}
    archs = sorted({r["arch"] for r in records if r.get("key")})
    rows, totals = [], {}
    for ln in launches:
        for arch in archs:
            best = None
            for cfg in ln["configs"]:
                rec = by_key.get((json.dumps(list(cfg["key"])), arch))
                if rec is None:
                    continue
                est = estimate(ln["kernel"], cfg, rec)
                est.update({k: rec[k] for k in ("config", "registers", "fma_share", "cvt_per_fma", "ldg128_per_fma",
                                                "loop_barriers")})
                if best is None or est["est_us"] < best["est_us"]:
                    best = est
            if best is None:
                continue
            rows.append({"phase": ln["phase"], "shape": ln["shape"], "dtype": ln["dtype"], "arch": arch,
                         "kernel": ln["kernel"], **best})
            t = totals.setdefault((ln["shape"], ln["dtype"], arch), {"fwd_us": 0.0, "fwd_bwd_us": 0.0})
            t["fwd_bwd_us"] += best["est_us"]
            if ln["phase"] == "fwd":
                t["fwd_us"] += best["est_us"]
    return rows, [{"shape": s, "dtype": d, "arch": a, "fwd_us": round(t["fwd_us"], 1),
                   "fwd_bwd_us": round(t["fwd_bwd_us"], 1)} for (s, d, a), t in totals.items()]


# ----------------------------------------------------------------------------------------------------- CUDA (nvcc)
CUDA_DTYPES = (("__half", "fp16"), ("__nv_bfloat16", "bf16"), ("c10::Half", "fp16"), ("c10::BFloat16", "bf16"),
               ("float", "fp32"), ("double", "fp64"))


def nvcc_path() -> str | None:
    return os.environ.get("NVCC") or shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def demangle(names: list[str]) -> list[str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return names
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def cuda_dtype(pretty: str) -> str | None:
    for token, name in CUDA_DTYPES:
        if token in pretty:
            return name
    return None


def short_cuda_name(pretty: str) -> str:
    """"void ns::(anonymous namespace)::name<T, ns::Op<U> >(args)" -> "name<T, ns::Op<U> >": the namespace is cut
    before the first '<' or '(' (a '::' inside the template arguments is not the kernel's namespace)."""
    text = re.sub(r"^void\s+", "", re.sub(r"\(anonymous namespace\)::", "", pretty))
    cut = min([i for i in (text.find("<"), text.find("(")) if i >= 0] or [len(text)])
    name = text[:cut].split("::")[-1]
    if text[cut:cut + 1] != "<":
        return name
    depth = 0
    for i in range(cut, len(text)):
        depth += {"<": 1, ">": -1}.get(text[i], 0)
        if depth == 0:
            return name + text[cut:i + 1]
    return name + text[cut:]


def compile_cuda_file(path: str, arch: int) -> list[dict]:
    nvcc = nvcc_path()
    base = {"phase": "cuda", "shape": None, "arch": f"sm_{arch}", "config": None, "pointer_dtypes": None}
    with tempfile.TemporaryDirectory() as tmp:
        obj = os.path.join(tmp, "k.o")
        t0 = time.perf_counter()
        res = subprocess.run([nvcc, "-std=c++17", "-O3", f"-I{ROOT / 'csrc' / 'include'}", "-gencode",
                              f"arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v", "-c", path, "-o", obj],
                             capture_output=True, text=True)
        secs = round(time.perf_counter() - t0, 2)
        if res.returncode != 0:
            return [{**base, "kernel": os.path.basename(path), "dtype": None, "compiled": False,
                     "error": (res.stderr.strip().splitlines() or ["nvcc failed"])[-1][:400], "registers": None,
                     "spill_bytes": None, "shared_bytes": None, "compile_s": secs, "fma_share": None}]
        sass = subprocess.run([triton_tool("cuobjdump"), "-sass", obj], capture_output=True, text=True).stdout
    # ptxas -v prints per entry: "Compiling entry function 'NAME' for 'sm_XX'", then usage lines.
    blocks = re.split(r"ptxas info\s+: Compiling entry function '", res.stderr)[1:]
    mangled, infos = [], []
    for blk in blocks:
        name = blk.split("'", 1)[0]
        mangled.append(name)
        smem = re.search(r"(\d+) bytes smem", blk)
        infos.append((parse_ptxas(blk), int(smem.group(1)) if smem else 0))
    sass_funcs = dict(re.findall(r"Function : (\S+)\n(.*?)(?=\n\s*Function : |\Z)", sass, flags=re.S))
    records = []
    for name, pretty, (info, smem) in zip(mangled, demangle(mangled), infos):
        records.append({**base, "kernel": f"{os.path.basename(path)}:{short_cuda_name(pretty)}",
                        "dtype": cuda_dtype(pretty), "compiled": True, "error": None, "registers": info["registers"],
                        "spill_bytes": (info["spill_st"] or 0) + (info["spill_ld"] or 0), "shared_bytes": smem,
                        "compile_s": secs, "fma_share": innermost_loop_fma_share(sass_funcs.get(name, ""))})
    return records


# ----------------------------------------------------------------------------------------------------- driver
_JOBS: list[dict] = []  # set before the worker processes fork; they receive indices (kernels do not pickle)


def _run_job(index: int) -> dict:
    return compile_triton(_JOBS[index])


KERNEL_COLUMNS = ("kernel", "phase", "shape", "arch", "dtype", "config", "pointer_dtypes", "registers", "spill_bytes",
                  "shared_bytes", "fma_share", "cvt_per_fma", "ldg128_per_fma", "loop_barriers", "ld_global",
                  "compile_s", "error")
LAUNCH_COLUMNS = ("phase", "shape", "dtype", "arch", "kernel", "config", "programs", "registers", "ctas_per_sm",
                  "waves", "fma_share", "cvt_per_fma", "ldg128_per_fma", "loop_barriers", "issue_us", "l1_us", "est_us")


def print_table(rows: list[dict], cols) -> None:
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")


def print_estimates(rows: list[dict], totals: list[dict]) -> None:
    print(f"\nESTIMATES per launch (static, not measured): H100 SXM, {H100['sms']} SMs x {H100['schedulers']} "
          f"schedulers x {H100['clock_hz'] / 1e9:.3f} GHz; issue_us = dynamic warp instructions / issue rate, "
          "l1_us = global/shared load+store cycles (128-bit warp access = 4 SM cycles), est_us = the larger\n")
    print_table(rows, LAUNCH_COLUMNS)
    print("\nESTIMATED block sums (Triton kernels only):\n")
    print_table(totals, ("shape", "dtype", "arch", "fwd_us", "fwd_bwd_us"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="80,90", help="comma-separated compute capabilities (default 80,90)")
    ap.add_argument("--dtypes", default="fp16,bf16,fp32", help="comma-separated of fp16,bf16,fp32")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated of {','.join(SHAPES)}")
    ap.add_argument("--json", metavar="FILE", help="write the records as a JSON list to FILE")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles (default: all cores)")
    ap.add_argument("--no-cuda", action="store_true", help="skip the csrc/cuda kernels (nvcc)")
    ap.add_argument("--estimates", action="store_true",
                    help="also print the per-launch time estimates and the block sums (always in --json)")
    args = ap.parse_args(argv)
    try:
        archs = [int(a) for a in args.arch.split(",") if a]
    except ValueError:
        error(f"--arch: expected comma-separated integers such as 80,90, got {args.arch!r}")
    if not archs or any(a < 70 for a in archs):
        error(f"--arch: expected compute capabilities >= 70, got {args.arch!r}")
    dtypes = [d for d in args.dtypes.split(",") if d]
    if not dtypes or any(d not in DTYPES for d in dtypes):
        error(f"--dtypes: expected a comma-separated subset of {','.join(DTYPES)}, got {args.dtypes!r}")
    shapes = [s for s in args.shapes.split(",") if s]
    if not shapes or any(s not in SHAPES for s in shapes):
        error(f"--shapes: expected a comma-separated subset of {','.join(SHAPES)}, got {args.shapes!r}")
    if args.jobs < 1:
        error(f"--jobs: expected >= 1, got {args.jobs}")
    if args.json and Path(args.json).is_dir():
        error(f"--json: {args.json} is a directory, expected a file path")
    os.environ.pop("TRITON_INTERPRET", None)  # compile for real; the recorder needs no device
    # A fresh Triton cache: compile times are measured, not read back from an earlier run.
    cache = tempfile.TemporaryDirectory(prefix="aot_report_cache_")
    os.environ["TRITON_CACHE_DIR"] = cache.name
    try:
        import triton
    except ImportError as e:
        error(f"triton is not installed ({e})")

    start = time.perf_counter()
    jobs, launches = [], []
    for shape in shapes:
        for dt in dtypes:
            shape_jobs, shape_launches = compile_jobs(record_block_launches(shape, dt), dt, shape, archs)
            jobs += shape_jobs
            launches += shape_launches
    print(f"aot_report: triton {triton.__version__}, {len(jobs)} Triton compiles ({','.join(shapes)}; "
          f"{','.join(dtypes)}; sm_{',sm_'.join(map(str, archs))}) on {args.jobs} processes", file=sys.stderr)
    records = []
    _JOBS[:] = jobs
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        for i, rec in enumerate(pool.map(_run_job, range(len(jobs))), 1):
            records.append(rec)
            status = "ok" if rec["compiled"] else f"ERROR {rec['error']}"
            print(f"  [{i}/{len(jobs)}] {rec['kernel']} {rec['arch']} {rec['dtype']} {rec['config']}: {status} "
                  f"regs={rec['registers']} spill={rec['spill_bytes']} fma={rec['fma_share']} "
                  f"{rec['compile_s']}s", file=sys.stderr)
    if not args.no_cuda:
        if nvcc_path() is None:
            print("aot_report: nvcc not found: csrc/cuda kernels not compiled (use --no-cuda to skip)",
                  file=sys.stderr)
            records.append({"kernel": "csrc/cuda", "phase": "cuda", "arch": None, "dtype": None, "config": None,
                            "compiled": False, "error": "nvcc not found", "registers": None, "spill_bytes": None,
                            "shared_bytes": None, "compile_s": None, "fma_share": None})
        else:
            for cu in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
                for arch in archs:
                    records += compile_cuda_file(str(cu), arch)
    elapsed = time.perf_counter() - start
    bad = [r for r in records if not r["compiled"] or (r["spill_bytes"] or 0) > 0]
    rows, totals = launch_estimates(launches, records)
    if args.json:
        payload = {"kernels": records, "launch_estimates": rows, "block_estimates": totals, "gpu_model": H100}
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(args.json)
    else:
        print_table(records, KERNEL_COLUMNS)
    if args.estimates:
        print_estimates(rows, totals)
    print(f"aot_report: {len(records)} kernels in {elapsed:.0f} s; {len(bad)} with a compile error or spills",
          file=sys.stderr)
    for r in bad:
        print(f"  FAIL {r['kernel']} {r['arch']} {r['dtype']} {r['config']}: "
              f"{r['error'] or str(r['spill_bytes']) + ' spill bytes'}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
