#!/usr/bin/env bash
# Fresh-environment install checks, on a copy of the working tree, in venvs without system packages:
#   1. a venv without torch: plain `pip install .` fails in under 60 s and says how to install torch;
#   2. a venv with only torch==2.13.0: plain `pip install .` builds _C against that torch, pip's output shows no
#      torch being collected or downloaded, and available_backends() reports `cpu` available;
#   3. the same venv: `pip install --no-build-isolation .` and `pip wheel .` keep working (the build is reused);
#   4. the same venv: `python -m build`, a front end that builds with an interpreter of its own, fails in under
#      60 s with the same message and its --no-build-isolation advice;
#   5. the same venv (the package, torch and numpy, no extra): every CLI subcommand whose extra is missing exits 2
#      with `deltaconv <cmd>: error: needs X, Y: pip install "deltaconv_kernels[<extra>]"`, no traceback, no output
#      folder left behind; `deltaconv info` runs, and no torch import warns that numpy is missing;
#   6. in this clone (CI's is fresh), the README's two commands from Debian's system Python: python/dev.sh makes its
#      own .venv with it (CI then uses that venv), `dev.sh test` runs the suite, no test skips for a package dev.sh
#      installs, and `dev.sh bench` (a short grid: --bench-max-res 512 --bench-budget 120) reuses the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON_BASE:-python3}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "install_check: FAIL: $*" >&2; exit 1; }
start=$SECONDS

mkdir "$work/src"
# The working tree as git sees it (tracked and untracked, not ignored: no build/, no .venv/), minus deleted files.
git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done | \
  xargs -0 cp --parents -t "$work/src"

echo "install_check: 1. pip install . in a venv without torch"
"$PY" -m venv "$work/bare"
t0=$SECONDS
if "$work/bare/bin/python" -m pip install "$work/src" > "$work/bare.log" 2>&1; then
  fail "pip install . succeeded without torch"
fi
took=$((SECONDS - t0))
grep -q "torch is not installed where this build can see it" "$work/bare.log" || { cat "$work/bare.log"; fail "no torch message"; }
grep -q "pip install torch --index-url https://download.pytorch.org/whl/cpu" "$work/bare.log" || fail "no CPU wheel advice"
grep -q "pip install --no-build-isolation ." "$work/bare.log" || fail "no --no-build-isolation advice"
if grep -Eiq "^(Collecting|Downloading) torch" "$work/bare.log"; then fail "pip collected torch"; fi
[ "$took" -lt 60 ] || fail "the failure took ${took} s (limit 60 s)"
echo "install_check:    failed as it should in ${took} s, with the install advice"

echo "install_check: 2. pip install . in a venv with only torch==2.13.0"
"$PY" -m venv "$work/venv"
V="$work/venv/bin/python"
"$V" -m pip install torch==2.13.0 > "$work/torch.log" 2>&1 || { tail -20 "$work/torch.log"; fail "installing torch failed"; }
t0=$SECONDS
MAX_JOBS=${MAX_JOBS:-2} "$V" -m pip install -v "$work/src" > "$work/venv.log" 2>&1 || { tail -40 "$work/venv.log"; fail "pip install . failed"; }
echo "install_check:    built and installed in $((SECONDS - t0)) s"
if grep -Eiq "(Collecting|Downloading) torch" "$work/venv.log"; then
  grep -Ei "(Collecting|Downloading) torch" "$work/venv.log"; fail "pip collected or downloaded torch"
fi
grep -q "Requirement already satisfied: torch" "$work/venv.log" || fail "pip did not see the installed torch"
"$V" -c "import numpy" || fail "pip install . did not install numpy (a dependency)"
torch_dir="$("$V" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
grep -q "building deltaconv_kernels._C against torch 2.13.0.* ($torch_dir)" "$work/venv.log" || \
  fail "the build did not use the venv's torch ($torch_dir)"
[ "$("$V" -m pip list 2>/dev/null | grep -c '^torch ')" = 1 ] || fail "not exactly one torch in the venv"
(cd "$work" && "$V" -c "
import deltaconv_kernels as d
cpu = d.available_backends()['cpu']
print('install_check:    cpu backend:', cpu)
assert cpu.available, cpu
") || fail "the cpu backend is unavailable after pip install ."
(cd "$work" && "$work/venv/bin/deltaconv" info) || fail "deltaconv info failed"

echo "install_check: 3. pip install --no-build-isolation . and pip wheel . in the same venv"
t0=$SECONDS
"$V" -m pip install -q --no-build-isolation "$work/src" > "$work/nbi.log" 2>&1 || { tail -40 "$work/nbi.log"; fail "--no-build-isolation failed"; }
"$V" -m pip wheel -q --no-deps -w "$work/wheels" "$work/src" > "$work/wheel.log" 2>&1 || { tail -40 "$work/wheel.log"; fail "pip wheel failed"; }
# Read the listing in Python: `zipfile -l | grep -q` dies of a broken pipe under pipefail when grep stops early.
"$V" -c 'import sys, zipfile; sys.exit("deltaconv_kernels/_C_build.json" not in zipfile.ZipFile(sys.argv[1]).namelist())' \
  "$work"/wheels/deltaconv_kernels-*.whl || fail "the wheel lacks the build record"
(cd "$work" && "$V" -c "import deltaconv_kernels as d; assert d.available_backends()['cpu'].available") || \
  fail "the cpu backend is unavailable after --no-build-isolation"
echo "install_check:    both worked in $((SECONDS - t0)) s"
echo "install_check: 4. python -m build (isolated, with an interpreter of its own) in the same venv"
"$V" -m pip install -q build > "$work/build_pkg.log" 2>&1 || { tail -20 "$work/build_pkg.log"; fail "installing build failed"; }
t0=$SECONDS
if "$V" -m build --wheel --outdir "$work/bw" "$work/src" > "$work/pypa.log" 2>&1; then
  fail "python -m build succeeded in an environment without torch"
fi
took=$((SECONDS - t0))
grep -q "torch is not installed where this build can see it" "$work/pypa.log" || { tail -30 "$work/pypa.log"; fail "no torch message"; }
grep -q "pip install --no-build-isolation ." "$work/pypa.log" || fail "no --no-build-isolation advice"
[ "$took" -lt 60 ] || fail "the failure took ${took} s (limit 60 s)"
echo "install_check:    failed as it should in ${took} s, with the --no-build-isolation advice"

echo "install_check: 5. the CLI without the extras (the venv of 2: the package, torch, numpy)"
cli_refuses() {  # <command> <extra[,extra]> <args...>: exit 2, one line naming what is missing, nothing written
  local cmd=$1 extra=$2; shift 2
  local needs rc=0
  needs="$(cd "$work" && "$V" -c "import sys; from deltaconv_kernels import extras
print(', '.join(dict.fromkeys(p for e in sys.argv[1].split(',') for p in extras.missing(e))))" "$extra")"
  [ -n "$needs" ] || fail "the venv has the [$extra] packages: the check would prove nothing"
  (cd "$work" && "$work/venv/bin/deltaconv" "$cmd" "$@" > "$work/cli.out" 2> "$work/cli.err") || rc=$?
  [ "$rc" = 2 ] || { cat "$work/cli.err"; fail "deltaconv $cmd without [$extra]: exit $rc, expected 2"; }
  grep -q "Traceback" "$work/cli.err" && { cat "$work/cli.err"; fail "deltaconv $cmd without [$extra]: a traceback"; }
  local want="deltaconv $cmd: error: needs $needs: pip install \"deltaconv_kernels[$extra]\""
  grep -qxF "$want" "$work/cli.err" || { cat "$work/cli.err"; fail "deltaconv $cmd: expected the line: $want"; }
  [ ! -e "$work/cli_out" ] || fail "deltaconv $cmd without [$extra] left $work/cli_out behind"
  echo "install_check:    deltaconv $cmd: $want"
}
cli_refuses bench bench --device cpu --max-resolution 512 --out cli_out
cli_refuses bench bench,diffusers --end-to-end --device cpu --out cli_out   # whole denoiser steps: diffusers models
cli_refuses analyze analysis --tiny pixart --out cli_out
cli_refuses distill distill --model cli_model --random 4 --output-dir cli_out
(cd "$work" && "$work/venv/bin/deltaconv" info > "$work/info.out" 2> "$work/info.err") || fail "deltaconv info failed"
if grep -q "Failed to initialize NumPy" "$work/info.err"; then cat "$work/info.err"; fail "torch warns that numpy is missing"; fi

echo "install_check: 6. the README's two commands here, from Debian's system Python through dev.sh's own .venv"
base=${DEV_PYTHON:-/usr/bin/python3}
if [ "${CI:-}" = true ] && [ -e .venv ]; then fail "CI's clone is not fresh: .venv exists already"; fi
fresh=yes; [ ! -e .venv ] || fresh=no
t0=$SECONDS
PYTHON="$base" bash python/dev.sh test -rs 2>&1 | tee "$work/dev_test.log"
echo "install_check:    bash python/dev.sh test: $((SECONDS - t0)) s (set-up included: $fresh fresh .venv)"
if [ "$fresh" = yes ]; then
  grep -q "^\[dev.sh\] making .venv from $("$base" -c 'import sys; print(sys.executable)')" "$work/dev_test.log" || \
    fail "dev.sh did not make .venv from $base"
  grep -qx "include-system-site-packages = true" .venv/pyvenv.cfg || fail ".venv does not see the system's packages"
fi
# Every package a test may import is in [all] (tests/build/test_extras.py), which dev.sh installs: none may be
# missing here, and no test may have skipped naming one (conftest's reason, or importorskip's own).
.venv/bin/python -P -c 'from deltaconv_kernels import extras; m = extras.missing("all"); assert not m, f"missing: {m}"' || \
  fail "dev.sh left packages of [all] uninstalled"
if grep -E "needs [^ ]+, which is not installed here|could not import '" "$work/dev_test.log"; then
  fail "tests skipped for a package that dev.sh installs"
fi
t0=$SECONDS
# The short grid only: the fixed-shape CPU benchmarks (PixArt-1024 blocks, the roofline) take minutes on 2 cores.
PYTHON="$base" bash python/dev.sh bench --bench-max-res 512 --bench-budget 120 \
  --ignore benchmarks/test_bench_cpu_backend.py --ignore benchmarks/test_bench_cpu_roofline.py 2>&1 | tee "$work/dev_bench.log"
grep -q "^\[dev.sh\] reusing .venv" "$work/dev_bench.log" || fail "dev.sh bench did not reuse .venv"
echo "install_check:    bash python/dev.sh bench --bench-max-res 512 --bench-budget 120: $((SECONDS - t0)) s"
echo "install_check: OK in $((SECONDS - start)) s"
