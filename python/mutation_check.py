"""Mutation check: does the test suite catch deliberate bugs in the kernels, the reference and the losses?

    python python/mutation_check.py                 # every mutant of MUTANTS, one at a time
    python python/mutation_check.py --list          # the list: name, file, what the bug is, the tests it runs
    python python/mutation_check.py --only NAME ... # some of them

The repository (tracked and untracked-but-not-ignored files, plus an in-place built `deltaconv_kernels/_C*.so` when
it is newer than every csrc/ source) is copied into a scratch directory. First the union of the mutants' tests runs
on the unmutated copy (a mutant can only be "killed" by tests that pass without it). Then each mutant replaces one
exact piece of text in one file, the mutant's own small test selection runs (TRITON_INTERPRET=1, the scratch tree
first on PYTHONPATH), and the file is restored. A mutant of csrc/ rebuilds the extension in the scratch copy
(`python setup.py build_ext --inplace`); those run last, and the extension is rebuilt unmutated after them only
if needed again. A mutant whose text is no longer in its file is reported as `stale` (fix its record), never
skipped silently.

Result per mutant: killed (the tests failed), survived (they passed: a blind spot, or an equivalent mutant),
stale, ambiguous (the text occurs more than once), build-error (the mutated csrc/ did not compile), error (pytest
could not run the selection), timeout (counted as killed: the tests did not pass). The kill rate is
killed / (killed + survived). Exit status 0 when every mutant was killed, 1 otherwise, 2 on bad arguments.
Run it when a kernel or a loss changes; CUDA kernels are not in the list (they need a GPU to run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str          # path relative to the repository root
    old: str           # exact text, must occur once in `file`
    new: str
    what: str          # the bug, in words
    tests: tuple       # pytest node ids (paths relative to the root)


TRI = "tests/triton/test_triton_backend.py"
CONF = "tests/ops/test_backend_conformance.py"
TRI_FP32_SCALED = f"{CONF}::test_pyramid_forward_and_grads[triton-0-torch.float32]"   # 7x9 -> 3x4, B=2, strided grad
TRI_FP32_SIGMOID = f"{CONF}::test_pyramid_forward_and_grads[triton-1-torch.float32]"  # 8x9 -> 4x4 -> 2x2
TRI_SPLITS = f"{TRI}::test_weight_grad_reduction_over_forced_splits"
TRI_MEAN_SPLITS = f"{TRI}::test_spatial_mean_over_forced_splits"
REF = "tests/ops/test_reference.py"
CPU = "tests/cpu/test_cpu_backend.py"
CPU_SCALED = f"{CONF}::test_pyramid_forward_and_grads[cpu-0-torch.float32]"    # 13x9, K=3, scaled
CPU_SIGMOID = f"{CONF}::test_pyramid_forward_and_grads[cpu-1-torch.float32]"   # 25x17, K=5, 3 stages, sigmoid
WGRAD = "tests/ops/test_weight_grad_accuracy.py"
CPU_ISA = "tests/cpu/test_cpu_isa.py::test_forced_isa_reads_u_in_place"
CPU_FP32_IN_PLACE = f"{CPU_ISA}[AVX2-torch.float32-45w-K13-ci32]"          # edge blocks, 2 tiles, K in 2 chunks
CPU_BF16_IN_PLACE = f"{CPU_ISA}[AVX2-torch.bfloat16-40w-K7-ci24]"
LOSSES = "tests/distill/test_distill_losses.py"

MUTANTS: tuple[Mutant, ...] = (
    # --- the reference (the spec): caught by the independent NCHW formulation and the pinned constants ---
    Mutant("ref-window-end-floor", "deltaconv_kernels/reference.py",
           "end = -((-(o + 1) * in_size) // out_size)", "end = ((o + 1) * in_size) // out_size",
           "adaptive-pool window end rounded down (windows lose their last row at odd ratios)",
           (f"{REF}::test_adaptive_window_is_pytorch_semantics",)),
    Mutant("ref-bilinear-no-clamp", "deltaconv_kernels/reference.py",
           "* (in_size / out_size) - 0.5).clamp(min=0.0)", "* (in_size / out_size) - 0.5)",
           "bilinear source coordinate not clamped at 0 (first output row extrapolates)",
           (f"{REF}::test_stage_matches_independent_formulation",)),
    Mutant("ref-gate-scale", "deltaconv_kernels/reference.py",
           "return math.sqrt(inner_channels // 2)", "return math.sqrt(inner_channels)",
           "default gate scale sqrt(Ci) instead of sqrt(Ci/2)",
           (f"{REF}::test_default_gate_scale_is_pinned", f"{REF}::test_stage_matches_independent_formulation")),
    Mutant("ref-sigmoid-swapped", "deltaconv_kernels/reference.py",
           "return a * torch.sigmoid(g)", "return g * torch.sigmoid(a)",
           "sigmoid gate applied to the wrong half",
           (f"{REF}::test_stage_matches_independent_formulation",)),
    Mutant("ref-pooled-bias-sum", "deltaconv_kernels/reference.py",
           "mean = x.to(cd).mean(dim=(1, 2))", "mean = x.to(cd).sum(dim=(1, 2))",
           "pooled bias from the spatial sum instead of the mean",
           (f"{REF}::test_block_matches_independent_formulation",)),
    # --- Triton kernels (run in the interpreter) ---
    Mutant("triton-window-end-floor", "deltaconv_kernels/triton/index_math.py",
           "end = ((o + 1) * in_size + out_size - 1) // out_size", "end = ((o + 1) * in_size) // out_size",
           "adaptive-pool window end rounded down in the pool and pool-backward kernels", (TRI_FP32_SCALED,)),
    Mutant("triton-bilinear-no-clamp", "deltaconv_kernels/triton/index_math.py",
           "num = tl.maximum(num, 0)\n", "\n",
           "bilinear source coordinate not clamped at 0", (TRI_FP32_SCALED,)),
    Mutant("triton-sigmoid-grad", "deltaconv_kernels/triton/pyramid_bwd.py",
           "grad_g = gz * a * sig * (1.0 - sig)", "grad_g = gz * a * sig",
           "sigmoid gate backward without the sigmoid derivative", (TRI_FP32_SIGMOID,)),
    Mutant("triton-grad-out-contiguous", "deltaconv_kernels/triton/pyramid_bwd.py",
           "conv_weight(weight, meta), grad_out, *grad_out.stride(), gd,",
           "conv_weight(weight, meta), grad_out, *grad_out.contiguous().stride(), gd,",
           "the strided stage slice of the concat gradient read with contiguous strides (the released bug)",
           (TRI_FP32_SCALED,)),
    Mutant("triton-input-bwd-unflipped", "deltaconv_kernels/triton/pyramid_bwd.py",
           "gd.stride(1), conv_weight(weight.flip(0, 1), gd_meta), grad_src,",
           "gd.stride(1), conv_weight(weight, gd_meta), grad_src,",
           "input gradient correlated with the kernel instead of the flipped kernel", (TRI_FP32_SCALED,)),
    Mutant("triton-pool-bwd-window-area", "deltaconv_kernels/triton/pyramid_bwd.py",
           "inv = 1.0 / ((ye - ys) * (xe - xs)).to(tl.float32)", "inv = 1.0 / ((ye - ys) * (ye - ys)).to(tl.float32)",
           "pool backward divides by the window height squared, not height x width", (TRI_FP32_SIGMOID,)),
    Mutant("triton-wgrad-taps-transposed", "deltaconv_kernels/triton/pyramid_bwd.py",
           "return ((t // K) * s_h + (t % K) * S_W)[:, None] + c[None, :]",
           "return ((t % K) * s_h + (t // K) * S_W)[:, None] + c[None, :]",
           "weight gradient taps transposed (row and column of the tap swapped)", (TRI_FP32_SCALED,)),
    Mutant("triton-mean-divisor", "deltaconv_kernels/triton/pooled_bias.py",
           "return part.sum(dim=0) / n_pix", "return part.sum(dim=0) / max(n_pix - 1, 1)",
           "spatial mean divided by N - 1", (f"{CONF}::test_pooled_bias_and_grads[triton-torch.float32]",)),
    # the split-reduction weight gradient, the exact upsample taps and the zero border of the Triton kernels
    Mutant("triton-wgrad-drop-last-partial", "deltaconv_kernels/triton/pyramid_bwd.py",
           "return part.sum(dim=0).view(k, k, ci)",
           "return part.view(b, splits, k * k, ci)[:, :max(1, splits - 1)].sum(dim=(0, 1)).view(k, k, ci)",
           "weight-gradient reduction drops the last split's partial (only seen with splits > 1)", (TRI_SPLITS,)),
    Mutant("triton-wgrad-skip-last-split", "deltaconv_kernels/triton/pyramid_bwd.py",
           "splits = launch.cdiv(map_h, rows)", "splits = map_h // rows",
           "weight gradient launches floor(H / rows) splits: the rows of an uneven last split are skipped",
           (TRI_SPLITS,)),
    Mutant("triton-wgrad-split-row-short", "deltaconv_kernels/triton/pyramid_bwd.py",
           "y1 = tl.minimum(y0 + rows_per_split, map_h)", "y1 = tl.minimum(y0 + rows_per_split, map_h - 1)",
           "the weight-gradient kernel skips the map's last row (in the last split)", (TRI_SPLITS,)),
    Mutant("triton-mean-drop-last-partial", "deltaconv_kernels/triton/pooled_bias.py",
           "return part.sum(dim=0) / n_pix", "return part[:max(1, splits - 1)].sum(dim=0) / n_pix",
           "spatial-mean reduction drops the last split's partial (only seen with splits > 1)", (TRI_MEAN_SPLITS,)),
    Mutant("triton-mean-skip-last-split", "deltaconv_kernels/triton/pooled_bias.py",
           "splits = launch.cdiv(n_pix, per)", "splits = n_pix // per",
           "spatial mean launches floor(N / per) splits: the pixels of an uneven last split are skipped",
           (TRI_MEAN_SPLITS,)),
    Mutant("triton-upsample-span-short", "deltaconv_kernels/triton/launch.py",
           "return max((first_upsample_row(i + 1, low, out)", "return -1 + max((first_upsample_row(i + 1, low, out)",
           "upsample-backward gather one output row/column short", (TRI_FP32_SCALED,)),
    Mutant("triton-first-reaching-row", "deltaconv_kernels/triton/index_math.py",
           "return tl.where(i <= 0, 0, (out * (2 * i - 1) - low) // (2 * low) + 1)",
           "return tl.where(i <= 0, 0, (out * (2 * i - 1) - low) // (2 * low) + 2)",
           "upsample-backward gather starts one row late (misses the first reaching row)", (TRI_FP32_SCALED,)),
    Mutant("triton-pool-border", "deltaconv_kernels/triton/pyramid_fwd.py",
           "launch.max_window(h, map_h), launch.max_window(w, map_w), PAD=pad,",
           "launch.max_window(h, map_h), launch.max_window(w, map_w), PAD=max(pad - 1, 0),",
           "pooled map written one pixel off its zero border (wrong border pad)", (TRI_FP32_SCALED,)),
    # the strip conv's sliding window (each input converted once, reused across taps) and the weight-gradient tap pieces
    Mutant("triton-strip-window-slide", "deltaconv_kernels/triton/index_math.py",
           "            x3 = x4\n", "            x3 = x3\n",
           "the strip window does not slide at position 3 (a stale input feeds the later taps)", (TRI_FP32_SCALED,)),
    Mutant("triton-strip-window-start", "deltaconv_kernels/triton/index_math.py",
           "x6 = tap_value(row + 6 * STEP,", "x6 = tap_value(row + 7 * STEP,",
           "the strip window starts one input late at position 6", (TRI_FP32_SCALED,)),
    Mutant("triton-strip-origin", "deltaconv_kernels/triton/index_math.py",
           "strip = (r // NQ) * s_h + (r % NQ) * (STRIP * S_W)", "strip = (r // NQ) * s_h + (r % NQ) * S_W",
           "the second strip of a tile row starts one pixel after the first instead of STRIP pixels",
           (TRI_FP32_SCALED,)),
    Mutant("triton-strip-bf16-weight-order", "deltaconv_kernels/triton/index_math.py",
           "return tl.join(tl.load(ptr), tl.load(ptr + BC2))[None, :, :]",
           "return tl.join(tl.load(ptr + BC2), tl.load(ptr))[None, :, :]",
           "bf16 word read: even and odd channels get each other's weights",
           (f"{TRI}::test_pyramid_bf16_read_as_channel_pairs",)),
    Mutant("triton-wgrad-piece-offset", "deltaconv_kernels/triton/pyramid_bwd.py",
           "offs2 = _tap_offsets(T1, T2, K, s_h, S_W, c)", "offs2 = _tap_offsets(0, T2, K, s_h, S_W, c)",
           "the weight gradient's second tap piece reads the first piece's taps", (TRI_FP32_SCALED,)),
    Mutant("triton-wgrad-last-tap", "deltaconv_kernels/triton/pyramid_bwd.py",
           "mask=(tap < K * K)[:, None] & cmask[None, :])", "mask=(tap < K * K - 1)[:, None] & cmask[None, :])",
           "the weight gradient's last tap is never stored", (TRI_FP32_SCALED,)),
    # --- distillation losses ---
    Mutant("loss-min-snr-epsilon", "deltaconv_kernels/distill/losses.py",
           "    if prediction_type == \"epsilon\":\n        return clipped / s",
           "    if prediction_type == \"epsilon\":\n        return clipped",
           "Min-SNR weight for epsilon prediction without the division by SNR",
           (f"{LOSSES}::test_min_snr_weights_hand_computed",)),
    Mutant("loss-teacher-feature-grad", "deltaconv_kernels/distill/losses.py",
           "F.mse_loss(s.float(), t.detach().float())", "F.mse_loss(s.float(), t.float())",
           "feature loss lets gradients flow into the teacher features",
           (f"{LOSSES}::test_feature_mse_is_mean_over_layers_and_teacher_gets_no_grad",)),
    Mutant("loss-weighted-sum", "deltaconv_kernels/distill/losses.py",
           "return (per_sample * weights.to(per_sample)).mean()", "return (per_sample * weights.to(per_sample)).sum()",
           "weighted MSE sums over the batch instead of averaging",
           (f"{LOSSES}::test_distillation_loss_combines_weighted_terms",)),
    # --- C++ CPU kernels (csrc/: each rebuilds the extension in the scratch copy) ---
    Mutant("cpu-window-end-floor", "csrc/include/deltaconv/geometry.h",
           "return ((o + 1) * in + out - 1) / out;", "return ((o + 1) * in) / out;",
           "adaptive-pool window end rounded down (CPU and CUDA share it)", (CPU_SCALED,)),
    Mutant("cpu-sigmoid-grad", "csrc/cpu/kernels.cpp",
           "gg = go * a * s * (one - s);", "gg = go * a * s;",
           "sigmoid gate backward without the sigmoid derivative", (CPU_SIGMOID,)),
    Mutant("cpu-upsample-bwd-second-tap", "csrc/cpu/kernels.cpp",
           "if (ty[y].i1 == oy) wy += ly;", "",
           "upsample backward drops the second row tap's weight", (CPU_SCALED,)),
    Mutant("cpu-wgrad-drop-last-block", "csrc/cpu/kernels.cpp",
           "for (int64_t part = 1; part < nparts; ++part) {  // fixed order",
           "for (int64_t part = 1; part < nparts - 1; ++part) {  // fixed order",
           "weight-gradient reduction drops the last row block's partial", (CPU_SCALED,)),
    Mutant("cpu-wgrad-input-dtype", "csrc/cpu/kernels.cpp",
           "        weight_grad_strip<S, acc_t>(grp.ta[j], GD.pix(b, y, ca, 0), K, x0, x1, gw + ca * taps);\n",
           "        weight_grad_strip<S, acc_t>(grp.ta[j], GD.pix(b, y, ca, 0), K, x0, x1, gw + ca * taps);\n"
           "        for (int64_t i = 0; i < taps; ++i)\n"
           "          gw[ca * taps + i] = static_cast<acc_t>(static_cast<Tg>(gw[ca * taps + i]));\n",
           "weight gradient accumulated in the input dtype (rounded to bf16/fp16 after every row)",
           (f"{WGRAD}::test_weight_grad_is_rounded_once[cpu-torch.bfloat16]",
            f"{WGRAD}::test_weight_grad_is_rounded_once[cpu-torch.float16]")),
    Mutant("cpu-mean-divisor", "csrc/cpu/kernels.cpp",
           "const acc_t inv = acc_t(1) / static_cast<acc_t>(x.H * x.W);",
           "const acc_t inv = acc_t(1) / static_cast<acc_t>(x.H * x.W - 1);",
           "pooled-bias mean divided by N - 1", (f"{CONF}::test_pooled_bias_and_grads[cpu-torch.float32]",)),
    # u read where it lies, converted in registers (AVX2 and DEFAULT copies; the AVX512BF16 dot products cannot
    # run on a CPU without AVX512-BF16, so they have no mutant here: tests/cpu/test_cpu_bf16_dot.py covers them)
    Mutant("cpu-bf16-load-as-fp16", "csrc/cpu/kernels.cpp",
           "    at::vec::load_fp32_from_bf16(p, v);\n",
           "    at::vec::load_fp32_from_fp16(reinterpret_cast<const c10::Half*>(p), v);\n",
           "a bf16 vector of u converted as if it were fp16", (CPU_BF16_IN_PLACE,)),
    Mutant("cpu-interior-right-edge", "csrc/cpu/kernels.cpp",
           "return x >= half && x + XB + half <= n; }", "return x >= half && x + XB <= n; }",
           "a register block at the right edge read without bounds checks (pixels past the row)",
           (CPU_FP32_IN_PLACE,)),
    Mutant("cpu-wgrad-left-edge", "csrc/cpu/kernels.cpp",
           "if (x + K0 - K / 2 >= 0 && x + XB + K0 + KN - 1 - K / 2 <= t.n) {",
           "if (x + XB + K0 + KN - 1 - K / 2 <= t.n) {",
           "weight-gradient block at the left edge read without bounds checks", (CPU_FP32_IN_PLACE,)),
    Mutant("cpu-tile-drops-pixel", "csrc/cpu/kernels.cpp",
           "      const int64_t x1 = std::min(n, x0 + tile);\n      for (int64_t j = 0; j < g; ++j) {",
           "      const int64_t x1 = std::min(n, x0 + tile - 1);\n      for (int64_t j = 0; j < g; ++j) {",
           "the row-group conv skips the last pixel of every full tile", (CPU_FP32_IN_PLACE,)),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # `error: ...`, exit 2, no usage dump
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _parse(argv):
    p = _Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the mutants and exit")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants (names from --list)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run (default 900)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the selected tests")
    p.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    args = p.parse_args(argv)
    if args.timeout <= 0:
        p.error(f"--timeout must be > 0, got {args.timeout:g}")
    names = [m.name for m in MUTANTS]
    if args.only:
        unknown = [n for n in args.only if n not in names]
        if unknown:
            p.error(f"--only: unknown mutant(s) {', '.join(unknown)}; --list shows the names")
    return args


def _is_csrc(m: Mutant) -> bool:
    return m.file.startswith("csrc/")


def _repo_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True,
                         check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def _built_extension(root: Path) -> Path | None:
    """The in-place built extension, if it is newer than every csrc/ source (else it would test stale kernels)."""
    libs = sorted((root / "deltaconv_kernels").glob("_C*.so"))
    if not libs:
        return None
    newest_src = max((p.stat().st_mtime for p in (root / "csrc").rglob("*") if p.is_file()), default=0.0)
    return libs[-1] if libs[-1].stat().st_mtime >= newest_src else None


def _copy_repo(root: Path, dst: Path) -> bool:
    """Copy the working tree into dst; True when a usable built extension came along."""
    for rel in _repo_files(root):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    lib = _built_extension(root)
    if lib is not None:
        shutil.copy2(lib, dst / "deltaconv_kernels" / lib.name)
    return lib is not None


def _build(scratch: Path, timeout: float) -> tuple[bool, str]:
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "1"))
    try:
        done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=scratch, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "build timed out"
    return done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def _pytest(scratch: Path, tests, timeout: float) -> tuple[str, float, str]:
    """(status, seconds, output tail) of one pytest run of `tests` in the scratch copy."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(scratch), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, ""
    seconds = time.monotonic() - start
    tail = (done.stdout + done.stderr)[-2000:]
    # 0 passed, 1 some failed, 2 collection error (the mutant broke an import); 4/5: the selection itself is wrong.
    status = {0: "survived", 1: "killed", 2: "killed"}.get(done.returncode, "error")
    return status, seconds, tail


def _apply(scratch: Path, m: Mutant) -> tuple[str, str | None]:
    """('ok', original text) after writing the mutant, or ('stale' | 'ambiguous', None)."""
    path = scratch / m.file
    if not path.is_file():
        return "stale", None
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        return ("stale" if n == 0 else "ambiguous"), None
    path.write_text(text.replace(m.old, m.new))
    return "ok", text


def _print_list(mutants) -> None:
    for m in mutants:
        print(f"{m.name}\n    {m.file}: {m.what}\n    tests: {' '.join(m.tests)}")


def main(argv=None) -> int:
    args = _parse(argv)
    selected = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        _print_list(selected)
        return 0
    # csrc/ mutants last: every rebuild then happens in one stretch.
    selected.sort(key=_is_csrc)
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="deltaconv_mutants_"))
    print(f"[mutation] scratch copy: {scratch}", flush=True)
    results = []
    try:
        have_ext = _copy_repo(ROOT, scratch)
        if not have_ext:
            print("[mutation] no up-to-date in-place extension: building it in the scratch copy", flush=True)
            ok, log = _build(scratch, args.timeout)
            if not ok:
                print(f"error: the unmutated extension does not build:\n{log}", file=sys.stderr)
                return 1
        runnable = [m for m in selected if (scratch / m.file).is_file() and
                    (scratch / m.file).read_text().count(m.old) == 1]
        if not args.no_baseline and runnable:
            union = list(dict.fromkeys(t for m in runnable for t in m.tests))
            status, secs, tail = _pytest(scratch, union, args.timeout)
            print(f"[mutation] baseline: {len(union)} test selections on the unmutated copy, {secs:.0f} s", flush=True)
            if status != "survived":
                print(f"error: the selected tests do not pass unmutated ({status}); fix them first:\n{tail}",
                      file=sys.stderr)
                return 1
        ext_dirty = False  # the scratch extension was built from a mutated csrc/
        for m in selected:
            state, original = _apply(scratch, m)
            if state != "ok":
                results.append((m, state, 0.0, ""))
                print(f"[mutation] {m.name}: {state} (its text is not in {m.file} exactly once)", flush=True)
                continue
            try:
                if _is_csrc(m) or ext_dirty:
                    ok, log = _build(scratch, args.timeout)
                    ext_dirty = _is_csrc(m)
                    if not ok:
                        results.append((m, "build-error", 0.0, log))
                        print(f"[mutation] {m.name}: build-error", flush=True)
                        continue
                status, secs, tail = _pytest(scratch, m.tests, args.timeout)
            finally:
                (scratch / m.file).write_text(original)
            results.append((m, status, secs, tail))
            print(f"[mutation] {m.name}: {status} ({secs:.0f} s)", flush=True)
    finally:
        if args.keep:
            print(f"[mutation] kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"[mutation] {len(results)} mutants in {time.monotonic() - started:.0f} s")
    return _report(results)


def _report(results) -> int:
    width = max(len(m.name) for m, *_ in results)
    print(f"\n{'mutant':<{width}}  {'result':<11}  {'s':>4}  bug")
    for m, status, secs, _ in results:
        print(f"{m.name:<{width}}  {status:<11}  {secs:4.0f}  {m.what}")
    killed = sum(s in ("killed", "timeout") for _, s, *_ in results)
    survived = [m.name for m, s, *_ in results if s == "survived"]
    other = [f"{m.name} ({s})" for m, s, *_ in results if s not in ("killed", "timeout", "survived")]
    valid = killed + len(survived)
    rate = f"{100 * killed / valid:.0f}%" if valid else "n/a"
    print(f"\nkill rate: {killed}/{valid} = {rate}")
    if survived:
        print("survived: " + ", ".join(survived))
    if other:
        print("not run: " + ", ".join(other))
    for m, status, _, tail in results:
        if status in ("error", "build-error"):
            print(f"\n--- {m.name} ({status}) ---\n{tail}")
    return 0 if valid and not survived and not other else 1


if __name__ == "__main__":
    sys.exit(main())
