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
Writes a table to stdout, `gpu_check.json` and `RESULTS_gpu.md` (a section for benchmarks/RESULTS.md) under the output
folder. Needs torch and triton only (no diffusers, no hypothesis); a failed check is reported, not raised, so one
call gives every figure.
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
def build(log: list) -> dict:
    env = dict(os.environ)
    env.setdefault("MAX_JOBS", "16")
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        env.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    out = {"ok": res.returncode == 0, "seconds": round(time.perf_counter() - t0, 1),
           "arch": env.get("TORCH_CUDA_ARCH_LIST"), "tail": (res.stdout + res.stderr)[-3000:]}
    log.append(f"build: {'ok' if out['ok'] else 'FAILED'} in {out['seconds']} s (arch {out['arch']})")
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


def conformance(device, smoke: bool, log: list) -> list:
    from deltaconv_kernels import ops
    from deltaconv_kernels.testing import check_block_backend, check_map_16k, check_pyramid_backend

    info = ops.available_backends()
    backends = ["triton", "cuda"] if not smoke else ["triton"]
    results = []
    for backend in backends:
        if not info[backend].available:
            results.append({"check": f"{backend}: available", "ok": False, "error": info[backend].reason})
            continue
        cases = SMOKE_CASES if smoke else CASES
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            # every case with a strided grad_output; the first also with a strided u
            for case, strided_u in [(cases[0], True)] + [(case, False) for case in cases]:
                    name = (f"{backend} pyramid {str(dtype)[6:]} b{case[0]} {case[1]}x{case[2]} ci{case[3]} k{case[4]} "
                            f"s{len(case[5])} {case[6]}{' strided-u' if strided_u else ''}")
                    _record(results, name, check_pyramid_backend, backend, case, dtype, device,
                            torch.Generator().manual_seed(0), strided_u)
            for gate in ("scaled", "sigmoid"):
                _record(results, f"{backend} block {str(dtype)[6:]} {gate}", check_block_backend, backend, dtype, gate,
                        device, torch.Generator().manual_seed(1))
        if not smoke:
            _record(results, f"{backend} backward bitwise repeatable", _repeatable_backward, backend, device)
            _record(results, f"{backend} 16K map", check_map_16k, backend)
            torch.cuda.empty_cache()
    failed = [r for r in results if not r["ok"]]
    log.append(f"conformance: {len(results) - len(failed)}/{len(results)} passed")
    for r in failed:
        log.append(f"  FAIL {r['check']}: {r.get('error')}")
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


def timings(device, smoke: bool, deadline: float, log: list) -> list:
    from deltaconv_kernels import DeltaConvBlock, ops

    info = ops.available_backends()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    warmup, iters = (10, 50) if device.type == "cuda" else (1, 3)
    rows = []
    for name, b, h, w, c, k, gate, heads in (SMOKE_SHAPES if smoke else SHAPES):
        torch.manual_seed(0)
        block = DeltaConvBlock(c, kernel_size=k, gate=gate, backend="torch", device=device, dtype=dtype)
        methods = {}
        for backend in ("triton", "cuda") if device.type == "cuda" else ("triton",):
            if info[backend].available:
                fast = DeltaConvBlock(c, kernel_size=k, gate=gate, backend=backend, device=device, dtype=dtype)
                fast.load_state_dict(block.state_dict())
                methods[f"block {backend}"] = fast
        composed = ComposedTorchBlock(block)
        methods["torch eager"] = composed
        if device.type == "cuda":  # (on CPU, inductor's C++ compile would take minutes)
            methods["torch.compile"] = None  # compiled lazily, only while the time budget allows
        methods["SDPA layer"] = SDPASelfAttention(c, heads, device, dtype)
        x = torch.randn(b, h, w, c, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn(b, h, w, c, device=device, dtype=dtype)
        for method, module in methods.items():
            for backward in (False, True):
                for graph in (False, True) if device.type == "cuda" else (False,):
                    row = {"shape": name, "B": b, "HxW": f"{h}x{w}", "C": c, "K": k, "method": method,
                           "pass": "fwd+bwd" if backward else "fwd", "cuda_graph": graph, "us": None, "error": None}
                    rows.append(row)
                    if time.perf_counter() > deadline:
                        row["error"] = "skipped: time budget spent"
                        continue
                    try:
                        if method == "torch.compile" and module is None:
                            module = methods[method] = torch.compile(composed, dynamic=False)
                        step = _step(module, x, grad, backward)
                        row["us"] = round(_median_us(_graphed(step) if graph else step, device, warmup, iters), 1)
                    except Exception as e:  # a method that fails to run is a result too
                        row["error"] = f"{type(e).__name__}: {e}"[:300]
        log.append(f"timings: {name} done")
        del methods, block, composed, x, grad
        if device.type == "cuda":
            torch.cuda.empty_cache()
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
                    cells.append("err" if r is None or r["us"] is None else f"{r['us']:.1f}")
            tri, sdpa = keyed.get((shape, pas, "block triton", False)), keyed.get((shape, pas, "SDPA layer", False))
            ratio = f"{sdpa['us'] / tri['us']:.2f}x" if tri and sdpa and tri["us"] and sdpa["us"] else "-"
            lines.append(f"| {shape} | {pas} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default: $OUT)")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke run: interpreter kernels, tiny shapes, no build")
    ap.add_argument("--no-build", action="store_true", help="use the _C already built")
    ap.add_argument("--budget", type=float, default=330.0, help="seconds after which timings are skipped")
    args = ap.parse_args(argv)
    if not args.out:
        print("error: no output folder: pass --out DIR or set $OUT", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file, expected a folder", file=sys.stderr)
        return 2
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    elif not torch.cuda.is_available():
        print("error: no CUDA device (torch.cuda.is_available() is False); use --smoke for the CPU path",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    device = torch.device("cpu" if args.smoke else "cuda")
    log: list[str] = []
    report = {"device": "CPU (smoke)" if args.smoke else torch.cuda.get_device_name(),
              "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    report["build"] = None if (args.smoke or args.no_build) else build(log)
    try:
        report["conformance"] = conformance(device, args.smoke, log)
        report["timings"] = timings(device, args.smoke, start + args.budget, log)
    except Exception:  # keep what was measured so far
        report["crash"] = traceback.format_exc()[-3000:]
        log.append("CRASH:\n" + report["crash"])
    report["seconds"] = round(time.perf_counter() - start, 1)
    rows = report.get("timings") or []
    md = [f"### GPU check on {report['device']} ({time.strftime('%Y-%m-%d')})", "",
          f"`python python/gpu_check.py`, torch {report['torch']} (CUDA {report['cuda']}), triton {report['triton']}, "
          f"Python {report['python']}; {report['seconds']} s in all. Medians of CUDA-event timings in microseconds, "
          "fp16, after a warm-up.", ""]
    conf = report.get("conformance") or []
    md.append(f"Conformance: {sum(r['ok'] for r in conf)}/{len(conf)} checks passed against the reference.")
    md += [f"- FAIL {r['check']}: {r.get('error')}" for r in conf if not r["ok"]]
    md += ["", table(rows) if rows else "(no timings)", ""]
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "RESULTS_gpu.md").write_text("\n".join(md))
    print("\n".join(log))
    print("\n".join(md))
    ok = (report["build"] is None or report["build"]["ok"]) and conf and all(r["ok"] for r in conf) \
        and "crash" not in report
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
