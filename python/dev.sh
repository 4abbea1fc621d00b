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
# Runtime and test dependencies (none of them pulls another torch once one is installed). transformers is
# there because diffusers' pipeline classes import it (the end-to-end pipeline tests need it).
"$PY" -m pip install -q triton diffusers safetensors accelerate tqdm matplotlib numpy \
  transformers pytest pytest-benchmark hypothesis scikit-learn ruff
# Build the package and its C++ extension against the torch above (plain `pip install .` never installs a
# second torch: setup.py builds against the torch of the environment it installs into).
"$PY" -m pip install -q .

# `-P` keeps the source tree off sys.path, so the installed package (with its built _C) is what gets tested.
if [ "$job" = bench ]; then
  exec "$PY" -P -m pytest -p no:cacheprovider benchmarks/ --benchmark-only -o testpaths=benchmarks "$@"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export TRITON_INTERPRET=1  # no GPU: the Triton kernels run in Triton's interpreter on CPU tensors
fi
exec "$PY" -P -m pytest -p no:cacheprovider tests/ "$@"
