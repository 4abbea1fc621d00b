#!/usr/bin/env bash
# One-step set-up and run, for the README's two commands:
#   bash python/dev.sh bench   -> the main job: pytest benchmarks/ --benchmark-only
#   bash python/dev.sh test    -> the test suite (Triton kernels in the interpreter when there is no GPU)
# It installs what is missing and nothing else: a torch that is already there (a CUDA build, say) is used as it is;
# on a machine without torch it installs the CPU wheel torch==2.13.0 (plain `torch` would pull GBs of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
job=${1:-}
case "$job" in bench|test) ;; *) echo "usage: bash python/dev.sh bench|test [extra pytest args]" >&2; exit 2 ;; esac
shift

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[dev.sh] torch not found: installing the CPU wheel torch==2.13.0"
  "$PY" -m pip install -q torch==2.13.0
fi
echo "[dev.sh] using $("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)')"
# Runtime and test dependencies, as import name=pip name (none pulls another torch once one is installed).
# transformers is there because diffusers' pipeline classes import it; scikit-learn and scikit-image ship the data
# of the digits and locality proofs. Only what is missing is installed; without registry access (the GPU image:
# torch, triton and numpy, no diffusers) nothing is, the missing ones are named and their tests skip with the reason.
DEPS="triton=triton diffusers=diffusers safetensors=safetensors accelerate=accelerate tqdm=tqdm matplotlib=matplotlib
numpy=numpy transformers=transformers pytest=pytest pytest_benchmark=pytest-benchmark hypothesis=hypothesis
sklearn=scikit-learn skimage=scikit-image ruff=ruff"
missing=$("$PY" - $DEPS <<'PYCODE'
import importlib.util, sys
print(" ".join(pip for imp, pip in (a.split("=") for a in sys.argv[1:]) if importlib.util.find_spec(imp) is None))
PYCODE
)
if [ -n "$missing" ]; then
  echo "[dev.sh] installing what is missing: $missing"
  # shellcheck disable=SC2086  # one word per package
  if ! "$PY" -m pip install -q $missing; then
    echo "[dev.sh] could not install: $missing (no registry access?): going on with what is there;" \
         "the tests that need them skip and say why" >&2
  fi
else
  echo "[dev.sh] every dependency is installed: installing nothing"
fi
# Build the package and its C++ extension against the torch above (never a second torch: setup.py builds against
# the torch of the environment it installs into). In this environment first (needs no registry), else isolated.
"$PY" -m pip install -q --no-deps --no-build-isolation . 2>/dev/null || "$PY" -m pip install -q --no-deps .

# `-P` keeps the source tree off sys.path, so the installed package (with its built _C) is what gets tested. It
# exists from Python 3.11; older ones run without it and test the source tree (the C++ backend then skips, saying
# that _C is not built there).
SAFE=-P
"$PY" -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)" || SAFE=""
if [ "$job" = bench ]; then
  exec "$PY" $SAFE -m pytest -p no:cacheprovider benchmarks/ --benchmark-only -o testpaths=benchmarks "$@"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export TRITON_INTERPRET=1  # no GPU: the Triton kernels run in Triton's interpreter on CPU tensors
fi
exec "$PY" $SAFE -m pytest -p no:cacheprovider tests/ "$@"
