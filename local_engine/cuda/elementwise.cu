#include "local_engine/cuda/elementwise.cuh"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <stdexcept>

namespace tollgate::engine::cuda {

namespace device {

template <typename T>
__global__ void embed_kernel(const T* table, const int32_t* tokens, int hidden, float* x) {
  enter_in_order();
  const size_t row = static_cast<size_t>(tokens[blockIdx.x]) * hidden;
  float* out = x + static_cast<size_t>(blockIdx.x) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) out[i] = to_float(table[row + i]);
}

// Four bf16 values of p at unit u (8 bytes), as floats.
__device__ __forceinline__ float4 load4(const bf16* p, size_t u) {
  const uint2 raw = reinterpret_cast<const uint2*>(p)[u];
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x)),
               b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

template <typename T>
__global__ void rmsnorm_kernel(float* x, const float* add, moe_sum moe, const float* bias, const float* w, float eps,
                               int cols, const int32_t* rows, T* out) {
  enter_in_order();
  __shared__ float scratch[32];
  __shared__ size_t expert_row[32];
  __shared__ float expert_weight[32];
  const int token = rows ? rows[blockIdx.x] : blockIdx.x;
  const size_t src = static_cast<size_t>(token) * cols;
  if (moe.any() && static_cast<int>(threadIdx.x) < moe.top_k) {
    const int slot = token * moe.top_k + threadIdx.x;
    expert_row[threadIdx.x] = static_cast<size_t>(moe.slot_row[slot]) * cols;
    expert_weight[threadIdx.x] = moe.weights[slot];
  }
  __syncthreads();
  float* xr = x + src;
  const bool changes = add || bias || moe.any();
  float ss = 0;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) {
    float v = xr[i];
    if (add) v += add[src + i];
    if (moe.any()) {
      float m = moe.shared ? moe.shared[src + i] : 0.0f;
      for (int k = 0; k < moe.top_k; ++k)
        m += (moe.rows16 ? to_float(moe.rows16[expert_row[k] + i]) : moe.rows[expert_row[k] + i]) * expert_weight[k];
      v += m;
    }
    if (bias) v += bias[i];
    if (changes) xr[i] = v;
    ss += v * v;
  }
  const float total = block_sum(ss, scratch);
  const float r = rsqrtf(total / static_cast<float>(cols) + eps);
  T* o = out + static_cast<size_t>(blockIdx.x) * cols;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = from_float<T>(w[i] * (xr[i] * r));
}

// As rmsnorm_kernel, 16 bytes a load, each thread keeping its (at most U) units of the row in
// registers between the sum of squares and the output: cols % 4 == 0, cols <= 4 * U * blockDim.x.
// The norm's weights are read before the wait for the kernel before (nothing writes them), and a
// thread's units of x, add and the shared experts' sums are asked for before the expert rows'
// places come back: one round trip to memory before the sums where there were three.
template <typename T, int U>
__global__ void rmsnorm_vec_kernel(float* x, const float* add, moe_sum moe, const float* bias, const float* w,
                                   float eps, int cols, const int32_t* rows, T* out) {
  trigger_dependents();
  const int units = cols / 4;
  const float4 zero4 = make_float4(0, 0, 0, 0);
  float4 g[U];
#pragma unroll
  for (int j = 0; j < U; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    g[j] = i < units ? reinterpret_cast<const float4*>(w)[i] : zero4;
  }
  wait_for_prerequisites();
  __shared__ float scratch[32];
  __shared__ size_t expert_row[32];  // the row's first unit of 4 values
  __shared__ float expert_weight[32];
  const int token = rows ? rows[blockIdx.x] : blockIdx.x;
  const size_t src = static_cast<size_t>(token) * cols;
  float4* xr = reinterpret_cast<float4*>(x + src);
  float4 v[U], ad[U], sh[U];
#pragma unroll
  for (int j = 0; j < U; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    const bool in = i < units;
    v[j] = in ? xr[i] : zero4;
    ad[j] = in && add ? reinterpret_cast<const float4*>(add + src)[i] : zero4;
    sh[j] = in && moe.shared ? reinterpret_cast<const float4*>(moe.shared + src)[i] : zero4;
  }
  if (moe.any() && static_cast<int>(threadIdx.x) < moe.top_k) {
    const int slot = token * moe.top_k + threadIdx.x;
    expert_row[threadIdx.x] = static_cast<size_t>(moe.slot_row[slot]) * cols / 4;
    expert_weight[threadIdx.x] = moe.weights[slot];
  }
  __syncthreads();
  const bool changes = add || bias || moe.any();
  float ss = 0;
#pragma unroll
  for (int j = 0; j < U; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i >= units) break;
    float4 a = v[j];
    const auto plus = [&](float4 b, float f) { a.x += b.x * f, a.y += b.y * f, a.z += b.z * f, a.w += b.w * f; };
    if (add) plus(ad[j], 1.0f);
    if (moe.any()) {
      float4 m = moe.shared ? sh[j] : zero4;
      const auto row_of = [&](int k) {
        return moe.rows16 ? load4(moe.rows16, expert_row[k] + i)
                          : reinterpret_cast<const float4*>(moe.rows)[expert_row[k] + i];
      };
      // Up to 8 experts' rows asked for at once, then added in order (a runtime-bounded loop
      // waited for each load in turn).
      constexpr int held = 8;
      float4 e[held];
#pragma unroll
      for (int k = 0; k < held; ++k) e[k] = k < moe.top_k ? row_of(k) : zero4;
#pragma unroll
      for (int k = 0; k < held; ++k) {
        if (k >= moe.top_k) break;
        const float f = expert_weight[k];
        m.x += e[k].x * f, m.y += e[k].y * f, m.z += e[k].z * f, m.w += e[k].w * f;
      }
      for (int k = held; k < moe.top_k; ++k) {
        const float4 r = row_of(k);
        const float f = expert_weight[k];
        m.x += r.x * f, m.y += r.y * f, m.z += r.z * f, m.w += r.w * f;
      }
      plus(m, 1.0f);
    }
    if (bias) plus(reinterpret_cast<const float4*>(bias)[i], 1.0f);
    if (changes) xr[i] = a;
    v[j] = a;
    ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
  }
  const float r = rsqrtf(block_sum(ss, scratch) / static_cast<float>(cols) + eps);
  T* o = out + static_cast<size_t>(blockIdx.x) * cols;
#pragma unroll
  for (int j = 0; j < U; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i >= units) break;
    o[4 * i] = from_float<T>(g[j].x * (v[j].x * r));
    o[4 * i + 1] = from_float<T>(g[j].y * (v[j].y * r));
    o[4 * i + 2] = from_float<T>(g[j].z * (v[j].z * r));
    o[4 * i + 3] = from_float<T>(g[j].w * (v[j].w * r));
  }
}

// grid (column blocks, row blocks): a thread takes one column of rows blockIdx.y, +gridDim.y, ...
// (no 64-bit division per element).
template <typename T>
__global__ void silu_mul_kernel(const float* gu, int inter, size_t stride, int n, T* out) {
  enter_in_order();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= inter) return;
  for (int r = blockIdx.y; r < n; r += gridDim.y) {
    const float* row = gu + static_cast<size_t>(r) * stride;
    const float g = row[i], u = row[inter + i];
    out[static_cast<size_t>(r) * inter + i] = from_float<T>(silu_times(g, u));
  }
}

// silu_mul_kernel four values a thread (inter and the row stride multiples of 4): the same values.
template <typename T>
__global__ void silu_mul4_kernel(const float* gu, int inter, size_t stride, int n, T* out) {
  enter_in_order();
  const int i = 4 * (blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= inter) return;
  for (int r = blockIdx.y; r < n; r += gridDim.y) {
    const float* row = gu + static_cast<size_t>(r) * stride;
    const float4 g = *reinterpret_cast<const float4*>(row + i), u = *reinterpret_cast<const float4*>(row + inter + i);
    store4(out + static_cast<size_t>(r) * inter + i, silu_times(g.x, u.x), silu_times(g.y, u.y),
           silu_times(g.z, u.z), silu_times(g.w, u.w));
  }
}

// silu_mul4_kernel with gate and up in bf16.
__global__ void silu_mul4_bf16_kernel(const bf16* gu, int inter, int n, bf16* out) {
  enter_in_order();
  const int i = 4 * (blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= inter) return;
  for (int r = blockIdx.y; r < n; r += gridDim.y) {
    const bf16* row = gu + static_cast<size_t>(r) * 2 * inter;
    const float4 g = load4(row, i / 4), u = load4(row + inter, i / 4);
    store4(out + static_cast<size_t>(r) * inter + i, silu_times(g.x, u.x), silu_times(g.y, u.y),
           silu_times(g.z, u.z), silu_times(g.w, u.w));
  }
}

__global__ void add_bias_kernel(float* y, const float* bias, int cols, size_t total) {
  enter_in_order();
  for (size_t k = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<size_t>(gridDim.x) * blockDim.x)
    y[k] += bias[k % cols];
}

template <typename T>
__global__ void gather_rows_kernel(const T* src, const int32_t* rows, int cols, T* dst) {
  const T* s = src + static_cast<size_t>(rows[blockIdx.x]) * cols;
  T* d = dst + static_cast<size_t>(blockIdx.x) * cols;
  if ((cols * sizeof(T)) % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
    const int n = static_cast<int>(cols * sizeof(T) / 16);
    for (int i = threadIdx.x; i < n; i += blockDim.x) reinterpret_cast<uint4*>(d)[i] = reinterpret_cast<const uint4*>(s)[i];
    return;
  }
  for (int i = threadIdx.x; i < cols; i += blockDim.x) d[i] = s[i];
}

__global__ void expert_slot_index_kernel(const int32_t* ids, const int32_t* slot_row, const int32_t* offsets,
                                         const int32_t* base, int n, int32_t* slot_index) {
  enter_in_order();
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= n) return;
  const int e = ids[k];
  slot_index[k] = base[e] + slot_row[k] - offsets[e];
}

template <typename T>
__global__ void convert_kernel(const float* src, size_t n, T* dst) {
  for (size_t k = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<size_t>(gridDim.x) * blockDim.x)
    dst[k] = from_float<T>(src[k]);
}

template <typename T>
__global__ void fill_random_kernel(T* dst, size_t n, uint64_t seed, float mean, float stddev) {
  for (size_t k = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint64_t z = mix64(seed * 0x9e3779b97f4a7c15ull + k + 1);
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    dst[k] = from_float<T>(mean + stddev * 1.7320508f * (2.0f * u - 1.0f));
  }
}

}  // namespace device

namespace {
unsigned grid_for(size_t n, unsigned block) {
  const size_t g = (n + block - 1) / block;
  return static_cast<unsigned>(g < 65536 ? (g == 0 ? 1 : g) : 65536);
}
}  // namespace

bool early_launch_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("TOLLGATE_ENGINE_PDL");
    return v == nullptr || std::string(v) != "0";
  }();
  return on;
}

template <typename T>
void embed(const T* table, const int32_t* tokens, int n, int hidden, float* x, cudaStream_t s) {
  if (n == 0) return;
  launch_early(device::embed_kernel<T>, dim3(n), dim3(256), 0, s, table, tokens, hidden, x);
  check_launch();
}

template <typename T>
void rmsnorm(float* x, const float* add, const moe_sum& moe, const float* bias, const float* w, float eps, int cols,
             int n, const int32_t* rows, T* out, cudaStream_t s) {
  if (n == 0) return;
  if (moe.any() && (moe.top_k < 1 || moe.top_k > 32)) throw std::runtime_error("rmsnorm: top_k must be 1..32");
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (cols % 4 == 0 && cols <= 4 * 4 * 512 && aligned(x) && aligned(add) && aligned(moe.rows) && aligned(moe.rows16) &&
      aligned(moe.shared) &&
      aligned(bias) && aligned(w)) {
    const int units = cols / 4;
    const int threads = units >= 512 ? 512 : (units + 31) / 32 * 32;
    // One unit a thread up to 2,048 columns (fewer registers, for prompts' many blocks), else four.
    if (units <= threads)
      launch_early(device::rmsnorm_vec_kernel<T, 1>, dim3(n), dim3(threads), 0, s, x, add, moe, bias, w, eps, cols,
                   rows, out);
    else
      launch_early(device::rmsnorm_vec_kernel<T, 4>, dim3(n), dim3(threads), 0, s, x, add, moe, bias, w, eps, cols,
                   rows, out);
    check_launch();
    return;
  }
  const int threads = cols >= 1024 ? 512 : (cols >= 256 ? 256 : 64);
  launch_early(device::rmsnorm_kernel<T>, dim3(n), dim3(threads), 0, s, x, add, moe, bias, w, eps, cols, rows, out);
  check_launch();
}

void silu_mul(const bf16* gu, int inter, int n, bf16* out, cudaStream_t s) {
  if (static_cast<size_t>(inter) * n == 0) return;
  if (inter % 4 != 0 || reinterpret_cast<uintptr_t>(gu) % 8 != 0 || reinterpret_cast<uintptr_t>(out) % 8 != 0)
    throw std::runtime_error("silu_mul: bf16 rows must be multiples of 4 values, 8-byte aligned");
  const dim3 grid(static_cast<unsigned>((inter / 4 + 127) / 128), static_cast<unsigned>(std::min(n, 65535)));
  launch_early(device::silu_mul4_bf16_kernel, grid, dim3(128), 0, s, gu, inter, n, out);
  check_launch();
}

template <typename T>
void silu_mul(const float* gu, int inter, int n, T* out, cudaStream_t s, int stride) {
  const size_t total = static_cast<size_t>(inter) * n;
  if (total == 0) return;
  const size_t row = stride > 0 ? static_cast<size_t>(stride) : 2 * static_cast<size_t>(inter);
  if (inter % 4 == 0 && row % 4 == 0 && reinterpret_cast<uintptr_t>(gu) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(out) % 16 == 0) {
    const dim3 grid(static_cast<unsigned>((inter / 4 + 127) / 128), static_cast<unsigned>(std::min(n, 65535)));
    launch_early(device::silu_mul4_kernel<T>, grid, dim3(128), 0, s, gu, inter, row, n, out);
  } else {
    const dim3 grid(static_cast<unsigned>((inter + 255) / 256), static_cast<unsigned>(std::min(n, 65535)));
    launch_early(device::silu_mul_kernel<T>, grid, dim3(256), 0, s, gu, inter, row, n, out);
  }
  check_launch();
}

void add_bias(float* y, const float* bias, int cols, int n, cudaStream_t s) {
  const size_t total = static_cast<size_t>(cols) * n;
  if (total == 0) return;
  launch_early(device::add_bias_kernel, dim3(grid_for(total, 256)), dim3(256), 0, s, y, bias, cols, total);
  check_launch();
}

template <typename T>
void gather_rows(const T* src, const int32_t* rows, int cols, int n, T* dst, cudaStream_t s) {
  if (n == 0) return;
  device::gather_rows_kernel<T><<<n, 256, 0, s>>>(src, rows, cols, dst);
  check_launch();
}

void expert_slot_index(const int32_t* ids, const int32_t* slot_row, const int32_t* offsets, const int32_t* base, int n,
                       int32_t* slot_index, cudaStream_t s) {
  if (n == 0) return;
  launch_early(device::expert_slot_index_kernel, dim3(static_cast<unsigned>((n + 255) / 256)), dim3(256), 0, s, ids,
               slot_row, offsets, base, n, slot_index);
  check_launch();
}

template <typename T>
void convert(const float* src, size_t n, T* dst, cudaStream_t s) {
  if (n == 0) return;
  device::convert_kernel<T><<<grid_for(n, 256), 256, 0, s>>>(src, n, dst);
  check_launch();
}

template <typename T>
void fill_random(T* dst, size_t n, uint64_t seed, float mean, float stddev, cudaStream_t s) {
  if (n == 0) return;
  device::fill_random_kernel<T><<<grid_for(n, 256), 256, 0, s>>>(dst, n, seed, mean, stddev);
  check_launch();
}

#define TOLLGATE_INSTANTIATE(T)                                                                              \
  template void embed<T>(const T*, const int32_t*, int, int, float*, cudaStream_t);                        \
  template void rmsnorm<T>(float*, const float*, const moe_sum&, const float*, const float*, float, int, int,  \
                           const int32_t*, T*, cudaStream_t);                                               \
  template void silu_mul<T>(const float*, int, int, T*, cudaStream_t, int);                                      \
  template void gather_rows<T>(const T*, const int32_t*, int, int, T*, cudaStream_t);                       \
  template void convert<T>(const float*, size_t, T*, cudaStream_t);                                         \
  template void fill_random<T>(T*, size_t, uint64_t, float, float, cudaStream_t);
TOLLGATE_INSTANTIATE(float)
TOLLGATE_INSTANTIATE(bf16)
#undef TOLLGATE_INSTANTIATE

}  // namespace tollgate::engine::cuda
