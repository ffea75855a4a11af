#include "local_engine/cuda/sampling.cuh"

#include <algorithm>

namespace tollgate::engine::cuda {

namespace device {

constexpr int threads = 1024;
/// Values of a row kept in shared memory by the first pass (192 KB), so that the passes of a
/// draw's cut-offs read half of a 100K-token row from there and the rest from L2.
constexpr int cached_max = 48 * 1024;

// Floats mapped to unsigned integers in the same order, so thresholds can be found bit by bit.
__device__ __forceinline__ uint32_t ordered(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float block_sum_f(float v, float* scratch) { return block_sum(v, scratch); }

// A row of logits: its first `cached` values in shared memory, the rest in global memory.
struct row_view {
  const float* row;
  const float* cache;
  int vocab, cached;
  __device__ __forceinline__ float at(int i) const { return i < cached ? cache[i] : row[i]; }
};

// f(i, v) for the values past the cached ones, each once, by the block's threads: 16 bytes a
// load with 8 loads in flight a thread (4 bytes a load when the row is not 16-byte aligned).
template <typename F>
__device__ __forceinline__ void for_each_uncached(const row_view& r, F&& f) {
  const int n = static_cast<int>(blockDim.x);
  if (reinterpret_cast<uintptr_t>(r.row) % 16 == 0 && r.cached % 4 == 0) {
    const float4* v4 = reinterpret_cast<const float4*>(r.row);
    const int u0 = r.cached / 4, u1 = r.vocab / 4;
    constexpr int ahead = 8;
    for (int u = u0 + static_cast<int>(threadIdx.x); u < u1; u += ahead * n) {
      float4 v[ahead];
#pragma unroll
      for (int j = 0; j < ahead; ++j) v[j] = u + j * n < u1 ? __ldcg(v4 + u + j * n) : make_float4(0, 0, 0, 0);
#pragma unroll
      for (int j = 0; j < ahead; ++j) {
        if (u + j * n >= u1) break;
        const int i = 4 * (u + j * n);
        f(i, v[j].x), f(i + 1, v[j].y), f(i + 2, v[j].z), f(i + 3, v[j].w);
      }
    }
    for (int i = 4 * u1 + static_cast<int>(threadIdx.x); i < r.vocab; i += n) f(i, __ldcg(r.row + i));
  } else {
    for (int i = r.cached + static_cast<int>(threadIdx.x); i < r.vocab; i += n) f(i, __ldcg(r.row + i));
  }
}

// f(i, v) for every value of the row, each once: the cached ones from shared memory, then the rest.
template <typename F>
__device__ __forceinline__ void for_each_value(const row_view& r, F&& f) {
  for (int i = static_cast<int>(threadIdx.x); i < r.cached; i += blockDim.x) f(i, r.cache[i]);
  for_each_uncached(r, f);
}

// Three sums over the block, the same in every thread.
__device__ __forceinline__ void block_sum3(float& a, float& b, float& c, float (*scratch)[32]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  a = warp_sum(a), b = warp_sum(b), c = warp_sum(c);
  __syncthreads();
  if (lane == 0) scratch[0][warp] = a, scratch[1][warp] = b, scratch[2][warp] = c;
  __syncthreads();
  a = warp_sum(lane < warps ? scratch[0][lane] : 0.0f);
  b = warp_sum(lane < warps ? scratch[1][lane] : 0.0f);
  c = warp_sum(lane < warps ? scratch[2][lane] : 0.0f);
}

// The largest key K with (count or mass of values whose key >= K, and >= floor_key) >= need: the
// k-th largest logit, or the nucleus cut. Built from the top bits down, two bits a pass: of the
// three trials key | d << lo (d = 1, 2, 3), the largest that keeps `need` (the bit-by-bit search's
// answer, in half the passes over the row).
template <bool by_mass>
__device__ uint32_t threshold(const row_view& r, float mx, float inv_t, uint32_t floor_key, float need,
                              float (*scratch)[32]) {
  uint32_t key = 0;
  for (int lo = 30; lo >= 0; lo -= 2) {
    const uint32_t t1 = key | (1u << lo), t2 = key | (2u << lo), t3 = key | (3u << lo);
    float g1 = 0, g2 = 0, g3 = 0;
    for_each_value(r, [&](int, float v) {
      const uint32_t k = ordered(v);
      if (k < t1 || k < floor_key) return;
      const float w = by_mass ? __expf((v - mx) * inv_t) : 1.0f;
      g1 += w;
      if (k >= t2) g2 += w;
      if (k >= t3) g3 += w;
    });
    block_sum3(g1, g2, g3, scratch);
    key = g3 >= need ? t3 : g2 >= need ? t2 : g1 >= need ? t1 : key;
  }
  return key;
}

__global__ void __launch_bounds__(threads) sample_kernel(const float* logits, int vocab, int cache_floats,
                                                         const sample_params* params, int32_t* tokens) {
  enter_in_order();
  extern __shared__ float cache[];  // a drawn row's first cache_floats values
  __shared__ float scratch[32];
  __shared__ float scratch3[3][32];
  __shared__ float sv[32];
  __shared__ int si[32];
  const sample_params p = params[blockIdx.x];
  const bool greedy = p.temperature <= 0 || p.top_k == 1;
  const row_view r{logits + static_cast<size_t>(blockIdx.x) * vocab, cache, vocab, greedy ? 0 : cache_floats};
  // The first largest logit: the greedy answer, and the softmax's shift. The cached part is read
  // from global memory here, and kept.
  float best = -INFINITY;
  int at = -1;
  const auto consider = [&](int i, float v) {
    if (at < 0 || v > best || (v == best && i < at)) best = v, at = i;
  };
  for (int i = static_cast<int>(threadIdx.x); i < r.cached; i += blockDim.x) {
    const float v = __ldcg(r.row + i);
    cache[i] = v;
    consider(i, v);
  }
  for_each_uncached(r, consider);
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, best, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, at, o);
    if (i2 >= 0 && (at < 0 || v2 > best || (v2 == best && i2 < at))) best = v2, at = i2;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sv[warp] = best, si[warp] = at;
  __syncthreads();  // also: the cache is written
  best = sv[0];
  at = si[0];
  for (int w = 1; w < (blockDim.x >> 5); ++w)
    if (si[w] >= 0 && (at < 0 || sv[w] > best || (sv[w] == best && si[w] < at))) best = sv[w], at = si[w];
  if (greedy) {
    if (threadIdx.x == 0) tokens[blockIdx.x] = at;
    return;
  }
  const float inv_t = 1.0f / p.temperature;
  uint32_t floor_key = 0;
  if (p.top_k > 0 && p.top_k < vocab) floor_key = threshold<false>(r, best, inv_t, 0, static_cast<float>(p.top_k), scratch3);
  const auto kept_mass = [&] {
    float m = 0;
    for_each_value(r, [&](int, float v) {
      if (ordered(v) >= floor_key) m += __expf((v - best) * inv_t);
    });
    return block_sum_f(m, scratch);
  };
  float mass = kept_mass();
  if (p.top_p < 1) {
    floor_key = threshold<true>(r, best, inv_t, floor_key, p.top_p * mass * (1.0f - 1e-6f), scratch3);
    mass = kept_mass();
  }
  // Inverse CDF over the kept tokens in id order: each thread sums a contiguous chunk, a block scan
  // finds the chunk that holds the draw, and that thread walks it.
  const uint64_t z = mix64(p.seed ^ mix64(p.draw + 0x9e3779b97f4a7c15ull));
  const float target = static_cast<float>(static_cast<double>(z >> 11) * 0x1.0p-53) * mass;
  const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const int begin = threadIdx.x * chunk, end = min(vocab, begin + chunk);
  float mine = 0;
  int last_kept = -1;
  for (int i = begin; i < end; ++i) {
    const float v = r.at(i);
    if (ordered(v) >= floor_key) mine += __expf((v - best) * inv_t), last_kept = i;
  }
  // Inclusive scan of `mine` over the block.
  float incl = mine;
  for (int o = 1; o < 32; o <<= 1) {
    const float v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  __shared__ float warp_total[32];
  __shared__ int pick, fallback;
  if (lane == 31) warp_total[warp] = incl;
  if (threadIdx.x == 0) pick = -1, fallback = -1;
  __syncthreads();
  float before = 0;
  for (int w = 0; w < warp; ++w) before += warp_total[w];
  incl += before;
  const float excl = incl - mine;
  if (last_kept >= 0) atomicMax(&fallback, last_kept);
  if (mine > 0 && target >= excl && target < incl) {
    float acc = excl;
    for (int i = begin; i < end; ++i) {
      const float v = r.at(i);
      if (ordered(v) < floor_key) continue;
      acc += __expf((v - best) * inv_t);
      if (target < acc) {
        pick = i;
        break;
      }
    }
    if (pick < 0) pick = last_kept;
  }
  __syncthreads();
  if (threadIdx.x == 0) tokens[blockIdx.x] = pick >= 0 ? pick : fallback;
}

}  // namespace device

void sample_rows(const float* logits, int vocab, const sample_params* params, int n, int32_t* tokens, cudaStream_t s) {
  if (n == 0) return;
  // Shared memory for a drawn row's first values (greedy rows use none of it): up to cached_max,
  // as many as the device lets a block have beside the kernel's own 4 KB, a multiple of 4.
  int device_id = 0, optin = 0;
  check(cudaGetDevice(&device_id));
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_id));
  const int cache_floats = std::max(0, std::min({vocab, device::cached_max, (optin - 4096) / 4})) / 4 * 4;
  const size_t smem = static_cast<size_t>(cache_floats) * sizeof(float);
  check(cudaFuncSetAttribute(device::sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  launch_early(device::sample_kernel, dim3(n), dim3(device::threads), smem, s, logits, vocab, cache_floats, params,
               tokens);
  check_launch();
}

}  // namespace tollgate::engine::cuda
