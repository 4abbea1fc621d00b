#!/usr/bin/env bash
# One-step set-up and run, for the README's two commands:
#   bash python/dev.sh bench   -> the main job: pytest benchmarks/ --benchmark-only
#   bash python/dev.sh test    -> the test suite (Triton kernels in the interpreter when there is no GPU)
# Extra arguments go to pytest. Everything is installed into a virtual environment of its own inside the clone,
# .venv (git-ignored; DELTACONV_VENV=DIR names another), made on the first run from $PYTHON (default python3,
# e.g. Debian's system Python: needs its python3-venv package) and reused after. The venv sees the system's
# packages (--system-site-packages): a torch that is already installed (a CUDA build, say) is used as it is, and
# only what is missing is installed: the dependencies and extras of deltaconv_kernels/extras.py, the build's
# requirements of pyproject.toml, and, where there is no torch at all, the CPU wheel torch==2.13.0 (plain `torch`
# would pull GBs of CUDA packages). Without registry access (the GPU image) what is missing is named, its tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${PYTHON:-python3}
VENV=${DELTACONV_VENV:-.venv}
VPY="$VENV/bin/python"
job=${1:-}
case "$job" in bench|test) ;; *) echo "usage: bash python/dev.sh bench|test [extra pytest args]" >&2; exit 2 ;; esac
shift

# setup.py's python_requires: what CI and the GPU image run; `-P` below needs 3.11 too.
check_python() {
  "$1" -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)" || {
    echo "[dev.sh] $1 is Python $("$1" -c 'import platform; print(platform.python_version())'); deltaconv_kernels" \
         "needs Python >= 3.11: run with PYTHON=python3.11 (or newer)${2:-}" >&2
    exit 2
  }
}

if [ ! -x "$VPY" ]; then
  command -v "$BASE" > /dev/null || { echo "[dev.sh] no $BASE found: set PYTHON=/path/to/python3" >&2; exit 2; }
  check_python "$BASE"
  echo "[dev.sh] making $VENV from $("$BASE" -c 'import sys; print(sys.executable, sys.version.split()[0])')" \
       "(--system-site-packages)"
  err=$(mktemp)
  if ! "$BASE" -m venv --system-site-packages "$VENV" 2> "$err"; then
    # Debian's python3 without python3-venv has no ensurepip: a venv without its own pip still works where the
    # system has pip (it installs into the venv); else say what to install.
    rm -rf "$VENV"
    if "$BASE" -m pip --version > /dev/null 2>&1 && "$BASE" -m venv --system-site-packages --without-pip "$VENV"; then
      echo "[dev.sh] (no ensurepip: $VENV uses the system's pip)"
    else
      cat "$err" >&2; rm -rf "$VENV" "$err"
      echo "[dev.sh] could not make a venv with $BASE: on Debian/Ubuntu install python3-venv" \
           "(apt-get install python3-venv), or set PYTHON to another Python >= 3.11" >&2
      exit 1
    fi
  fi
  rm -f "$err"
else
  echo "[dev.sh] reusing $VENV ($("$VPY" -c 'import sys; print(sys.executable, sys.version.split()[0])'))"
  check_python "$VPY" " (remove $VENV to make it again)"
fi

if ! "$VPY" -c "import torch" 2>/dev/null; then
  echo "[dev.sh] torch not found: installing the CPU wheel torch==2.13.0"
  # The CPU index, tried once (a host that cannot reach it falls back at once to the configured indexes).
  "$VPY" -m pip install -q --retries 0 --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0
fi

# What is missing, as pip requirements: the package's dependencies and the job's extras (extras.py, read as a file:
# it is standard-library only) and the build's requirements (pyproject.toml); torch is never among them.
missing=$("$VPY" - "$job" <<'PYCODE'
import importlib.metadata, importlib.util, runpy, sys, tomllib
extras = runpy.run_path("deltaconv_kernels/extras.py")
wanted = [*extras["REQUIRES"], *extras["EXTRAS"]["all" if sys.argv[1] == "test" else "bench"]]
out = [r.split(";")[0].strip() for r in wanted
       if extras["applies_here"](r) and importlib.util.find_spec(extras["import_name"](r)) is None]
def version(name):
    try:
        return tuple(int(p) for p in importlib.metadata.version(name).split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return ()
with open("pyproject.toml", "rb") as f:
    for r in tomllib.load(f)["build-system"]["requires"]:  # e.g. setuptools>=70.1, for --no-build-isolation
        name, _, floor = r.partition(">=")
        have = version(name)
        if not have or have < tuple(int(p) for p in floor.split(".") if floor):
            out.append(r)
print(" ".join(out))
PYCODE
)
if [ -n "$missing" ]; then
  echo "[dev.sh] installing what is missing: $missing"
  # shellcheck disable=SC2086  # one word per requirement
  if ! "$VPY" -m pip install -q $missing; then
    echo "[dev.sh] could not install: $missing (no registry access?): going on with what is there;" \
         "the tests that need them skip and say why" >&2
  fi
else
  echo "[dev.sh] every dependency is installed: installing nothing"
fi
echo "[dev.sh] using $("$VPY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)')"
# Build the package and its C++ extension against the torch above, in the venv with its build requirements
# (installed above), so no registry is needed and no second torch is ever pulled in.
echo "[dev.sh] building and installing deltaconv_kernels into $VENV"
"$VPY" -m pip install -q --no-deps --no-build-isolation .

# `-P` keeps the source tree off sys.path, so the installed package (with its built _C) is what gets tested.
if [ "$job" = bench ]; then
  exec "$VPY" -P -m pytest -p no:cacheprovider benchmarks/ --benchmark-only -o testpaths=benchmarks "$@"
fi
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export TRITON_INTERPRET=1  # no GPU: the Triton kernels run in Triton's interpreter on CPU tensors
fi
exec "$VPY" -P -m pytest -p no:cacheprovider tests/ "$@"
