#include "local_engine/cuda/sampling.cuh"

namespace tollgate::engine::cuda {

namespace device {

constexpr int threads = 1024;

// Floats mapped to unsigned integers in the same order, so thresholds can be found bit by bit.
__device__ __forceinline__ uint32_t ordered(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float block_sum_f(float v, float* scratch) { return block_sum(v, scratch); }

// The largest key K with (count or mass of rows whose key >= K) >= need: the k-th largest logit,
// or the nucleus cut. Built from the top bit down, so each step halves the candidates.
template <bool by_mass>
__device__ uint32_t threshold(const float* row, int vocab, float mx, float inv_t, uint32_t floor_key, float need,
                              float* scratch) {
  uint32_t key = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t trial = key | (1u << bit);
    float got = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const uint32_t k = ordered(row[i]);
      if (k >= trial && k >= floor_key) got += by_mass ? __expf((row[i] - mx) * inv_t) : 1.0f;
    }
    got = block_sum_f(got, scratch);
    if (got >= need) key = trial;
  }
  return key;
}

__global__ void __launch_bounds__(threads) sample_kernel(const float* logits, int vocab, const sample_params* params,
                                                         int32_t* tokens) {
  enter_in_order();
  __shared__ float scratch[32];
  __shared__ float sv[32];
  __shared__ int si[32];
  const float* row = logits + static_cast<size_t>(blockIdx.x) * vocab;
  const sample_params p = params[blockIdx.x];
  // The first largest logit: the greedy answer, and the softmax's shift.
  float best = -INFINITY;
  int at = -1;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x)
    if (row[i] > best || at < 0) best = row[i], at = i;
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, best, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, at, o);
    if (v2 > best || (v2 == best && i2 < at)) best = v2, at = i2;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sv[warp] = best, si[warp] = at;
  __syncthreads();
  best = sv[0];
  at = si[0];
  for (int w = 1; w < (blockDim.x >> 5); ++w)
    if (sv[w] > best || (sv[w] == best && si[w] < at)) best = sv[w], at = si[w];
  if (p.temperature <= 0 || p.top_k == 1) {
    if (threadIdx.x == 0) tokens[blockIdx.x] = at;
    return;
  }
  const float inv_t = 1.0f / p.temperature;
  uint32_t floor_key = 0;
  if (p.top_k > 0 && p.top_k < vocab) floor_key = threshold<false>(row, vocab, best, inv_t, 0, static_cast<float>(p.top_k), scratch);
  float mass = 0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x)
    if (ordered(row[i]) >= floor_key) mass += __expf((row[i] - best) * inv_t);
  mass = block_sum_f(mass, scratch);
  if (p.top_p < 1) {
    floor_key = threshold<true>(row, vocab, best, inv_t, floor_key, p.top_p * mass * (1.0f - 1e-6f), scratch);
    mass = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
      if (ordered(row[i]) >= floor_key) mass += __expf((row[i] - best) * inv_t);
    mass = block_sum_f(mass, scratch);
  }
  // Inverse CDF over the kept tokens in id order: each thread sums a contiguous chunk, a block scan
  // finds the chunk that holds the draw, and that thread walks it.
  const uint64_t z = mix64(p.seed ^ mix64(p.draw + 0x9e3779b97f4a7c15ull));
  const float target = static_cast<float>(static_cast<double>(z >> 11) * 0x1.0p-53) * mass;
  const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const int begin = threadIdx.x * chunk, end = min(vocab, begin + chunk);
  float mine = 0;
  int last_kept = -1;
  for (int i = begin; i < end; ++i)
    if (ordered(row[i]) >= floor_key) mine += __expf((row[i] - best) * inv_t), last_kept = i;
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
      if (ordered(row[i]) < floor_key) continue;
      acc += __expf((row[i] - best) * inv_t);
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
  launch_early(device::sample_kernel, dim3(n), dim3(device::threads), 0, s, logits, vocab, params, tokens);
  check_launch();
}

}  // namespace tollgate::engine::cuda
