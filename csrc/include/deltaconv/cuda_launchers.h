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

// Depthwise weights packed for the tiled kernels: [K * K][2][Chp] in the compute dtype, the two channel halves
// (a, g) each zero-padded to Chp = packed_channels(dt, Ci / 2), so every 16-byte channel vector is aligned.
int64_t packed_channels(DType dt, int64_t Ch);

// dst[..., dst_off + c] = gate(conv(src, wp)) for c < Ci/2. is_acc: src and dst are compute-dtype maps
// (the pooled stage), else both have dtype dt.
cudaError_t conv_gate(DType dt, const View4& src, const void* wp, int64_t K, int64_t Chp, const View4& dst,
                      int64_t dst_off, bool is_acc, bool sigmoid_gate, double gate_scale, cudaStream_t stream);

// out[..., off + c] (dtype dt, [B, H, W, ...]) = bilinear upsample (align_corners=False) of Z [B, h, w, Ch] acc.
cudaError_t upsample(DType dt, const void* Z, int64_t h, int64_t w, int64_t Ch, const View4& out, int64_t off,
                     cudaStream_t stream);

// GZ [B, h, w, Ch] acc = adjoint of `upsample` applied to g[..., off : off + Ch] (dtype dt).
cudaError_t upsample_backward(DType dt, const View4& g, int64_t off, int64_t Ch, int64_t h, int64_t w, void* GZ,
                              cudaStream_t stream);

// GD [B, h, w, Ci] acc = dL/d(conv output), recomputing the conv of src; gz[..., gz_off + c] is dL/dz.
// is_acc: src and gz are compute-dtype maps, else both have dtype dt.
cudaError_t gate_backward(DType dt, const View4& src, const void* wp, int64_t K, int64_t Chp, const View4& gz,
                          int64_t gz_off, bool is_acc, void* GD, bool sigmoid_gate, double gate_scale,
                          cudaStream_t stream);

// dst [B, h, w, Ci] acc += transposed depthwise correlation of GD [B, h, w, Ci] acc; wp_flipped: the packed
// weights of the kernel flipped in both spatial directions.
cudaError_t conv_transpose_add(DType dt, const void* GD, int64_t B, int64_t h, int64_t w, int64_t Ci,
                               const void* wp_flipped, int64_t K, int64_t Chp, void* dst, cudaStream_t stream);

// GU [B, H, W, Ci] acc += adjoint of the adaptive pooling of gP [B, h, w, Ci] acc.
cudaError_t pool_backward_add(DType dt, const void* gP, int64_t B, int64_t h, int64_t w, int64_t Ci, int64_t H,
                              int64_t W, void* GU, cudaStream_t stream);

// Bytes of the workspace weight_grad needs for src (fp32/fp64 partial sums of a fixed partition of the map).
int64_t weight_grad_workspace_bytes(DType dt, const View4& src, int64_t K);

// gw [K, K, Ci] acc = sum over positions of GD * shifted src: per-part partials in `workspace`, then added in
// part order (deterministic, the same on every device).
cudaError_t weight_grad(DType dt, const View4& src, bool src_is_acc, const void* GD, int64_t K, void* workspace,
                        void* gw, cudaStream_t stream);

// Bytes of the workspace spatial_mean needs for x.
int64_t spatial_mean_workspace_bytes(DType dt, const View4& x);

// mean [B, C] acc = mean over H, W of x (dtype dt): partial sums over a fixed partition of the pixels (enough
// blocks to fill the GPU) in `workspace`, then added in order.
cudaError_t spatial_mean(DType dt, const View4& x, void* workspace, void* mean, cudaStream_t stream);

}  // namespace deltaconv::cuda
