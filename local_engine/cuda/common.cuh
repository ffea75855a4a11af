// Shared by the engine's CUDA kernels: error checks that name the file and line, and the element
// types the kernels are written over (float for exactness checks, bf16 for serving).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <source_location>
#include <stdexcept>
#include <string>
#include <utility>

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

/// SwiGLU's product of a gate and an up value, silu(g) * u: every kernel that writes an
/// activation uses this one formula, so that fused and separate paths give the same bits.
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

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

/// Four values to p[0..4), rounded to T, in one store (p 8-byte aligned for bf16, 16 for float).
__device__ __forceinline__ void store4(float* p, float a, float b, float c, float d) {
  *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, float a, float b, float c, float d) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
  uint2 v;
  v.x = *reinterpret_cast<uint32_t*>(&lo), v.y = *reinterpret_cast<uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(p) = v;
}

/// c += a . b on bf16 tensor cores: mma.m16n8k16, A row-major 16 x 16, B column-major 16 x 8.
__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/// Weights are read once a step: keep them out of L1, where the rows of x are reused.
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

/// Programmatic dependent launch (sm_90): lets the next kernel in the stream, when it was launched
/// with launch_dependent() or launch_early(), start on the multiprocessors this one leaves idle.
/// Harmless when the next kernel was launched plainly.
__device__ __forceinline__ void trigger_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/// In a kernel launched with launch_dependent(): waits until the kernel before it has finished and
/// its writes are visible. Nothing that kernel writes, or reads, may be touched before this.
__device__ __forceinline__ void wait_for_prerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/// The first statement of a kernel launched with launch_early(): lets the next kernel's blocks be
/// placed as soon as all of this one's are, then waits for the kernel before. Nothing runs before
/// the wait, so the order of the stream's work is exactly the plain one; only the launch latency
/// between two kernels is hidden.
__device__ __forceinline__ void enter_in_order() {
  trigger_dependents();
  wait_for_prerequisites();
}

/// A 64-bit mix (splitmix64's finaliser): random weights and sampling draws from a seed.
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// Asks L2 to fetch the 128-byte line at p, without waiting for it.
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

}  // namespace tollgate::engine::cuda::device

namespace tollgate::engine::cuda {

/// Whether launch_early() overlaps launches (TOLLGATE_ENGINE_PDL=0 turns it off, for measurements).
bool early_launch_enabled();

/// Launches `kernel` with `smem` bytes of dynamic shared memory so that it may begin while the
/// kernel before it in the stream finishes (the kernel must call device::wait_for_prerequisites()
/// before it touches that kernel's data).
template <typename... Params, typename... Args>
void launch_dependent_smem(bool overlap, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                           Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = overlap ? 1 : 0;
  check(cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...));
}

/// A skinny product: its early part reads weights alone, before it waits.
template <typename... Params, typename... Args>
void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t s, Args&&... args) {
  launch_dependent_smem(true, kernel, grid, block, 0, s, std::forward<Args>(args)...);
}

/// A kernel whose first statement is device::enter_in_order(): launched so that its blocks are
/// placed while the kernel before finishes, and run in the stream's order.
template <typename... Params, typename... Args>
void launch_early(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args&&... args) {
  launch_dependent_smem(early_launch_enabled(), kernel, grid, block, smem, s, std::forward<Args>(args)...);
}

}  // namespace tollgate::engine::cuda
#endif  // __CUDACC__
