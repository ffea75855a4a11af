#include "local_engine/cuda/mla_prefill.cuh"

#include <algorithm>

namespace tollgate::engine::cuda {

namespace device {

template <typename T>
__global__ void gather_positions_kernel(const T* cache, const int32_t* table, int block_size, int width, int L,
                                        T* out) {
  enter_in_order();
  const size_t total = static_cast<size_t>(L) * width;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int j = static_cast<int>(i / width), c = static_cast<int>(i % width);
    const size_t slot = static_cast<size_t>(table[j / block_size]) * block_size + j % block_size;
    out[i] = cache[slot * width + c];
  }
}

template <typename T>
__global__ void concat_heads_kernel(const T* x, int x_ld, int x_head, int a, const T* y, int y_ld, int y_head, int b,
                                    int rows, int heads, T* out) {
  enter_in_order();
  const int w = a + b;
  const size_t total = static_cast<size_t>(rows) * heads * w;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % w);
    const size_t rh = i / w;
    const int h = static_cast<int>(rh % heads);
    const size_t r = rh / heads;
    out[i] = c < a ? x[r * x_ld + static_cast<size_t>(h) * x_head + c] : y[r * y_ld + static_cast<size_t>(h) * y_head + c - a];
  }
}

// concat_heads_kernel 16 bytes a thread: every width, stride and pointer a multiple of 16 bytes
// (counts here are in 16-byte units).
__global__ void concat_heads16_kernel(const uint4* x, int x_ld, int x_head, int a, const uint4* y, int y_ld, int y_head,
                                      int b, int rows, int heads, uint4* out) {
  enter_in_order();
  const int w = a + b;
  const int total = rows * heads * w;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int c = i % w, rh = i / w, h = rh % heads, r = rh / heads;
    out[i] = c < a ? x[static_cast<size_t>(r) * x_ld + h * x_head + c] : y[static_cast<size_t>(r) * y_ld + h * y_head + c - a];
  }
}

// One block a row: the row's maximum, its sum of exponentials, then the probabilities.
template <typename T>
__global__ void causal_softmax_kernel(const float* scores, int q_rows, int L, int first_pos, float scale, T* p) {
  enter_in_order();
  __shared__ float scratch[32];
  const size_t r = blockIdx.x;
  const int valid = min(L, first_pos + static_cast<int>(r % q_rows) + 1);
  const float* row = scores + r * L;
  T* out = p + r * L;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < valid; j += blockDim.x) m = fmaxf(m, row[j]);
  m = block_max(m, scratch);
  float sum = 0;
  for (int j = threadIdx.x; j < valid; j += blockDim.x) sum += expf((row[j] - m) * scale);
  const float inv = 1.0f / block_sum(sum, scratch);
  for (int j = threadIdx.x; j < L; j += blockDim.x)
    out[j] = from_float<T>(j < valid ? expf((row[j] - m) * scale) * inv : 0.0f);
}

constexpr int softmax_vecs = 16;  // float4s a lane holds: rows up to 2,048 keys in registers

// One warp a row of up to 128 * softmax_vecs keys (L a multiple of 4), held in registers: one read
// of the scores, one write of the probabilities.
template <typename T>
__global__ void causal_softmax_warp_kernel(const float* scores, int rows, int q_rows, int L, int first_pos, float scale,
                                           T* p) {
  enter_in_order();
  const int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
  if (r >= rows) return;
  const int valid = min(L, first_pos + r % q_rows + 1);
  const float4* row = reinterpret_cast<const float4*>(scores + static_cast<size_t>(r) * L);
  float v[softmax_vecs][4];
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < softmax_vecs; ++i) {
    const int j = 4 * (lane + 32 * i);
    const float4 x = j < valid ? row[j / 4] : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
    v[i][0] = j < valid ? x.x : -INFINITY, v[i][1] = j + 1 < valid ? x.y : -INFINITY;
    v[i][2] = j + 2 < valid ? x.z : -INFINITY, v[i][3] = j + 3 < valid ? x.w : -INFINITY;
#pragma unroll
    for (int c = 0; c < 4; ++c) m = fmaxf(m, v[i][c]);
  }
  m = warp_max(m);
  float sum = 0;
#pragma unroll
  for (int i = 0; i < softmax_vecs; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      v[i][c] = v[i][c] == -INFINITY ? 0.0f : expf((v[i][c] - m) * scale);
      sum += v[i][c];
    }
  const float inv = 1.0f / warp_sum(sum);
  T* out = p + static_cast<size_t>(r) * L;
#pragma unroll
  for (int i = 0; i < softmax_vecs; ++i) {
    const int j = 4 * (lane + 32 * i);
    if (j < L) store4(out + j, v[i][0] * inv, v[i][1] * inv, v[i][2] * inv, v[i][3] * inv);
  }
}

}  // namespace device

template <typename T>
void gather_positions(const T* layer_cache, const int32_t* table, int block_size, int width, int L, T* out,
                      cudaStream_t s) {
  if (L == 0) return;
  const size_t total = static_cast<size_t>(L) * width;
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>((total + 255) / 256, 4096));
  launch_early(device::gather_positions_kernel<T>, dim3(blocks), dim3(256), 0, s, layer_cache, table, block_size, width,
               L, out);
  check_launch();
}

template <typename T>
void concat_heads(const T* x, int x_ld, int x_head, int a, const T* y, int y_ld, int y_head, int b, int rows, int heads,
                  T* out, cudaStream_t s) {
  const size_t total = static_cast<size_t>(rows) * heads * (a + b);
  if (total == 0) return;
  constexpr int v = 16 / sizeof(T);
  const auto fits = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (a % v == 0 && b % v == 0 && x_ld % v == 0 && x_head % v == 0 && y_ld % v == 0 && y_head % v == 0 && fits(x) &&
      fits(y) && fits(out) && total / v < (size_t{1} << 31)) {
    const unsigned blocks = static_cast<unsigned>(std::min<size_t>((total / v + 255) / 256, 8192));
    launch_early(device::concat_heads16_kernel, dim3(blocks), dim3(256), 0, s, reinterpret_cast<const uint4*>(x),
                 x_ld / v, x_head / v, a / v, reinterpret_cast<const uint4*>(y), y_ld / v, y_head / v, b / v, rows, heads,
                 reinterpret_cast<uint4*>(out));
    check_launch();
    return;
  }
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>((total + 255) / 256, 8192));
  launch_early(device::concat_heads_kernel<T>, dim3(blocks), dim3(256), 0, s, x, x_ld, x_head, a, y, y_ld, y_head, b,
               rows, heads, out);
  check_launch();
}

template <typename T>
void causal_softmax(const float* scores, int rows, int q_rows, int L, int first_pos, float scale, T* p,
                    cudaStream_t s) {
  if (rows == 0) return;
  if (L % 4 == 0 && L <= 128 * device::softmax_vecs && reinterpret_cast<uintptr_t>(scores) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(p) % 16 == 0) {
    launch_early(device::causal_softmax_warp_kernel<T>, dim3(static_cast<unsigned>((rows + 7) / 8)), dim3(256), 0, s,
                 scores, rows, q_rows, L, first_pos, scale, p);
    check_launch();
    return;
  }
  launch_early(device::causal_softmax_kernel<T>, dim3(static_cast<unsigned>(rows)), dim3(256), 0, s, scores, q_rows, L,
               first_pos, scale, p);
  check_launch();
}

#define TOLLGATE_INSTANTIATE(T)                                                                                   \
  template void gather_positions<T>(const T*, const int32_t*, int, int, int, T*, cudaStream_t);                     \
  template void concat_heads<T>(const T*, int, int, int, const T*, int, int, int, int, int, T*, cudaStream_t);      \
  template void causal_softmax<T>(const float*, int, int, int, int, float, T*, cudaStream_t);
TOLLGATE_INSTANTIATE(float)
TOLLGATE_INSTANTIATE(bf16)
#undef TOLLGATE_INSTANTIATE

}  // namespace tollgate::engine::cuda
