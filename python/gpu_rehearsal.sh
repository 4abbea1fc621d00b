#!/usr/bin/env bash
# Rehearsal of the first GPU run, on a CPU machine: the GPU image's exact versions (Python 3.12, torch 2.11.0+cu130,
# triton 3.6.0, numpy 2.5.2, no diffusers) in a scratch venv, then what gpu_check.py needs there:
#   1. `pip install .` with the CUDA sources built for sm_90 through nvcc (no GPU needed);
#   2. `deltaconv info` shows CUDA kernels compiled for 9.0;
#   3. the AOT compile report under triton 3.6 (sm_90, fp16): 0 compile errors, 0 spills;
#   4. `python python/gpu_check.py --smoke` green under numpy 2.5.2.
# Downloads several GB the first time (the CUDA build of torch). Not in CI; run it whenever the build, a kernel or
# gpu_check changes:
#   bash python/gpu_rehearsal.sh                 # venv in .rehearsal-venv/ of the clone (ignored by git)
#   REHEARSAL_VENV=DIR bash python/gpu_rehearsal.sh   # reuse or create the venv at DIR
#   REHEARSAL_PYTHON=python3.12 ...              # the interpreter the venv is made from
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${REHEARSAL_VENV:-.rehearsal-venv}
BASE=${REHEARSAL_PYTHON:-python3.12}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
step() { echo "[rehearsal] $*"; }
fail() { echo "[rehearsal] FAIL: $*" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV from $BASE"
  "$BASE" -m venv "$VENV"
fi
V="$VENV/bin/python"
"$V" -m pip install -q torch==2.11.0 triton==3.6.0 numpy==2.5.2 setuptools ninja
"$V" - <<'PY' || fail "the venv does not hold the GPU image's versions"
import sys, torch, triton, numpy
assert sys.version_info[:2] == (3, 12), sys.version
assert torch.__version__.startswith("2.11.0") and torch.version.cuda, torch.__version__
assert triton.__version__ == "3.6.0" and numpy.__version__ == "2.5.2", (triton.__version__, numpy.__version__)
try:
    import diffusers  # noqa: F401
    sys.exit("diffusers is installed: the GPU image has none")
except ImportError:
    pass
print(f"[rehearsal] python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}, "
      f"numpy {numpy.__version__}, no diffusers")
PY

step "1. pip install . with the CUDA sources for sm_90"
t0=$SECONDS
DELTACONV_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-2} "$V" -m pip install -v . > "$work/build.log" 2>&1 || {
  grep -n "error" "$work/build.log" | head -20; tail -20 "$work/build.log"; fail "pip install . failed"; }
step "   built in $((SECONDS - t0)) s"

step "2. deltaconv info"
(cd "$work" && "$VENV/bin/deltaconv" info) | tee "$work/info.txt"
grep -q "CUDA kernels compiled for 9.0" "$work/info.txt" || fail "deltaconv info does not show CUDA kernels for 9.0"

step "3. AOT compile report under triton 3.6 (sm_90, fp16)"
"$V" python/aot_report.py --arch 90 --dtypes fp16 --json "$work/aot.json" | tail -5 || fail "AOT report failed"

step "4. gpu_check --smoke"
"$V" python/gpu_check.py --smoke --out "$work/gpu_check" | tail -8 || fail "gpu_check --smoke failed"
step "all green"
