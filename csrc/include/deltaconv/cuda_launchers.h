// Launchers of the CUDA kernels (csrc/cuda/*.cu): raw pointers, sizes, strides and a stream, no torch types,
// so the .cu files compile with nvcc alone (CI checks them without a CUDA build of torch). The binding
// (csrc/cuda/ops_cuda.cpp) allocates the compute-dtype work buffers and sequences the calls per stage.
//
// "acc" below is the compute dtype: fp32, or fp64 for fp64 tensors. Work buffers are contiguous acc maps.
// Every launcher returns the launch status (cudaGetLastError()).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "deltaconv/views.h"

namespace deltaconv::cuda {

// src [B, H, W, Ci] (dtype dt) -> P [B, h, w, Ci] acc: adaptive average pooling.
cudaError_t pool(DType dt, const View4& src, int64_t h, int64_t w, void* P, cudaStream_t stream);

// dst[..., dst_off + c] = gate(conv(src, weight)) for c < Ci/2. src is dtype dt, or acc if src_is_acc;
// dst likewise. weight: [K, K, Ci] acc.
cudaError_t conv_gate(DType dt, const View4& src, bool src_is_acc, const void* weight, int64_t K, const View4& dst,
                      bool dst_is_acc, int64_t dst_off, bool sigmoid_gate, double gate_scale, cudaStream_t stream);

// out[..., off + c] (dtype dt, [B, H, W, ...]) = bilinear upsample (align_corners=False) of Z [B, h, w, Ch] acc.
cudaError_t upsample(DType dt, const void* Z, int64_t h, int64_t w, int64_t Ch, const View4& out, int64_t off,
                     cudaStream_t stream);

// GZ [B, h, w, Ch] acc = adjoint of `upsample` applied to g[..., off : off + Ch] (dtype dt).
cudaError_t upsample_backward(DType dt, const View4& g, int64_t off, int64_t Ch, int64_t h, int64_t w, void* GZ,
                              cudaStream_t stream);

// GD [B, h, w, Ci] acc = dL/d(conv output), recomputing the conv of src; gz[..., gz_off + c] is dL/dz.
cudaError_t gate_backward(DType dt, const View4& src, bool src_is_acc, const void* weight, int64_t K,
                          const View4& gz, bool gz_is_acc, int64_t gz_off, void* GD, bool sigmoid_gate,
                          double gate_scale, cudaStream_t stream);

// dst [B, h, w, Ci] acc += transposed depthwise correlation of GD [B, h, w, Ci] acc with weight [K, K, Ci] acc.
cudaError_t conv_transpose_add(DType dt, const void* GD, int64_t B, int64_t h, int64_t w, int64_t Ci,
                               const void* weight, int64_t K, void* dst, cudaStream_t stream);

// GU [B, H, W, Ci] acc += adjoint of the adaptive pooling of gP [B, h, w, Ci] acc.
cudaError_t pool_backward_add(DType dt, const void* gP, int64_t B, int64_t h, int64_t w, int64_t Ci, int64_t H,
                              int64_t W, void* GU, cudaStream_t stream);

// gw [K, K, Ci] acc = sum over positions of GD * shifted src; a fixed-order reduction (deterministic).
cudaError_t weight_grad(DType dt, const View4& src, bool src_is_acc, const void* GD, int64_t K, void* gw,
                        cudaStream_t stream);

// mean [B, C] acc = mean over H, W of x (dtype dt); fixed-order reduction.
cudaError_t spatial_mean(DType dt, const View4& x, void* mean, cudaStream_t stream);

}  // namespace deltaconv::cuda
