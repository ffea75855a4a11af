// Shared by the engine's CUDA kernels: error checks that name the file and line, and the element
// types the kernels are written over (float for exactness checks, bf16 for serving).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <source_location>
#include <stdexcept>
#include <string>

namespace tollgate::engine::cuda {

/// Throws std::runtime_error naming the call site when a CUDA runtime call failed.
inline void check(cudaError_t e, const std::source_location at = std::source_location::current()) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error at ") + at.file_name() + ":" + std::to_string(at.line()) + ": " +
                             cudaGetErrorString(e));
}

/// After a launch: a bad configuration shows up here, a fault in the kernel at the next sync.
inline void check_launch(const std::source_location at = std::source_location::current()) {
  check(cudaGetLastError(), at);
}

using bf16 = __nv_bfloat16;

}  // namespace tollgate::engine::cuda

// Device helpers, seen only by nvcc: host files include the launch declarations alone.
#ifdef __CUDACC__
namespace tollgate::engine::cuda::device {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/// Sum over the block (blockDim.x a multiple of 32, at most 1024). `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(r);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(r);
}

}  // namespace tollgate::engine::cuda::device
#endif  // __CUDACC__
