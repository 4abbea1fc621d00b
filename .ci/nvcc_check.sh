#!/usr/bin/env bash
# Compile every CUDA source (csrc/cuda/*.cu) with nvcc for sm_80 and sm_90, failing on any error or warning.
# The .cu files include no torch headers, so this needs only nvcc (no CUDA build of torch, no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="${NVCC:-$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")}"
if [ ! -x "$NVCC" ]; then
  echo "nvcc_check: nvcc not found (set NVCC or CUDA_HOME)" >&2
  exit 1
fi
"$NVCC" --version | tail -1
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
start=$SECONDS
status=0
for f in csrc/cuda/*.cu; do
  echo "nvcc_check: $f"
  if ! "$NVCC" -std=c++17 -O3 -Icsrc/include \
      -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
      -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror \
      -c "$f" -o "$out/$(basename "$f").o"; then
    status=1
  fi
done
# The torch binding of the CUDA kernels (csrc/cuda/*.cpp) is compiled only in CUDA builds; check its syntax
# against torch's headers here. A CPU wheel of torch ships c10/cuda but not the generated
# c10/cuda/impl/cuda_cmake_macros.h, which only holds build-time macros: an empty stand-in suffices.
if TORCH_INC="$(python -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))' 2>/dev/null)"; then
  # nvcc's own include path (nvcc may be a wrapper script, so ask it rather than guess from its location).
  CUDA_INC="$("$NVCC" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/.*INCLUDES="-I\([^"]*\)".*/\1/p' | sed -n 1p)"
  mkdir -p "$out/stub/c10/cuda/impl"
  [ -f "$(echo "$TORCH_INC" | cut -d' ' -f1)/c10/cuda/impl/cuda_cmake_macros.h" ] || \
    echo '#pragma once' > "$out/stub/c10/cuda/impl/cuda_cmake_macros.h"
  for f in csrc/cuda/*.cpp; do
    echo "nvcc_check: $f (host syntax check against torch headers)"
    # shellcheck disable=SC2086
    if ! "${CXX:-g++}" -std=c++20 -fsyntax-only -Wall -Werror -Wno-error=c++20-extensions -DDELTACONV_WITH_CUDA \
        $(for d in $TORCH_INC; do printf -- '-isystem %s ' "$d"; done) -isystem "$CUDA_INC" -isystem "$out/stub" \
        -Icsrc/include "$f"; then
      status=1
    fi
  done
else
  echo "nvcc_check: torch not importable, skipping the host syntax check of csrc/cuda/*.cpp"
fi
echo "nvcc_check: $(ls csrc/cuda/*.cu | wc -l) .cu files (+ bindings) in $((SECONDS - start)) s, status $status"
exit $status
