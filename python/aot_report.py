"""Ahead-of-time compile report of every GPU kernel the package launches, without a GPU.

Triton: the block's pyramid forward/backward and pooled-bias mean run at each shape and dtype with their launches
*recorded* (deltaconv_kernels.triton.launch.record_launches: CPU tensors, nothing runs); each recorded launch,
with every autotune config, is compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`
exactly as the JIT would specialise it (the JIT's own argument specialisation: dtypes, 16-divisibility, ints == 1).
CUDA: every csrc/cuda/*.cu through `nvcc -Xptxas -v` per arch.
Per kernel: registers, spill bytes (ptxas -v), shared memory, compile time, and `fma_share`: the FFMA + HFMA2 share
(DFMA for fp64) of the SASS instructions of the kernel's hot loop: the innermost loop (a backward branch and its
target, holding no other loop) with the most FMAs, or the whole kernel when its FMAs are unrolled straight-line code;
null for a kernel without FMAs. HFMA2.MMA is not counted: ptxas uses it as a register move.

    python python/aot_report.py                         # table, sm_80 + sm_90, fp16/bf16/fp32, both shapes
    python python/aot_report.py --dtypes fp16 --json report.json
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


def compile_jobs(records, dtype_name: str, shape: str, archs) -> list[dict]:
    """One job per (kernel, specialisation, config, arch); duplicates (same kernel compiled the same way) merged."""
    import triton

    jobs, seen = [], set()
    for phase, kernel, _grid, args, meta in records:
        autotuned = isinstance(kernel, triton.runtime.Autotuner)
        fn = kernel.fn if autotuned else kernel
        configs = kernel.configs if autotuned else [None]
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
                             "attrs": attrs, "num_warps": num_warps, "num_stages": num_stages})
    return jobs


# ----------------------------------------------------------------------------------------------------- analysis
def triton_tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found (neither bundled with Triton nor on PATH)")
    return found


def ptxas_for(arch: int) -> str:
    """The ptxas Triton itself uses for `arch` (Triton 3.9 bundles two: one per arch range)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
    except ImportError:
        return triton_tool("ptxas")
    try:
        return get_ptxas(arch).path
    except TypeError:  # older Triton: one ptxas for every arch
        return get_ptxas().path


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


SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def _is_fma(op: str) -> bool:
    return op.startswith(("FFMA", "DFMA")) or (op.startswith("HFMA2") and not op.startswith("HFMA2.MMA"))


def innermost_loop_fma_share(sass: str) -> float | None:
    """FMA share of the hot loop: among the innermost loops (a backward branch and its target, holding no other loop)
    that contain FMAs, the one with the most; a kernel whose FMAs are all unrolled straight-line code is its own hot
    loop; None for a kernel without FMAs."""
    instrs = [(int(m.group(1), 16), m.group(2)) for m in SASS_LINE.finditer(sass)]
    loops = []
    for m in SASS_LINE.finditer(sass):
        if m.group(2).split(".")[0] not in ("BRA", "JMP"):
            continue
        target = re.search(r"0x([0-9a-f]+)", m.group(3))
        if target and int(target.group(1), 16) < int(m.group(1), 16):
            loops.append((int(target.group(1), 16), int(m.group(1), 16)))
    innermost = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    bodies = [[op for addr, op in instrs if start <= addr <= end] for start, end in innermost]
    bodies = [b for b in bodies if any(_is_fma(op) for op in b)]
    if not bodies:
        bodies = [[op for _, op in instrs]]
    body = max(bodies, key=lambda b: sum(map(_is_fma, b)))
    fma = sum(map(_is_fma, body))
    return round(fma / len(body), 3) if fma else None


def sass_of(cubin_path: str) -> str:
    return subprocess.run([triton_tool("cuobjdump"), "-sass", cubin_path], capture_output=True, text=True,
                          check=True).stdout


def compile_triton(job: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    rec = {k: job[k] for k in ("kernel", "phase", "shape", "arch", "dtype", "config", "pointer_dtypes")}
    rec.update(compiled=False, error=None, registers=None, spill_bytes=None, shared_bytes=None, compile_s=None,
               fma_share=None, ld_global=None)
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
    ptx = ck.asm["ptx"]
    rec["ld_global"] = len(re.findall(r"\bld\.global", ptx))
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path = os.path.join(tmp, "k.ptx")
        Path(ptx_path).write_text(ptx)
        # The arch Triton compiled for (sm_90a on Hopper), from the PTX itself.
        target = re.search(r"^\.target\s+(sm_\w+)", ptx, flags=re.M)
        res = subprocess.run([ptxas_for(job["cap"]), "-arch=" + (target.group(1) if target else f"sm_{job['cap']}"),
                              "-v", ptx_path, "-o",
                              os.path.join(tmp, "ptxas.cubin")], capture_output=True, text=True)
        info = parse_ptxas(res.stdout + res.stderr)
        if res.returncode != 0:
            rec["compiled"] = False
            rec["error"] = f"ptxas -v failed: {(res.stderr.strip().splitlines() or [''])[-1][:300]}"
        cubin_path = os.path.join(tmp, "k.cubin")
        Path(cubin_path).write_bytes(ck.asm["cubin"])
        rec["fma_share"] = innermost_loop_fma_share(sass_of(cubin_path))
    rec["registers"] = info["registers"]
    rec["spill_bytes"] = (info["spill_st"] or 0) + (info["spill_ld"] or 0)
    rec["stack_bytes"] = info["stack"]
    return rec


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
        # "void ns::(anonymous namespace)::name<T, ...>(args)" -> "name<T, ...>"
        short = re.sub(r"\(anonymous namespace\)::", "", pretty)
        short = re.sub(r"^void\s+", "", short.split("(")[0]).split("::")[-1]
        records.append({**base, "kernel": f"{os.path.basename(path)}:{short}", "dtype": cuda_dtype(pretty),
                        "compiled": True, "error": None, "registers": info["registers"],
                        "spill_bytes": (info["spill_st"] or 0) + (info["spill_ld"] or 0), "shared_bytes": smem,
                        "compile_s": secs, "fma_share": innermost_loop_fma_share(sass_funcs.get(name, ""))})
    return records


# ----------------------------------------------------------------------------------------------------- driver
_JOBS: list[dict] = []  # set before the worker processes fork; they receive indices (kernels do not pickle)


def _run_job(index: int) -> dict:
    return compile_triton(_JOBS[index])


def print_table(records: list[dict]) -> None:
    cols = ("kernel", "phase", "shape", "arch", "dtype", "config", "pointer_dtypes", "registers", "spill_bytes",
            "shared_bytes", "fma_share", "ld_global", "compile_s", "error")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in records:
        print("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="80,90", help="comma-separated compute capabilities (default 80,90)")
    ap.add_argument("--dtypes", default="fp16,bf16,fp32", help="comma-separated of fp16,bf16,fp32")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated of {','.join(SHAPES)}")
    ap.add_argument("--json", metavar="FILE", help="write the records as a JSON list to FILE")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles (default: all cores)")
    ap.add_argument("--no-cuda", action="store_true", help="skip the csrc/cuda kernels (nvcc)")
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
    jobs = []
    for shape in shapes:
        for dt in dtypes:
            jobs += compile_jobs(record_block_launches(shape, dt), dt, shape, archs)
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
    if args.json:
        payload = [{k: v for k, v in r.items()} for r in records]
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(args.json)
    else:
        print_table(records)
    print(f"aot_report: {len(records)} kernels in {elapsed:.0f} s; {len(bad)} with a compile error or spills",
          file=sys.stderr)
    for r in bad:
        print(f"  FAIL {r['kernel']} {r['arch']} {r['dtype']} {r['config']}: "
              f"{r['error'] or str(r['spill_bytes']) + ' spill bytes'}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
