#include "local_engine/cuda/sampling.cuh"

#include <algorithm>
#include <type_traits>

namespace tollgate::engine::cuda {

namespace device {

constexpr int threads = 1024;
/// Values of a row kept in shared memory by the first pass (192 KB), so that the passes of a
/// draw's cut-offs read half of a 100K-token row from there and the rest from L2.
constexpr int cached_max = 48 * 1024;
/// Candidates a thread keeps in shared memory once a cut-off's passes have narrowed them (32 KB
/// for the block, beside the cache).
constexpr int slots = 8;
/// A pass gathers the candidates when the pass before moved the key past at most this many values
/// (4 a thread).
constexpr float gather_below = 4.0f * threads;

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

// N sums over the block, the same in every thread; scratch holds N x 32 floats.
template <int N>
__device__ __forceinline__ void block_sums(float (&v)[N], float (*scratch)[32]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = warp_sum(v[i]);
  __syncthreads();
  if (lane == 0)
#pragma unroll
    for (int i = 0; i < N; ++i) scratch[i][warp] = v[i];
  __syncthreads();
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = warp_sum(lane < warps ? scratch[i][lane] : 0.0f);
}

// A thread's candidates for the cut-offs: every value of the row whose key is at least `low`,
// in the order the thread visits them in a pass over the whole row (for_each_value), in shared
// memory at v[s * blockDim.x + threadIdx.x]. A pass over the row gathers them while it counts,
// once the pass before has moved the key past few enough (a pass that gathers in vain costs its
// stores); once no thread has more than `slots`, the next passes read these alone. A thread's
// sums then take the same values in the same order as over the whole row: the same bits. Rows
// whose candidates never fit (a flat row's wide nucleus) pay the gathering code in every pass:
// about 15% more than before it.
struct candidates {
  float* v = nullptr;  // null: the block has no room for them
  int n = -1;          // this thread's count; -1 until the whole block's fit
  uint32_t low = 0;
  bool few = false;  // the last pass over the row moved the key past at most gather_below values

  template <typename F>
  __device__ __forceinline__ void for_each(F&& f) const {
    for (int s = 0; s < n; ++s) f(v[s * blockDim.x + threadIdx.x]);
  }
};

// The largest key K with (count or mass of values whose key >= K, and >= floor_key) >= need: the
// k-th largest logit, or the nucleus cut. Built from the top bits down, two bits a pass: of the
// three trials key | d << lo (d = 1, 2, 3), the largest that keeps `need` (the bit-by-bit search's
// answer, in half the passes over the row).
// Until the candidates fit, each pass over the row also gathers those of its lower bound.
template <bool by_mass>
__device__ uint32_t threshold(const row_view& r, float mx, float inv_t, uint32_t floor_key, float need,
                              float (*scratch)[32], candidates& cand) {
  uint32_t key = 0;
  for (int lo = 30; lo >= 0; lo -= 2) {
    const uint32_t t1 = key | (1u << lo), t2 = key | (2u << lo), t3 = key | (3u << lo);
    const uint32_t low = max(key, floor_key);
    float g1 = 0, g2 = 0, g3 = 0;
    int found = 0;
    float above = 0;  // values at or above t1
    // Gathering or not is decided at compile time, so that a pass that does not gather runs the
    // loads' unrolled loop without the stores (flat rows' passes, whose candidates never fit).
    const auto count = [&](float v, auto gather) {
      const uint32_t k = ordered(v);
      if (k < low) return;
      if constexpr (decltype(gather)::value) {
        if (found < slots) cand.v[found * blockDim.x + threadIdx.x] = v;
        ++found;
      }
      if (k < t1) return;
      const float w = by_mass ? __expf((v - mx) * inv_t) : 1.0f;
      above += 1.0f;
      g1 += w;
      if (k >= t2) g2 += w;
      if (k >= t3) g3 += w;
    };
    if (cand.n >= 0) {
      cand.for_each([&](float v) { count(v, std::false_type{}); });
      float g[3] = {g1, g2, g3};
      block_sums(g, scratch);
      g1 = g[0], g2 = g[1], g3 = g[2];
    } else {
      const bool gather = cand.v != nullptr && cand.few;
      if (gather) for_each_value(r, [&](int, float v) { count(v, std::true_type{}); });
      else for_each_value(r, [&](int, float v) { count(v, std::false_type{}); });
      float g[5] = {g1, g2, g3, above, gather && found > slots ? 1.0f : 0.0f};
      block_sums(g, scratch);
      g1 = g[0], g2 = g[1], g3 = g[2];
      // The next pass's values are those at or above the new key: when it moved, at most `above`.
      cand.few = g1 >= need && g[3] <= gather_below;
      if (gather && g[4] == 0) cand.n = found, cand.low = low;
    }
    key = g3 >= need ? t3 : g2 >= need ? t2 : g1 >= need ? t1 : key;
  }
  return key;
}

// The block's first largest value and its index (the lowest of equal values), in every thread;
// sv and si hold one a warp.
__device__ __forceinline__ void block_first_max(float& best, int& at, float* sv, int* si) {
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, best, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, at, o);
    if (i2 >= 0 && (at < 0 || v2 > best || (v2 == best && i2 < at))) best = v2, at = i2;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sv[warp] = best, si[warp] = at;
  __syncthreads();
  best = sv[0];
  at = si[0];
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w)
    if (si[w] >= 0 && (at < 0 || sv[w] > best || (sv[w] == best && si[w] < at))) best = sv[w], at = si[w];
}

// grid (parts, rows). A drawn row is one block (part 0; the others leave at once). A greedy row
// split in parts: each block finds the first largest of its range of ids and leaves it in the
// scratch, and the last block of the row to arrive (counted in counters[row], which it sets back
// to 0) picks the first largest of the parts' in part order: the whole row's first largest.
__global__ void __launch_bounds__(threads) sample_kernel(const float* logits, int vocab, int cache_floats,
                                                         bool with_candidates, const sample_params* params,
                                                         int32_t* tokens, sample_scratch::view split) {
  enter_in_order();
  extern __shared__ float cache[];  // a drawn row's first cache_floats values, then the candidates
  __shared__ float scratch[32];
  __shared__ float scratch5[5][32];
  __shared__ float sv[32];
  __shared__ int si[32];
  const int row = static_cast<int>(blockIdx.y), part = static_cast<int>(blockIdx.x), parts = static_cast<int>(gridDim.x);
  const sample_params p = params[row];
  const bool greedy = p.temperature <= 0 || p.top_k == 1;
  const float* const row_logits = logits + static_cast<size_t>(row) * vocab;
  float best = -INFINITY;
  int at = -1;
  const auto consider = [&](int i, float v) {
    if (at < 0 || v > best || (v == best && i < at)) best = v, at = i;
  };
  if (parts > 1) {
    if (!greedy) {
      if (part > 0) return;
    } else {
      // Ranges of a multiple of 4 ids, so that each starts 16-byte aligned where the row does.
      const int span = (vocab + 4 * parts - 1) / (4 * parts) * 4;
      const int begin = min(vocab, part * span), end = min(vocab, begin + span);
      for_each_uncached(row_view{row_logits, cache, end, begin}, consider);
      block_first_max(best, at, sv, si);
      __shared__ bool last;
      if (threadIdx.x == 0) {
        split.best[row * parts + part] = best;
        split.at[row * parts + part] = at;
        __threadfence();  // the part's answer is visible before it is counted
        last = atomicAdd(&split.counters[row], 1u) == static_cast<unsigned>(parts - 1);
      }
      __syncthreads();
      if (!last || threadIdx.x >= 32) return;
      __threadfence();
      best = -INFINITY, at = -1;
      for (int q = static_cast<int>(threadIdx.x); q < parts; q += 32)
        consider(__ldcg(split.at + row * parts + q), __ldcg(split.best + row * parts + q));
      for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_xor_sync(0xffffffffu, best, o);
        const int i2 = __shfl_xor_sync(0xffffffffu, at, o);
        if (i2 >= 0) consider(i2, v2);
      }
      if (threadIdx.x == 0) {
        tokens[row] = at;
        split.counters[row] = 0;
      }
      return;
    }
  }
  const row_view r{row_logits, cache, vocab, greedy ? 0 : cache_floats};
  // The first largest logit: the greedy answer, and the softmax's shift. The cached part is read
  // from global memory here, and kept.
  for (int i = static_cast<int>(threadIdx.x); i < r.cached; i += blockDim.x) {
    const float v = __ldcg(r.row + i);
    cache[i] = v;
    consider(i, v);
  }
  for_each_uncached(r, consider);
  block_first_max(best, at, sv, si);  // also: the cache is written
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (greedy) {
    if (threadIdx.x == 0) tokens[row] = at;
    return;
  }
  const float inv_t = 1.0f / p.temperature;
  uint32_t floor_key = 0;
  candidates cand;
  if (with_candidates) cand.v = cache + cache_floats;
  if (p.top_k > 0 && p.top_k < vocab)
    floor_key = threshold<false>(r, best, inv_t, 0, static_cast<float>(p.top_k), scratch5, cand);
  const auto kept_mass = [&] {
    float m = 0;
    const auto add = [&](float v) {
      if (ordered(v) >= floor_key) m += __expf((v - best) * inv_t);
    };
    if (cand.n >= 0 && floor_key >= cand.low) cand.for_each(add);
    else for_each_value(r, [&](int, float v) { add(v); });
    return block_sum_f(m, scratch);
  };
  float mass = kept_mass();
  if (p.top_p < 1) {
    floor_key = threshold<true>(r, best, inv_t, floor_key, p.top_p * mass * (1.0f - 1e-6f), scratch5, cand);
    mass = kept_mass();
  }
  // Inverse CDF over the kept tokens in id order: warp w sums the kept mass of ids [w span, (w + 1)
  // span), its lanes on consecutive ids (coalesced loads, no bank conflicts in the cache); the warps'
  // totals in order find the warp whose range holds the draw, and that warp walks its range again,
  // 32 ids a step with a scan across its lanes.
  const uint64_t z = mix64(p.seed ^ mix64(p.draw + 0x9e3779b97f4a7c15ull));
  const float target = static_cast<float>(static_cast<double>(z >> 11) * 0x1.0p-53) * mass;
  const int warps = static_cast<int>(blockDim.x >> 5);
  const int span = (vocab + warps - 1) / warps;
  const int begin = min(vocab, warp * span), end = min(vocab, begin + span);
  const auto weight = [&](int i, bool& kept) {
    const float v = r.at(i);
    kept = ordered(v) >= floor_key;
    return kept ? __expf((v - best) * inv_t) : 0.0f;
  };
  float mine = 0;
  int last_kept = -1;
  for (int i = begin + lane; i < end; i += 32) {
    bool kept;
    mine += weight(i, kept);
    if (kept) last_kept = i;
  }
  __shared__ float warp_total[32];
  __shared__ int warp_last[32];
  __shared__ int chosen, fallback, pick;
  __shared__ float chosen_before;
  mine = warp_sum(mine);
  last_kept = __reduce_max_sync(0xffffffffu, last_kept);
  if (lane == 0) warp_total[warp] = mine, warp_last[warp] = last_kept;
  __syncthreads();
  if (threadIdx.x == 0) {
    float acc = 0;
    int c = -1, f = -1;
    for (int w = 0; w < warps; ++w) {
      f = max(f, warp_last[w]);
      if (c < 0 && warp_total[w] > 0 && target >= acc && target < acc + warp_total[w]) c = w, chosen_before = acc;
      acc += warp_total[w];
    }
    chosen = c, fallback = f, pick = -1;
  }
  __syncthreads();
  if (warp == chosen) {
    float acc = chosen_before;
    int found = -1;
    for (int base = begin; base < end; base += 32) {
      const int i = base + lane;
      bool kept = false;
      const float w = i < end ? weight(i, kept) : 0.0f;
      float incl = w;
      for (int o = 1; o < 32; o <<= 1) {
        const float u = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += u;
      }
      const unsigned hit = __ballot_sync(0xffffffffu, w > 0 && target < acc + incl);
      if (hit != 0) {
        found = base + __ffs(hit) - 1;
        break;
      }
      acc += __shfl_sync(0xffffffffu, incl, 31);
    }
    // Rounding can leave the draw past the walk's last sum: the range's last kept token.
    if (lane == 0) pick = found >= 0 ? found : warp_last[warp];
  }
  __syncthreads();
  if (threadIdx.x == 0) tokens[row] = pick >= 0 ? pick : fallback;
}

}  // namespace device

sample_scratch::sample_scratch() {
  check(cudaMalloc(&v.counters, rows * sizeof(unsigned)));
  check(cudaMemset(v.counters, 0, rows * sizeof(unsigned)));
  check(cudaMalloc(&v.best, static_cast<size_t>(rows) * parts * sizeof(float)));
  check(cudaMalloc(&v.at, static_cast<size_t>(rows) * parts * sizeof(int32_t)));
}

sample_scratch::~sample_scratch() {
  cudaFree(v.counters);
  cudaFree(v.best);
  cudaFree(v.at);
}

int sample_parts(int n, int vocab, int sms) {
  if (n < 1 || n > sample_scratch::rows) return 1;
  return std::max(1, std::min({sample_scratch::parts, sms / n, vocab / 2048}));
}

void sample_rows(const float* logits, int vocab, const sample_params* params, int n, int32_t* tokens, cudaStream_t s,
                 const sample_scratch* split) {
  if (n == 0) return;
  // Shared memory for the candidates (32 KB) and a drawn row's first values (greedy rows use none
  // of it): up to cached_max of them, as many as the device lets a block have beside the kernel's
  // own 1.3 KB, a multiple of 4.
  int device_id = 0, optin = 0, sms = 0;
  check(cudaGetDevice(&device_id));
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_id));
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device_id));
  const int own = 2 * 1024, list_floats = device::slots * device::threads;
  const bool with_candidates = optin >= own + list_floats * 4;
  const int room = (optin - own - (with_candidates ? list_floats * 4 : 0)) / 4;
  const int cache_floats = std::max(0, std::min({vocab, device::cached_max, room})) / 4 * 4;
  const size_t smem = (static_cast<size_t>(cache_floats) + (with_candidates ? list_floats : 0)) * sizeof(float);
  check(cudaFuncSetAttribute(device::sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const int parts = split ? sample_parts(n, vocab, sms) : 1;
  const sample_scratch::view view = parts > 1 ? split->v : sample_scratch::view{};
  constexpr int max_rows = 65535;  // a launch's rows: the grid's second dimension
  for (int r0 = 0; r0 < n; r0 += max_rows) {
    const int rows = std::min(max_rows, n - r0);
    launch_early(device::sample_kernel, dim3(static_cast<unsigned>(parts), static_cast<unsigned>(rows)),
                 dim3(device::threads), smem, s, logits + static_cast<size_t>(r0) * vocab, vocab, cache_floats,
                 with_candidates, params + r0, tokens + r0, view);
    check_launch();
  }
}

}  // namespace tollgate::engine::cuda
