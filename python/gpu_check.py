"""One prepared command for a GPU machine: build `_C`, check the GPU backends against the reference, time the block.

    python python/gpu_check.py            # on the lent GPU (writes under $OUT, or --out DIR)
    python python/gpu_check.py --smoke    # the same code path on CPU with tiny shapes (CI runs this)

1. build: `python setup.py build_ext --inplace` for this GPU's arch only (MAX_JOBS=16 unless set), unless --no-build;
2. conformance: the `triton` and `cuda` backends against the reference (forward, every gradient, fp16/bf16/fp32,
   odd sizes, thin maps, strided u and grad_output, whole blocks, bitwise-repeatable backward, a 16K map);
3. timings (fp16, CUDA events after a warm-up, median of many): the block on triton and cuda, the block composed of
   stock torch ops eagerly and under torch.compile, and the SDPA self-attention layer it replaces (FlashAttention on
   Hopper), forward and forward+backward, each with and without a CUDA graph, at PixArt-1024 B=2 and the SD1.5
   attention levels.
Every line is printed as it happens, and `gpu_check.json` and `RESULTS_gpu.md` (a section for benchmarks/RESULTS.md)
are rewritten atomically under the output folder after every check and every timing row: a run killed at its
timeout still leaves everything done so far. One time budget covers the whole run (`--budget`, default 300 s):
conformance gets at most CONFORMANCE_SHARE of it, timings run in order of importance (PixArt-1024 fp16, the triton
block against the SDPA layer, first), and a row is not started when it could not finish before the deadline.
`--quick` (about 2 minutes) is the second try: the core conformance and the headline rows only. Needs torch and
triton only (no diffusers, no hypothesis); a failed check is reported, not raised, so one call gives every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

# (name, B, H, W, C, K, gate, heads of the SDPA layer it replaces)
SHAPES = (
    ("PixArt-1024", 2, 64, 64, 1152, 13, "sigmoid", 16),
    ("SD1.5 64x64", 2, 64, 64, 320, 7, "scaled", 5),
    ("SD1.5 32x32", 2, 32, 32, 640, 9, "scaled", 10),
    ("SD1.5 16x16", 2, 16, 16, 1280, 5, "scaled", 20),
)
SMOKE_SHAPES = (("smoke", 1, 6, 5, 16, 3, "sigmoid", 2),)
# Conformance cases (b, h, w, ci, k, scales, gate): odd, non-power-of-two, thin, B=1, K larger than the map.
CASES = (
    (1, 37, 29, 40, 3, (1.0, 0.5), "scaled"),
    (2, 33, 45, 72, 13, (1.0, 0.5, 0.25), "sigmoid"),
    (1, 64, 64, 96, 13, (1.0, 0.5), "sigmoid"),
    (2, 17, 23, 10, 31, (1.0, 0.5), "scaled"),
    (3, 16, 16, 160, 5, (1.0, 0.5, 0.25), "scaled"),
    (1, 65, 3, 48, 7, (1.0, 0.5), "sigmoid"),
)
SMOKE_CASES = ((1, 5, 7, 6, 3, (1.0, 0.5), "scaled"),)
# The share of the budget conformance may take (the rest is for timings), and what --quick keeps of it.
CONFORMANCE_SHARE = 0.4
QUICK_CASES = CASES[:2]
QUICK_DTYPES = (torch.float16,)
# The headline methods, timed first (and the only ones in --quick) at the first shape.
HEADLINE = ("block triton", "SDPA layer")
# A row is started only when elapsed + ROW_MARGIN x the last row's duration stays within the budget; a
# torch.compile row, whose first call compiles, needs at least COMPILE_SECONDS left.
ROW_MARGIN = 2.0
COMPILE_SECONDS = 90.0


class Report:
    """The run's report: every line printed (flushed) as it happens, and the JSON and markdown files rewritten
    atomically after every step, so that a killed run still leaves its figures."""

    def __init__(self, out: Path, data: dict, command: str):
        from deltaconv_kernels.fileio import atomic_write

        self._atomic_write = atomic_write
        self.out, self.data, self.command, self.log = out, data, command, []
        self.start = time.perf_counter()

    def say(self, line: str) -> None:
        self.log.append(line)
        print(line, flush=True)

    def save(self) -> None:
        self.data["seconds"] = round(time.perf_counter() - self.start, 1)
        self.data["log"] = self.log
        text = json.dumps(self.data, indent=1).encode()
        self._atomic_write(self.out / "gpu_check.json", lambda f: f.write(text))
        md = "\n".join(self.markdown()).encode()
        self._atomic_write(self.out / "RESULTS_gpu.md", lambda f: f.write(md))

    def markdown(self) -> list:
        d = self.data
        md = [f"### GPU check on {d['device']} ({time.strftime('%Y-%m-%d')})", "",
              f"`{self.command}`, torch {d['torch']} (CUDA {d['cuda']}), triton {d['triton']}, "
              f"Python {d['python']}; {d['seconds']} s in all{' (not finished)' if not d.get('finished') else ''}. "
              "Medians of CUDA-event timings in microseconds, fp16, after a warm-up.", ""]
        build = d.get("build")
        if build and not build["ok"]:
            md += ["Build FAILED:", "", "```", *build.get("errors", []), "```", ""]
        conf = [r for r in d.get("conformance") or [] if r["ok"] is not None]
        left_out = len(d.get("conformance") or []) - len(conf)
        md.append(f"Conformance: {sum(r['ok'] for r in conf)}/{len(conf)} checks passed against the reference"
                  + (f" ({left_out} skipped for the time budget)." if left_out else "."))
        md += [f"- FAIL {r['check']}: {r.get('error')}" for r in conf if not r["ok"]]
        rows = d.get("timings") or []
        md += ["", table(rows) if rows else "(no timings)", ""]
        skipped = sum(map(was_skipped, rows))
        if skipped:
            md += [f"{skipped} timing rows skipped for the time budget.", ""]
        return md


SKIPPED = "skipped: "


def was_skipped(entry: dict) -> bool:
    """A check or timing row left out for the time budget (its error says so)."""
    return (entry.get("error") or "").startswith(SKIPPED)


def no_time_for(seconds: float, deadline: float) -> bool:
    """Whether work expected to take `seconds` would end past the deadline."""
    return time.perf_counter() + seconds > deadline


class ComposedTorchBlock(nn.Module):
    """The block from stock torch ops: channels-last cuDNN depthwise conv, adaptive_avg_pool2d, interpolate."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from deltaconv_kernels.geometry import pooled_size

        blk = self.block
        b, h, w, c = x.shape
        u = blk.proj_in(x).permute(0, 3, 1, 2)  # NCHW view of channels-last memory
        outs = []
        for stage, s in zip(blk.stages, blk.scales):
            t = u if s == 1.0 else F.adaptive_avg_pool2d(u, pooled_size(h, w, s))
            wt = stage.weight.permute(2, 0, 1)[:, None]
            d = F.conv2d(t, wt, padding=wt.shape[-1] // 2, groups=t.shape[1])
            a, g = d.chunk(2, dim=1)
            z = a * torch.sigmoid(g) if blk.gate == "sigmoid" else a * g * blk.gate_scale
            if s != 1.0:
                z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
            outs.append(z)
        concat = torch.cat(outs, dim=1).permute(0, 2, 3, 1)
        y = blk.proj_out(concat)
        return y + blk.pool_proj(x.mean(dim=(1, 2)))[:, None, None, :]


class SDPASelfAttention(nn.Module):
    """QKV and out projections around F.scaled_dot_product_attention (the layer a ΔConvBlock replaces)."""

    def __init__(self, dim: int, heads: int, device, dtype):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, device=device, dtype=dtype)
        self.out = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        q, k, v = self.qkv(x.reshape(b, h * w, c)).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, h * w, c)).view(b, h, w, c)


# ------------------------------------------------------------------------------------------------------------ build
def compiler_errors(output: str, limit: int = 12, context: int = 2) -> list:
    """The compiler's own error lines of a build log (with a little context), not the Python traceback that
    ends it: the first `limit` lines that hold `error:` (g++, nvcc, ninja's FAILED), each with `context` lines."""
    lines = output.splitlines()
    hits = [i for i, line in enumerate(lines)
            if "error:" in line or line.startswith("FAILED:") or " error " in line][:limit]
    picked = sorted({j for i in hits for j in range(max(0, i - context), min(len(lines), i + context + 1))})
    return [lines[j][:400] for j in picked] or lines[-20:]


def build(report: Report, timeout: float) -> dict:
    env = dict(os.environ)
    env.setdefault("MAX_JOBS", "16")
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        env.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    report.say(f"build: python setup.py build_ext --inplace (arch {env.get('TORCH_CUDA_ARCH_LIST')}, "
               f"MAX_JOBS {env['MAX_JOBS']}, at most {timeout:.0f} s)")
    t0 = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=timeout)
        ok, output = res.returncode == 0, res.stdout + res.stderr
    except subprocess.TimeoutExpired as e:
        ok = False
        output = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                         for x in (e.stdout, e.stderr)) + f"\nerror: the build ran past {timeout:.0f} s"
    out = {"ok": ok, "seconds": round(time.perf_counter() - t0, 1), "arch": env.get("TORCH_CUDA_ARCH_LIST"),
           "errors": [] if ok else compiler_errors(output)}
    report.say(f"build: {'ok' if ok else 'FAILED'} in {out['seconds']} s (arch {out['arch']})")
    for line in out["errors"]:
        report.say(f"  {line}")
    return out


# ------------------------------------------------------------------------------------------------------ conformance
def _record(results: list, name: str, fn, *args) -> None:
    t0 = time.perf_counter()
    try:
        fn(*args)
        results.append({"check": name, "ok": True, "seconds": round(time.perf_counter() - t0, 2)})
    except Exception as e:  # every check is reported; one failure does not hide the others
        results.append({"check": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:600],
                        "seconds": round(time.perf_counter() - t0, 2)})


def _repeatable_backward(backend: str, device) -> None:
    from deltaconv_kernels import ops
    from deltaconv_kernels.testing import random_like_grad, random_pyramid_inputs

    g = torch.Generator().manual_seed(7)
    u, weights = random_pyramid_inputs(2, 33, 31, 64, 13, 2, torch.float16, device, g, False)
    out = ops.pyramid(u, weights, (1.0, 0.5), "sigmoid", backend=backend)
    grad = random_like_grad(out, generator=g)
    first = torch.autograd.grad(out, [u, *weights], grad, retain_graph=True)
    second = torch.autograd.grad(out, [u, *weights], grad)
    for a, b in zip(first, second):
        if not torch.equal(a, b):
            raise AssertionError("two backward passes differ bitwise")


def conformance_checks(device, smoke: bool, quick: bool) -> list:
    """[(name, fn, args)] in order of importance: fp16 first (the timed dtype), the 16K map and bitwise repeatability
    after the first dtype of each backend."""
    from deltaconv_kernels.testing import check_block_backend, check_map_16k, check_pyramid_backend

    backends = ["triton", "cuda"] if not smoke else ["triton"]
    cases = SMOKE_CASES if smoke else QUICK_CASES if quick else CASES
    dtypes = QUICK_DTYPES if quick else (torch.float16, torch.bfloat16, torch.float32)
    checks = []
    for backend in backends:
        checks.append((f"{backend}: available", None, (backend,)))
        for n, dtype in enumerate(dtypes):
            # every case with a strided grad_output; the first also with a strided u
            for case, strided_u in [(cases[0], True)] + [(case, False) for case in cases]:
                name = (f"{backend} pyramid {str(dtype)[6:]} b{case[0]} {case[1]}x{case[2]} ci{case[3]} k{case[4]} "
                        f"s{len(case[5])} {case[6]}{' strided-u' if strided_u else ''}")
                checks.append((name, check_pyramid_backend, (backend, case, dtype, device,
                                                             torch.Generator().manual_seed(0), strided_u)))
            for gate in ("scaled", "sigmoid"):
                checks.append((f"{backend} block {str(dtype)[6:]} {gate}", check_block_backend,
                               (backend, dtype, gate, device, torch.Generator().manual_seed(1))))
            if n == 0 and not smoke:
                checks.append((f"{backend} backward bitwise repeatable", _repeatable_backward, (backend, device)))
                if not quick:
                    checks.append((f"{backend} 16K map", check_map_16k, (backend,)))
    return checks


def conformance(device, smoke: bool, quick: bool, deadline: float, report: Report) -> list:
    from deltaconv_kernels import ops

    info = ops.available_backends()
    results = report.data["conformance"] = []
    unavailable = set()
    for name, fn, args in conformance_checks(device, smoke, quick):
        backend = args[0]
        if fn is None:  # the availability line of a backend
            if not info[backend].available:
                unavailable.add(backend)
                results.append({"check": name, "ok": False, "error": info[backend].reason})
                report.say(f"  FAIL {name}: {info[backend].reason}")
                report.save()
            continue
        if backend in unavailable:
            continue
        # (a check is not started when one like the last would run past the deadline)
        last = results[-1].get("seconds", 0.0) if results else 0.0
        if no_time_for(ROW_MARGIN * last, deadline):
            results.append({"check": name, "ok": None, "error": SKIPPED + "conformance share of the budget spent"})
            continue
        _record(results, name, fn, *args)
        r = results[-1]
        report.say(f"  {'ok  ' if r['ok'] else 'FAIL'} {name} ({r['seconds']} s)"
                   + ("" if r["ok"] else f": {r.get('error')}"))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        report.save()
    ran = [r for r in results if r["ok"] is not None]
    skipped = len(results) - len(ran)
    report.say(f"conformance: {sum(r['ok'] for r in ran)}/{len(ran)} passed"
               + (f", {skipped} skipped for the time budget" if skipped else ""))
    return results


# ----------------------------------------------------------------------------------------------------------- timings
def _median_us(step, device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(times)
    torch.cuda.synchronize()
    events = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) * 1e3


def _graphed(step):
    """The step captured once in a CUDA graph (after a warm-up on a side stream); returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _step(module, x, grad, backward: bool):
    params = [p for p in module.parameters() if p.requires_grad]

    def fwd():
        with torch.no_grad():
            module(x)

    def fwd_bwd():
        x.grad = None
        for p in params:
            p.grad = None
        module(x).backward(grad)

    return fwd_bwd if backward else fwd


def timing_rows(device, smoke: bool, quick: bool) -> list:
    """[(shape, method, backward, graph)] in order of importance: the headline (first shape, HEADLINE methods, no
    graph) first, then every shape's remaining rows; --quick keeps the headline only."""
    shapes = SMOKE_SHAPES if smoke else SHAPES
    methods = (["block triton", "block cuda"] if device.type == "cuda" else ["block triton"]) + ["torch eager"]
    methods += ["torch.compile"] if device.type == "cuda" else []  # (on CPU inductor's C++ compile takes minutes)
    methods += ["SDPA layer"]
    graphs = (False, True) if device.type == "cuda" else (False,)
    rows = [(shape, m, bwd, g) for shape in shapes for m in methods for bwd in (False, True) for g in graphs]
    headline = [r for r in rows if r[0] == shapes[0] and r[1] in HEADLINE and not r[3]]
    return headline if quick else headline + [r for r in rows if r not in headline]


def _shape_case(shape, device, dtype) -> dict:
    """The modules and tensors of one shape: the reference block and every method built from its weights."""
    from deltaconv_kernels import DeltaConvBlock, ops

    name, b, h, w, c, k, gate, heads = shape
    info = ops.available_backends()
    torch.manual_seed(0)
    block = DeltaConvBlock(c, kernel_size=k, gate=gate, backend="torch", device=device, dtype=dtype)
    methods = {}
    for backend in ("triton", "cuda"):
        if info[backend].available and (backend == "triton" or device.type == "cuda"):
            fast = DeltaConvBlock(c, kernel_size=k, gate=gate, backend=backend, device=device, dtype=dtype)
            fast.load_state_dict(block.state_dict())
            methods[f"block {backend}"] = fast
    methods["torch eager"] = ComposedTorchBlock(block)
    methods["SDPA layer"] = SDPASelfAttention(c, heads, device, dtype)
    x = torch.randn(b, h, w, c, device=device, dtype=dtype, requires_grad=True)
    return {"methods": methods, "x": x, "grad": torch.randn(b, h, w, c, device=device, dtype=dtype)}


def timings(device, smoke: bool, quick: bool, deadline: float, report: Report) -> list:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    warmup, iters = (10, 50) if device.type == "cuda" else (1, 3)
    rows = report.data["timings"] = []
    cases: dict = {}
    last = 0.0
    for shape, method, backward, graph in timing_rows(device, smoke, quick):
        name, b, h, w, c, k = shape[:6]
        row = {"shape": name, "B": b, "HxW": f"{h}x{w}", "C": c, "K": k, "method": method,
               "pass": "fwd+bwd" if backward else "fwd", "cuda_graph": graph, "us": None, "error": None}
        rows.append(row)
        need = COMPILE_SECONDS if method == "torch.compile" and "compiled" not in cases.get(name, {}) \
            else ROW_MARGIN * last
        if no_time_for(need, deadline):
            left = max(0.0, deadline - time.perf_counter())
            row["error"] = SKIPPED + f"time budget (needs ~{need:.0f} s, {left:.0f} s left)"
            report.save()
            continue
        t0 = time.perf_counter()
        try:
            if name not in cases:
                cases = {name: _shape_case(shape, device, dtype)}  # one shape's tensors live at a time
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            case = cases[name]
            if method == "torch.compile":
                case.setdefault("compiled", torch.compile(case["methods"]["torch eager"], dynamic=False))
                module = case["compiled"]
            elif method in case["methods"]:
                module = case["methods"][method]
            else:
                raise RuntimeError(f"{method} is not available here")
            step = _step(module, case["x"], case["grad"], backward)
            row["us"] = round(_median_us(_graphed(step) if graph else step, device, warmup, iters), 1)
        except Exception as e:  # a method that fails to run is a result too
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        last = time.perf_counter() - t0
        report.say(f"  {name} {row['pass']} {method}{' (graph)' if graph else ''}: "
                   + (f"{row['us']} us" if row["us"] is not None else row["error"]) + f" [{last:.1f} s]")
        report.save()
    return rows


# ------------------------------------------------------------------------------------------------------------ report
def table(rows: list) -> str:
    """One line per shape and pass: every method, without and with a CUDA graph, and SDPA over the triton block."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    graphs = sorted({r["cuda_graph"] for r in rows})
    head = [f"{m}{' (graph)' if g else ''}" for m in methods for g in graphs]
    lines = ["| shape | pass | " + " | ".join(head) + " | SDPA / block triton |",
             "|---|---|" + "---|" * (len(head) + 1)]
    keyed = {(r["shape"], r["pass"], r["method"], r["cuda_graph"]): r for r in rows}
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for pas in ("fwd", "fwd+bwd"):
            cells = []
            for m in methods:
                for g in graphs:
                    r = keyed.get((shape, pas, m, g))
                    cells.append("skip" if r is not None and was_skipped(r)
                                 else "err" if r is None or r["us"] is None else f"{r['us']:.1f}")
            tri, sdpa = keyed.get((shape, pas, "block triton", False)), keyed.get((shape, pas, "SDPA layer", False))
            ratio = f"{sdpa['us'] / tri['us']:.2f}x" if tri and sdpa and tri["us"] and sdpa["us"] else "-"
            lines.append(f"| {shape} | {pas} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default: $OUT)")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke run: interpreter kernels, tiny shapes, no build")
    ap.add_argument("--quick", action="store_true",
                    help="a second try of about 2 minutes: core conformance (fp16) and the headline rows only")
    ap.add_argument("--no-build", action="store_true", help="use the _C already built")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run, build included (default 300, 150 with --quick)")
    args = ap.parse_args(argv)
    if not args.out:
        print("error: no output folder: pass --out DIR or set $OUT", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file, expected a folder", file=sys.stderr)
        return 2
    budget = args.budget if args.budget is not None else (150.0 if args.quick else 300.0)
    if budget <= 0:
        print(f"error: --budget must be a positive number of seconds, got {budget:g}", file=sys.stderr)
        return 2
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    elif not torch.cuda.is_available():
        print("error: no CUDA device (torch.cuda.is_available() is False); use --smoke for the CPU path",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if args.smoke else "cuda")
    data = {"device": "CPU (smoke)" if args.smoke else torch.cuda.get_device_name(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "budget_s": budget,
            "mode": "smoke" if args.smoke else "quick" if args.quick else "full", "finished": False,
            "build": None, "conformance": [], "timings": []}
    try:
        import triton

        data["triton"] = triton.__version__
    except ImportError:
        data["triton"] = None
    command = "python python/gpu_check.py" + "".join(f" --{f}" for f in ("smoke", "quick") if getattr(args, f))
    report = Report(out, data, command)
    deadline = report.start + budget
    report.say(f"gpu_check: {data['device']}, torch {data['torch']} (CUDA {data['cuda']}), triton {data['triton']}, "
               f"budget {budget:.0f} s, writing {out}")
    report.save()
    try:
        if not (args.smoke or args.no_build):
            data["build"] = build(report, timeout=max(30.0, 0.5 * budget))
            report.save()
        if data["build"] is None or data["build"]["ok"]:
            left = deadline - time.perf_counter()
            report.say("conformance:")
            conformance(device, args.smoke, args.quick, time.perf_counter() + CONFORMANCE_SHARE * left, report)
            report.say("timings:")
            timings(device, args.smoke, args.quick, deadline, report)
    except Exception:  # keep what was measured so far
        data["crash"] = traceback.format_exc()[-3000:]
        report.say("CRASH:\n" + data["crash"])
    data["finished"] = True
    report.save()
    print("\n".join(report.markdown()), flush=True)
    conf = [r for r in data["conformance"] if r["ok"] is not None]
    ok = (data["build"] is None or data["build"]["ok"]) and conf and all(r["ok"] for r in conf) \
        and "crash" not in data
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
