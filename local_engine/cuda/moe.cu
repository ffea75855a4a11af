#include "local_engine/cuda/moe.cuh"
#include "local_engine/cuda/route.cuh"

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace tollgate::engine::cuda {

namespace device {

// One block per token; experts <= 1024, groups <= 64, top_k <= 32.
__device__ void group_slots(const int32_t* ids, int total, int top_k, int experts, expert_groups out);

__global__ void route_kernel(const float* logits, const float* bias, router_config c, int32_t* ids, float* weights,
                             expert_groups groups, unsigned* arrivals, shared_experts shared) {
  enter_in_order();
  extern __shared__ float sm[];
  const float* row = logits + static_cast<size_t>(blockIdx.x) * (c.stride > 0 ? c.stride : c.experts);
  const int* chosen = route_token(row, bias, c, blockIdx.x, ids, weights, sm, shared);
  // One token (a sequence's decode step): its slots are grouped here, from `chosen`, without
  // the other blocks' ids to wait for.
  if (gridDim.x == 1) {
    group_lone_token(chosen, c, groups);
    return;
  }
  // The last token's block to finish groups every token's slots (arrivals is left at 0).
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(arrivals, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  group_slots(ids, static_cast<int>(gridDim.x) * c.top_k, c.top_k, c.experts, groups);
  if (threadIdx.x == 0) *arrivals = 0;
}

// Inclusive prefix sums of a and b over the block (blockDim.x <= 1024), in buf (2 x blockDim.x).
__device__ int2 block_scan2(int32_t a, int32_t b, int32_t* buf) {
  const int t = threadIdx.x, n = blockDim.x;
  buf[t] = a, buf[n + t] = b;
  __syncthreads();
  for (int o = 1; o < n; o <<= 1) {
    const int32_t add_a = t >= o ? buf[t - o] : 0, add_b = t >= o ? buf[n + t - o] : 0;
    __syncthreads();
    buf[t] += add_a, buf[n + t] += add_b;
    __syncthreads();
  }
  const int2 r{buf[t], buf[n + t]};
  __syncthreads();
  return r;
}

// Counts per expert in shared memory, their exclusive sums, the list of experts with rows, then
// each slot's place in its expert's rows (experts <= 1024). ids were written by other blocks:
// read through L2.
__device__ void group_slots(const int32_t* ids, int total, int top_k, int experts, expert_groups out) {
  __shared__ int32_t count[1024], cursor[1024], buf[2 * 256];
  for (int e = threadIdx.x; e < experts; e += blockDim.x) count[e] = 0;
  __syncthreads();
  // ids read `ahead` a thread at a time (a prompt's thousands of slots pass through this one
  // block: one load in flight a thread would make it a chain of L2 latencies).
  constexpr int ahead = 8;
  const int stride = static_cast<int>(blockDim.x);
  for (int k0 = threadIdx.x; k0 < total; k0 += ahead * stride) {
    int32_t id[ahead];
#pragma unroll
    for (int u = 0; u < ahead; ++u) id[u] = k0 + u * stride < total ? __ldcg(ids + k0 + u * stride) : -1;
#pragma unroll
    for (int u = 0; u < ahead; ++u)
      if (id[u] >= 0) atomicAdd(&count[id[u]], 1);
  }
  __syncthreads();
  // Thread t takes experts [t * per, (t + 1) * per): its rows and active experts, then the scans.
  const int per = (experts + blockDim.x - 1) / blockDim.x, e0 = threadIdx.x * per, e1 = min(experts, e0 + per);
  int32_t rows = 0, used = 0;
  for (int e = e0; e < e1; ++e) rows += count[e], used += count[e] > 0;
  const int2 incl = block_scan2(rows, used, buf);
  int32_t at = incl.x - rows, rank = incl.y - used;
  for (int e = e0; e < e1; ++e) {
    out.offsets[e] = at;
    cursor[e] = at;
    at += count[e];
    if (count[e] > 0) out.active[1 + rank++] = e;  // active[0] holds the count, the list follows
  }
  if (e0 < experts && e1 == experts) out.offsets[experts] = at, out.active[0] = rank;
  __syncthreads();
  for (int k0 = threadIdx.x; k0 < total; k0 += ahead * stride) {
    int32_t id[ahead];
#pragma unroll
    for (int u = 0; u < ahead; ++u) id[u] = k0 + u * stride < total ? __ldcg(ids + k0 + u * stride) : -1;
#pragma unroll
    for (int u = 0; u < ahead; ++u) {
      if (id[u] < 0) continue;
      const int k = k0 + u * stride;
      const int32_t r = atomicAdd(&cursor[id[u]], 1);
      out.row_token[r] = k / top_k;
      out.slot_row[k] = r;
    }
  }
}

template <typename T>
struct vec8 {
  float v[8];
  __device__ __forceinline__ void load(const T* p);
};
template <>
__device__ __forceinline__ void vec8<bf16>::load(const bf16* p) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}
template <>
__device__ __forceinline__ void vec8<float>::load(const float* p) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

constexpr int gemv_rows = 8;  // rows of one expert a warp carries at once

// grid (N / 8, experts), 8 warps: warp w computes column blockIdx.x * 8 + w for every row of the
// expert, streaming the weight row once per 8 rows.
template <typename T, bool vectorised>
__global__ void expert_gemv_kernel(const T* W, const T* x, const int32_t* x_rows, const int32_t* offsets,
                                   const int32_t* active, int N, int K, float* out) {
  if (static_cast<int>(blockIdx.y) >= active[0]) return;
  const int e = active[1 + blockIdx.y];
  const int r0 = offsets[e], r1 = offsets[e + 1];
  const int n = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (n >= N) return;
  const T* w = W + (static_cast<size_t>(e) * N + n) * K;
  for (int rb = r0; rb < r1; rb += gemv_rows) {
    const int nr = min(gemv_rows, r1 - rb);
    float acc[gemv_rows];
#pragma unroll
    for (int r = 0; r < gemv_rows; ++r) acc[r] = 0;
    if constexpr (vectorised) {
#pragma unroll 4
      for (int k = lane * 8; k < K; k += 256) {
        vec8<T> wv;
        wv.load(w + k);
#pragma unroll
        for (int r = 0; r < gemv_rows; ++r) {
          if (r < nr) {
            vec8<T> xv;
            xv.load(x + static_cast<size_t>(x_rows ? x_rows[rb + r] : rb + r) * K + k);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[r] += wv.v[i] * xv.v[i];
          }
        }
      }
    } else {
      for (int k = lane; k < K; k += 32) {
        const float wk = to_float(w[k]);
#pragma unroll
        for (int r = 0; r < gemv_rows; ++r)
          if (r < nr) acc[r] += wk * to_float(x[static_cast<size_t>(x_rows ? x_rows[rb + r] : rb + r) * K + k]);
      }
    }
#pragma unroll
    for (int r = 0; r < gemv_rows; ++r) {
      const float v = warp_sum(acc[r]);
      if (lane == 0 && r < nr) out[static_cast<size_t>(rb + r) * N + n] = v;
    }
  }
}

// bf16 tensor cores for the same product: mma.m16n8k16, 16 rows of an expert against 8 columns an
// n-tile. Each lane reads 16 bytes of a weight row at a time (k0 + 8q .. + 8); the 32 k values of a
// chunk feed two mma steps, with the same k order in A and B, so every weight byte is read once.
constexpr int mma_tiles = 2;   // n-tiles of 8 columns a warp carries
constexpr int mma_warps = 4;   // a block: 4 warps, 64 columns
constexpr int mma_ahead = 4;   // 32-value chunks whose loads are issued before their products

/// 8 weights of a row as the product reads them: 16 bytes of bf16, or 8 e4m3 bytes dequantised
/// with the row's scale for their block of columns (value * scale, rounded to bf16 as the loader
/// rounds it).
struct bf16_rows {
  const bf16* w;
  __device__ __forceinline__ const void* row(size_t r, int K) const { return w + r * K; }
  __device__ __forceinline__ uint4 load(const void* row, size_t, int unit) const {
    return load_streaming(reinterpret_cast<const uint4*>(row) + unit);
  }
};
struct fp8_rows {
  const uint8_t* w;
  const float* scales;
  int kb_shift, blocks;  // log2 of the scale block's columns; blocks a row
  __device__ __forceinline__ const void* row(size_t r, int K) const { return w + r * K; }
  __device__ __forceinline__ static uint32_t pair(uint32_t two, float s) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two), __NV_E4M3);
    const float2 f = __half22float2(__half2(h));
    const __nv_bfloat162 b = __floats2bfloat162_rn(f.x * s, f.y * s);
    return *reinterpret_cast<const uint32_t*>(&b);
  }
  __device__ __forceinline__ uint4 load(const void* row, size_t r, int unit) const {
    uint2 v;
    asm("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];\n"
        : "=r"(v.x), "=r"(v.y)
        : "l"(reinterpret_cast<const uint2*>(row) + unit));
    const float s = scales[r * blocks + ((unit * 8) >> kb_shift)];
    return make_uint4(pair(v.x & 0xffffu, s), pair(v.x >> 16, s), pair(v.y & 0xffffu, s), pair(v.y >> 16, s));
  }
};

// Work items are (active expert, 64-column slice); a persistent grid walks them, so the last wave
// is never a mostly idle one. K % 32 == 0 and N % 8 == 0. With KS == 2 a block has two groups of
// four warps over the same 64 columns, each over half of K (in 16-unit chunks), and the second
// group's sums are added to the first's through shared memory before the store: twice the weight
// bytes in flight for a decode step's few rows, and a row's bits the same at any batch size.
// With `act` (a gate-up product: N = 2 inter, gate rows then up rows), a warp's two tiles are 8
// gate rows and the 8 up rows of the same columns, and the store is act[r, col] = bf16(silu(gate) *
// up) (inter values a row) instead of out: silu_mul's values, without its kernel.
// With `sh.parts` (a down product), the shared experts' parts (bf16 weights whatever W's) come first
// in the item order, a (part, slice) each over all sh.rows tokens, and add their sums to sh.out.
// With `act` and `sh.gate_up`, the shared experts' gate-up parts come first the same way (part p's
// gate rows p inter .., its up rows (parts + p) inter ..), store into sh.act, and run before the
// block waits for the kernel before (moe.cuh: x is complete when this kernel is placed); a block
// waits before its first routed item, and before it zeroes sh.out at the end.
template <typename Rows, int KS>
__global__ void __launch_bounds__(128 * KS, 4 / KS) expert_mma_kernel(Rows W, const bf16* x, const int32_t* x_rows,
                                                                  const int32_t* offsets, const int32_t* active, int N,
                                                                  int K, int slices, int max_active, float* out,
                                                                  bf16* act, shared_experts sh, bool lone) {
  const bool early_shared = act && sh.gate_up;
  trigger_dependents();
  if (!early_shared) wait_for_prerequisites();
  bool waited = !early_shared;
  const int warp = (threadIdx.x >> 5) % mma_warps, kw = (threadIdx.x >> 5) / mma_warps;
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int units = K / 8;  // 16-byte units of a row
  constexpr int chunk = 4 * mma_ahead;
  const int per = ((units + KS - 1) / KS + chunk - 1) / chunk * chunk;
  const int k_begin = min(units, kw * per), k_end = min(units, k_begin + per);
  // A lone token's slots (group_lone_token): max_active distinct experts, listed by id, the y-th
  // with row y of the grouped rows, all of token 0: an item needs only its expert from `active`.
  int n_active = lone || early_shared ? max_active : active[0];  // read after the wait when early_shared
  const uint4 zero = make_uint4(0, 0, 0, 0);
  __shared__ float red[KS > 1 ? mma_warps : 1][mma_tiles][4][32];
  const int parts = act && !sh.gate_up ? 0 : sh.parts;  // a gate-up product takes shared items only with gate_up
  const int shared_items = parts * slices;
  const int inter = N / 2;
  for (int item = blockIdx.x; item < shared_items + max_active * slices; item += gridDim.x) {
    const bool is_sh = item < shared_items;
    if (!is_sh && !waited) {
      wait_for_prerequisites();
      waited = true;
      if (!lone) n_active = active[0];
    }
    const int y = is_sh ? item / slices : (item - shared_items) / slices, slice = item % slices;
    if (!is_sh && y >= n_active) break;  // routed items are ordered by y: the rest are idle too
    const int e = is_sh ? 0 : active[1 + y];
    const int r0 = is_sh ? 0 : lone ? y : offsets[e], r1 = is_sh ? sh.rows : lone ? y + 1 : offsets[e + 1];
    // A down product's shared part's rows of W and x: `parts * K` values apart, from column y K.
    const size_t sh_stride = static_cast<size_t>(parts) * K, sh_col = static_cast<size_t>(y) * K;
    const int n_base = act ? (slice * mma_warps + warp) * 8 : (slice * mma_warps + warp) * 8 * mma_tiles;
    const int n_end = act ? inter : N;
    if (KS == 1 && n_base >= n_end) continue;
    const bool cols_in = n_base < n_end;  // KS > 1: warps past N still meet the block's barriers
    const void* wrow[mma_tiles];
    size_t wr[mma_tiles];
#pragma unroll
    for (int t = 0; t < mma_tiles; ++t) {
      const int n = act ? t * inter + min(n_base + g, inter - 1) : min(n_base + t * 8 + g, N - 1);
      wr[t] = static_cast<size_t>(e) * N + n;
      // A gate-up product's shared part y: its gate row (or up row, t = 1) for column n - t inter.
      const size_t sh_gu_row = static_cast<size_t>(t * parts + y) * inter + (n - t * inter);
      wrow[t] = !is_sh ? W.row(wr[t], K)
                : act  ? static_cast<const void*>(sh.gate_up + sh_gu_row * K)
                       : static_cast<const void*>(sh.w + n * sh_stride + sh_col);
    }
    for (int rb = r0; rb < r1; rb += 16) {
      const int ra = rb + g, rc = rb + g + 8;
      const bool va = ra < r1, vc = rc < r1;
      const int xa_row = va ? ra : r0, xc_row = vc ? rc : r0;
      const int ta = x_rows && !is_sh ? (lone ? 0 : x_rows[xa_row]) : xa_row,
                tc = x_rows && !is_sh ? (lone ? 0 : x_rows[xc_row]) : xc_row;
      // Shared gate-up items read x through L2 (ld.cg): they run before this block's wait.
      const bool x_cg = is_sh && act;
      const uint4* xa = reinterpret_cast<const uint4*>(is_sh && !act ? sh.act + xa_row * sh_stride + sh_col
                                                                     : x + static_cast<size_t>(ta) * K);
      const uint4* xc = reinterpret_cast<const uint4*>(is_sh && !act ? sh.act + xc_row * sh_stride + sh_col
                                                                     : x + static_cast<size_t>(tc) * K);
      float c[mma_tiles][4];
#pragma unroll
      for (int t = 0; t < mma_tiles; ++t) c[t][0] = c[t][1] = c[t][2] = c[t][3] = 0;
      for (int k = cols_in ? k_begin : k_end; k < k_end; k += chunk) {
        uint4 A[mma_ahead], C[mma_ahead], B[mma_ahead][mma_tiles];
#pragma unroll
        for (int u = 0; u < mma_ahead; ++u) {
          const int at = k + 4 * u + q;
          const bool in = k + 4 * u < k_end;
          A[u] = va && in ? (x_cg ? __ldcg(xa + at) : xa[at]) : zero;
          C[u] = vc && in ? (x_cg ? __ldcg(xc + at) : xc[at]) : zero;
#pragma unroll
          for (int t = 0; t < mma_tiles; ++t)
            B[u][t] = !in ? zero : is_sh ? load_streaming(reinterpret_cast<const uint4*>(wrow[t]) + at) : W.load(wrow[t], wr[t], at);
        }
#pragma unroll
        for (int u = 0; u < mma_ahead; ++u) {
#pragma unroll
          for (int t = 0; t < mma_tiles; ++t) {
            mma_bf16(c[t], A[u].x, C[u].x, A[u].y, C[u].y, B[u][t].x, B[u][t].y);
            mma_bf16(c[t], A[u].z, C[u].z, A[u].w, C[u].w, B[u][t].z, B[u][t].w);
          }
        }
      }
      if constexpr (KS > 1) {
        if (kw == 1) {
#pragma unroll
          for (int t = 0; t < mma_tiles; ++t)
#pragma unroll
            for (int j = 0; j < 4; ++j) red[warp][t][j][lane] = c[t][j];
        }
        __syncthreads();
        if (kw == 0) {
#pragma unroll
          for (int t = 0; t < mma_tiles; ++t)
#pragma unroll
            for (int j = 0; j < 4; ++j) c[t][j] += red[warp][t][j][lane];
        }
        __syncthreads();  // red is free for the next row tile
        if (kw != 0 || !cols_in) continue;
      }
      if (act) {
        static_assert(mma_tiles == 2, "a gate tile and an up tile");
        // A shared part's act: parts * inter values a token, part y's from y inter.
        bf16* const dst = is_sh ? sh.act + y * inter : act;
        const size_t width = is_sh ? static_cast<size_t>(parts) * inter : inter;
        const int col = n_base + 2 * q;
        if (va)
          *reinterpret_cast<__nv_bfloat162*>(dst + static_cast<size_t>(ra) * width + col) =
              __floats2bfloat162_rn(silu_times(c[0][0], c[1][0]), silu_times(c[0][1], c[1][1]));
        if (vc)
          *reinterpret_cast<__nv_bfloat162*>(dst + static_cast<size_t>(rc) * width + col) =
              __floats2bfloat162_rn(silu_times(c[0][2], c[1][2]), silu_times(c[0][3], c[1][3]));
        continue;
      }
      if (is_sh) {
#pragma unroll
        for (int t = 0; t < mma_tiles; ++t) {
          const int col = n_base + t * 8 + 2 * q;
          if (col >= N) continue;
          float* o = sh.out + col;
          if (va) atomicAdd(o + static_cast<size_t>(ra) * N, c[t][0]), atomicAdd(o + static_cast<size_t>(ra) * N + 1, c[t][1]);
          if (vc) atomicAdd(o + static_cast<size_t>(rc) * N, c[t][2]), atomicAdd(o + static_cast<size_t>(rc) * N + 1, c[t][3]);
        }
        continue;
      }
#pragma unroll
      for (int t = 0; t < mma_tiles; ++t) {
        const int col = n_base + t * 8 + 2 * q;
        if (col >= N) continue;
        if (va) out[static_cast<size_t>(ra) * N + col] = c[t][0], out[static_cast<size_t>(ra) * N + col + 1] = c[t][1];
        if (vc) out[static_cast<size_t>(rc) * N + col] = c[t][2], out[static_cast<size_t>(rc) * N + col + 1] = c[t][3];
      }
    }
  }
  if (early_shared) {  // the shared sums, zeroed for the down product (nothing reads them before it)
    if (!waited) wait_for_prerequisites();
    const int n = static_cast<int>(gridDim.x * blockDim.x);
    for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < sh.rows * sh.hidden; i += n) sh.out[i] = 0.0f;
  }
}

// A lone token's expert products, each load of a warp reading whole 128-byte lines: 16 lanes a
// weight row, 256 bytes of it a load, where the fragments of expert_mma_kernel take 64 bytes of
// each of 8 rows (the same bytes read in that order run at about 3.4 TB/s against 4.0 for whole
// lines: tests/perf/weight_read_bench.cu). A warp's load covers two rows, A (lanes 0-15) and B
// (16-31); lane (g, q)'s unit of a 16-unit window is 4 (g % 4) + q, so the B fragment's column g
// holds a quarter of the window of row A (g < 4) or B. The token's row of x goes to A's row g with
// the same units, so that C[g][g] (lane (g, g / 2), element g % 2) sums column g's quarter; the
// other elements of C are products of mismatched units, and are not read. A row's sum is the sum
// of its four columns' diagonals, added in a fixed order (the same bits run after run).
// Items as expert_mma_kernel's (shared items first, then (expert y, slice)); a block of 8 warps,
// a warp 4 pairs of rows: ACT (gate-up with SiLU-mul at the store) a pair is column c's gate row
// and its up row, 32 columns an item; otherwise (down, 64 rows an item) rows n and n + 1. x's row
// is copied into shared memory once for the items that share it. Two windows of loads a round,
// the next round's asked for before this round's products.
template <bool ACT>
__global__ void __launch_bounds__(256, 2) expert_lone_kernel(const bf16* W, const bf16* x, const int32_t* active,
                                                             int N, int K, int slices, int max_active, float* out,
                                                             bf16* act, shared_experts sh) {
  extern __shared__ uint4 xs[];
  const bool early_shared = ACT && sh.gate_up;
  trigger_dependents();
  if (!early_shared) wait_for_prerequisites();
  bool waited = !early_shared;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int units = K / 8, windows = (units + 15) / 16;
  const int my_unit = 4 * (g & 3) + q, pair_row = g >> 2;
  const bool diagonal = q == (g >> 1);
  const int parts = ACT && !sh.gate_up ? 0 : sh.parts;
  const int shared_items = parts * slices;
  const int inter = ACT ? N / 2 : K;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const bf16* x_held = nullptr;
  for (int item = blockIdx.x; item < shared_items + max_active * slices; item += gridDim.x) {
    const bool is_sh = item < shared_items;
    if (!is_sh && !waited) {
      wait_for_prerequisites();
      waited = true;
    }
    const int y = is_sh ? item / slices : (item - shared_items) / slices, slice = item % slices;
    const size_t e = is_sh ? 0 : static_cast<size_t>(active[1 + y]);
    // This lane's row of each of the warp's four pairs.
    const uint4* row[4];
    int col[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      if constexpr (ACT) {
        const int c = slice * 32 + warp * 4 + p;
        col[p] = c;
        const size_t r = is_sh ? static_cast<size_t>(pair_row * parts + y) * inter + c
                               : e * N + static_cast<size_t>(pair_row) * inter + c;
        row[p] = reinterpret_cast<const uint4*>((is_sh ? sh.gate_up : W) + r * K);
      } else {
        const int n = slice * 64 + warp * 8 + 2 * p;
        col[p] = n;
        const int nr = min(n + pair_row, N - 1);
        row[p] = reinterpret_cast<const uint4*>(
            is_sh ? sh.w + static_cast<size_t>(nr) * parts * K + static_cast<size_t>(y) * K : W + (e * N + nr) * K);
      }
    }
    const auto load = [&](int r, uint4(&B)[2][4]) {
#pragma unroll
      for (int w = 0; w < 2; ++w) {
        const int unit = (2 * r + w) * 16 + my_unit;
#pragma unroll
        for (int p = 0; p < 4; ++p) B[w][p] = unit < units ? load_streaming(row[p] + unit) : zero;
      }
    };
    float c[4][4];
#pragma unroll
    for (int p = 0; p < 4; ++p) c[p][0] = c[p][1] = c[p][2] = c[p][3] = 0;
    const auto product = [&](int r, const uint4(&B)[2][4]) {
#pragma unroll
      for (int w = 0; w < 2; ++w) {
        const int unit = (2 * r + w) * 16 + my_unit;
        const uint4 xv = unit < units ? xs[unit] : zero;
#pragma unroll
        for (int p = 0; p < 4; ++p) {
          mma_bf16(c[p], xv.x, 0u, xv.y, 0u, B[w][p].x, B[w][p].y);
          mma_bf16(c[p], xv.z, 0u, xv.w, 0u, B[w][p].z, B[w][p].w);
        }
      }
    };
    const int rounds = (windows + 1) / 2;
    uint4 B0[2][4], B1[2][4];
    load(0, B0);
    // x's row for this item (the token's row for a gate-up product; a down item's expert or
    // shared part's activations), copied once for the items that share it, through L2 (shared
    // gate-up items run before the wait, on an x that was complete when this kernel was placed).
    const bf16* xr = ACT ? x : is_sh ? sh.act + static_cast<size_t>(y) * K : x + static_cast<size_t>(y) * K;
    if (xr != x_held) {
      __syncthreads();  // the last item's readers are done
      for (int u = threadIdx.x; u < units; u += blockDim.x) xs[u] = __ldcg(reinterpret_cast<const uint4*>(xr) + u);
      __syncthreads();
      x_held = xr;
    }
    for (int r = 0;;) {
      if (r + 1 < rounds) load(r + 1, B1);
      product(r, B0);
      if (++r >= rounds) break;
      if (r + 1 < rounds) load(r + 1, B0);
      product(r, B1);
      if (++r >= rounds) break;
    }
    // Each row's sum: its four diagonal elements, in lane order within its half of the warp.
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      float d = diagonal ? ((g & 1) ? c[p][1] : c[p][0]) : 0.0f;
#pragma unroll
      for (int off = 8; off >= 1; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
      const float b = __shfl_sync(0xffffffffu, d, 16);  // row B's sum, to lane 0
      if constexpr (ACT) {
        if (lane == 0) {
          bf16* dst = is_sh ? sh.act + static_cast<size_t>(y) * inter : act + static_cast<size_t>(y) * inter;
          dst[col[p]] = __float2bfloat16_rn(silu_times(d, b));
        }
      } else {
        if (lane == 0 && col[p] < N) {
          if (is_sh) {
            atomicAdd(sh.out + col[p], d);
            if (col[p] + 1 < N) atomicAdd(sh.out + col[p] + 1, b);
          } else {
            out[static_cast<size_t>(y) * N + col[p]] = d;
            if (col[p] + 1 < N) out[static_cast<size_t>(y) * N + col[p] + 1] = b;
          }
        }
      }
    }
  }
  if (early_shared) {  // the shared sums, zeroed for the down product (nothing reads them before it)
    if (!waited) wait_for_prerequisites();
    const int n = static_cast<int>(gridDim.x * blockDim.x);
    for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < sh.rows * sh.hidden; i += n) sh.out[i] = 0.0f;
  }
}

/// c += a . b on FP8 tensor cores: mma.m16n8k32, e4m3 A (16 x 32, row-major) and B (32 x 8).
__device__ __forceinline__ void mma_e4m3(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();  // the host checks the compute capability before it launches FP8 products
#endif
}

constexpr int fp8_ahead = 2;  // blocks of 128 values whose loads are issued before their products

// As expert_mma_kernel, on FP8 tensor cores. A lane reads 16 bytes of a row at a time (64-value
// chunk k0, bytes k0 + 16q .. + 16); the same byte order in A and B feeds two mma steps of 32, so
// every weight byte is read once. Each block of 128 values is summed apart and added to the total
// times its two scales. K % 128 == 0, N % 8 == 0.
__global__ void __launch_bounds__(128, 4) expert_fp8_mma_kernel(const uint8_t* W, const float* w_scales,
                                                             const uint8_t* xq, const float* x_scales,
                                                             const int32_t* x_rows, const int32_t* offsets,
                                                             const int32_t* active, int N, int K, int slices,
                                                             int max_active, float* out) {
  enter_in_order();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int blocks = K / 128;
  const int n_active = active[0];
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int item = blockIdx.x; item < max_active * slices; item += gridDim.x) {
    const int y = item / slices, slice = item % slices;
    if (y >= n_active) break;
    const int e = active[1 + y];
    const int r0 = offsets[e], r1 = offsets[e + 1];
    const int n_base = (slice * mma_warps + warp) * 8 * mma_tiles;
    if (n_base >= N) continue;
    const uint4* wrow[mma_tiles];
    const float* ws0[mma_tiles];  // scales of the two columns this lane's sums belong to
    const float* ws1[mma_tiles];
#pragma unroll
    for (int t = 0; t < mma_tiles; ++t) {
      const size_t row = static_cast<size_t>(e) * N + min(n_base + t * 8 + g, N - 1);
      wrow[t] = reinterpret_cast<const uint4*>(W + row * K);
      const size_t col = static_cast<size_t>(e) * N + min(n_base + t * 8 + 2 * q, N - 2);
      ws0[t] = w_scales + col * blocks;
      ws1[t] = w_scales + (col + 1) * blocks;
    }
    for (int rb = r0; rb < r1; rb += 16) {
      const int ra = rb + g, rc = rb + g + 8;
      const bool va = ra < r1, vc = rc < r1;
      const int xa_row = x_rows ? x_rows[va ? ra : r0] : (va ? ra : r0);
      const int xc_row = x_rows ? x_rows[vc ? rc : r0] : (vc ? rc : r0);
      const uint4* xa = reinterpret_cast<const uint4*>(xq + static_cast<size_t>(xa_row) * K);
      const uint4* xc = reinterpret_cast<const uint4*>(xq + static_cast<size_t>(xc_row) * K);
      const float* sa = x_scales + static_cast<size_t>(xa_row) * blocks;
      const float* sc = x_scales + static_cast<size_t>(xc_row) * blocks;
      float c[mma_tiles][4];
#pragma unroll
      for (int t = 0; t < mma_tiles; ++t) c[t][0] = c[t][1] = c[t][2] = c[t][3] = 0;
      for (int b0 = 0; b0 < blocks; b0 += fp8_ahead) {
        // Two 64-value chunks a block: 16-byte unit (block * 8 + chunk * 4 + q) of a row.
        uint4 A[fp8_ahead][2], C[fp8_ahead][2], B[fp8_ahead][2][mma_tiles];
#pragma unroll
        for (int j = 0; j < fp8_ahead; ++j) {
          const bool in = b0 + j < blocks;
#pragma unroll
          for (int ch = 0; ch < 2; ++ch) {
            const int at = (b0 + j) * 8 + ch * 4 + q;
            A[j][ch] = va && in ? xa[at] : zero;
            C[j][ch] = vc && in ? xc[at] : zero;
#pragma unroll
            for (int t = 0; t < mma_tiles; ++t) B[j][ch][t] = in ? load_streaming(wrow[t] + at) : zero;
          }
        }
#pragma unroll
        for (int j = 0; j < fp8_ahead; ++j) {
          const int blk = b0 + j;
          if (blk >= blocks) break;
          const float xa_s = va ? sa[blk] : 0.0f, xc_s = vc ? sc[blk] : 0.0f;
#pragma unroll
          for (int t = 0; t < mma_tiles; ++t) {
            float part[4] = {0, 0, 0, 0};
#pragma unroll
            for (int ch = 0; ch < 2; ++ch) {
              const uint4 a = A[j][ch], cr = C[j][ch], b = B[j][ch][t];
              mma_e4m3(part, a.x, cr.x, a.y, cr.y, b.x, b.y);
              mma_e4m3(part, a.z, cr.z, a.w, cr.w, b.z, b.w);
            }
            const float w0 = ws0[t][blk], w1 = ws1[t][blk];
            c[t][0] += part[0] * (xa_s * w0);
            c[t][1] += part[1] * (xa_s * w1);
            c[t][2] += part[2] * (xc_s * w0);
            c[t][3] += part[3] * (xc_s * w1);
          }
        }
      }
#pragma unroll
      for (int t = 0; t < mma_tiles; ++t) {
        const int col = n_base + t * 8 + 2 * q;
        if (col >= N) continue;
        if (va) out[static_cast<size_t>(ra) * N + col] = c[t][0], out[static_cast<size_t>(ra) * N + col + 1] = c[t][1];
        if (vc) out[static_cast<size_t>(rc) * N + col] = c[t][2], out[static_cast<size_t>(rc) * N + col + 1] = c[t][3];
      }
    }
  }
}

// One warp per block of 128 values of a row: grid (K / 128 / 4, rows), 4 warps.
__global__ void quantise_rows_fp8_kernel(const bf16* x, int K, int blocks, uint8_t* q, float* scales) {
  enter_in_order();
  const int blk = blockIdx.x * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (blk >= blocks) return;
  const size_t at = static_cast<size_t>(blockIdx.y) * K + static_cast<size_t>(blk) * 128 + lane * 4;
  const uint2 raw = *reinterpret_cast<const uint2*>(x + at);
  const __nv_bfloat162 p0 = *reinterpret_cast<const __nv_bfloat162*>(&raw.x);
  const __nv_bfloat162 p1 = *reinterpret_cast<const __nv_bfloat162*>(&raw.y);
  const float v[4] = {__low2float(p0), __high2float(p0), __low2float(p1), __high2float(p1)};
  float m = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
  m = warp_max(m);
  const float s = m > 0.0f ? m / 448.0f : 1.0f;
  uint32_t packed = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i)
    packed |= static_cast<uint32_t>(__nv_cvt_float_to_fp8(v[i] / s, __NV_SATFINITE, __NV_E4M3)) << (8 * i);
  *reinterpret_cast<uint32_t*>(q + at) = packed;
  if (lane == 0) scales[static_cast<size_t>(blockIdx.y) * blocks + blk] = s;
}

// One block per row of expert e: out[n, k] = bf16(e4m3 * scale), as the loader dequantises.
__global__ void dequantise_kernel(const uint8_t* w, const float* scales, int K, int kb_shift, int blocks, bf16* out) {
  const size_t r = blockIdx.x;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(w[r * K + k]), __NV_E4M3);
    out[r * K + k] = __float2bfloat16_rn(__half2float(__half(h)) * scales[r * blocks + (k >> kb_shift)]);
  }
}

// dequantise_kernel 8 values a thread (K % 8 == 0, scale blocks of 8 columns or more): the same values.
__global__ void dequantise8_kernel(const uint8_t* w, const float* scales, int K, int kb_shift, int blocks, bf16* out) {
  const size_t r = blockIdx.x;
  const int units = K / 8;
  for (int u = threadIdx.x; u < units; u += blockDim.x) {
    const uint2 v = reinterpret_cast<const uint2*>(w + r * K)[u];
    const float sc = scales[r * blocks + ((u * 8) >> kb_shift)];
    reinterpret_cast<uint4*>(out + r * K)[u] = make_uint4(fp8_rows::pair(v.x & 0xffffu, sc), fp8_rows::pair(v.x >> 16, sc),
                                                          fp8_rows::pair(v.y & 0xffffu, sc), fp8_rows::pair(v.y >> 16, sc));
  }
}

__global__ void fill_random_fp8_kernel(uint8_t* w, float* scales, size_t rows, int K, int blocks, uint64_t seed,
                                       float spread, float scale) {
  const size_t n = rows * static_cast<size_t>(K);
  for (size_t k = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint64_t z = mix64(seed * 0x9e3779b97f4a7c15ull + k + 1);
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    w[k] = __nv_cvt_float_to_fp8(spread * 1.7320508f * (2.0f * u - 1.0f), __NV_SATFINITE, __NV_E4M3);
    if (k < rows * static_cast<size_t>(blocks)) scales[k] = scale;
  }
}

}  // namespace device

namespace {
/// The grouped products' work items are (active expert, 64-column slice) walked by a persistent
/// grid of up to `per_sm` blocks a multiprocessor: the slices a matrix has, and the grid.
std::pair<int, int> persistent_grid(int N, int max_active, int per_sm = 4) {
  const int cols = 8 * device::mma_tiles * device::mma_warps;
  const int slices = (N + cols - 1) / cols;
  int device_id = 0, sms = 0;
  check(cudaGetDevice(&device_id));
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device_id));
  return {slices, std::min(slices * max_active, sms * per_sm)};
}

/// TOLLGATE_ENGINE_EXPERT_KSPLIT=1: the bf16 and FP8-weight expert products with one group of
/// warps a block over all of K (for measurements); 2 (the default) splits K between two.
int expert_ksplit() {
  static const int v = [] {
    const char* e = std::getenv("TOLLGATE_ENGINE_EXPERT_KSPLIT");
    return e && std::string(e) == "1" ? 1 : 2;
  }();
  return v;
}

template <typename Rows>
void launch_expert_mma(const Rows& W, const bf16* x, const int32_t* x_rows, const int32_t* offsets,
                       const int32_t* active, int max_active, int N, int K, float* out, cudaStream_t s,
                       bf16* act = nullptr, const shared_experts& sh = {}, bool lone = false, bool lines = false) {
  // The shared parts take max_active's place in the grid's size: `parts` more expert-sized items.
  const int extra = act && !sh.gate_up ? 0 : sh.parts;
  if constexpr (std::is_same_v<Rows, device::bf16_rows>) {
    // A lone token's bf16 products (x's row, K * 2 bytes, in the default 48 KB of shared memory).
    if (lone && lines && sh.rows <= 1 && K % 8 == 0 && K <= 24576) {
      const auto [slices, grid] = persistent_grid(N, max_active + extra, 2);  // 32 columns or 64 rows an item
      const size_t smem = sizeof(bf16) * static_cast<size_t>(K);
      if (act)
        launch_early(device::expert_lone_kernel<true>, dim3(grid), dim3(256), smem, s, W.w, x, active, N, K, slices,
                     max_active, out, act, sh);
      else
        launch_early(device::expert_lone_kernel<false>, dim3(grid), dim3(256), smem, s, W.w, x, active, N, K, slices,
                     max_active, out, act, sh);
      check_launch();
      return;
    }
  }
  if (expert_ksplit() == 2) {
    const auto [slices, grid] = persistent_grid(N, max_active + extra, 2);
    launch_early(device::expert_mma_kernel<Rows, 2>, dim3(grid), dim3(256), 0, s, W, x, x_rows, offsets, active, N, K,
                 slices, max_active, out, act, sh, lone);
  } else {
    const auto [slices, grid] = persistent_grid(N, max_active + extra);
    launch_early(device::expert_mma_kernel<Rows, 1>, dim3(grid), dim3(128), 0, s, W, x, x_rows, offsets, active, N, K,
                 slices, max_active, out, act, sh, lone);
  }
  check_launch();
}
}  // namespace

void expert_gemv_fp8(const fp8_experts& W, const bf16* x, const int32_t* x_rows, const int32_t* offsets,
                     const int32_t* active, int max_active, int N, int K, float* out, cudaStream_t s,
                     const shared_experts& shared) {
  if (max_active == 0) return;
  if (K % 32 != 0 || N % 8 != 0) throw std::logic_error("expert_gemv_fp8: K % 32 and N % 8 must be 0");
  if (shared.parts && (shared.hidden != N || shared.inter != K || !shared_in_experts_fits(K, shared.parts, N)))
    throw std::logic_error("expert_gemv_fp8: shared experts of other shapes");
  const int blocks = (K + (1 << W.kb_shift) - 1) >> W.kb_shift;
  launch_expert_mma(device::fp8_rows{W.w, W.scales, W.kb_shift, blocks}, x, x_rows, offsets, active, max_active, N, K,
                    out, s, nullptr, shared);
}

void quantise_rows_fp8(const bf16* x, int rows, int K, uint8_t* q, float* scales, cudaStream_t s) {
  if (rows == 0) return;
  if (K % 128 != 0) throw std::logic_error("quantise_rows_fp8: K % 128 must be 0");
  const int blocks = K / 128;
  for (int r0 = 0; r0 < rows; r0 += 65535) {
    const int n = std::min(rows - r0, 65535);
    const dim3 grid(static_cast<unsigned>((blocks + 3) / 4), static_cast<unsigned>(n));
    launch_early(device::quantise_rows_fp8_kernel, grid, dim3(128), 0, s, x + static_cast<size_t>(r0) * K, K, blocks,
                 q + static_cast<size_t>(r0) * K, scales + static_cast<size_t>(r0) * blocks);
    check_launch();
  }
}

void expert_fp8_mma(const fp8_experts& W, const uint8_t* xq, const float* xs, const int32_t* x_rows,
                    const int32_t* offsets, const int32_t* active, int max_active, int N, int K, float* out,
                    cudaStream_t s) {
  if (max_active == 0) return;
  if (!fp8_mma_fits(N, K, W.kb_shift)) throw std::logic_error("expert_fp8_mma: shapes or scale blocks do not fit");
  const auto [slices, grid] = persistent_grid(N, max_active);
  launch_early(device::expert_fp8_mma_kernel, dim3(grid), dim3(128), 0, s, W.w, W.scales, xq, xs, x_rows, offsets,
               active, N, K, slices, max_active, out);
  check_launch();
}

void dequantise_expert(const fp8_experts& W, int e, int N, int K, bf16* out, cudaStream_t s) {
  dequantise_experts(W, e, 1, N, K, out, s);
}

void dequantise_experts(const fp8_experts& W, int e, int count, int N, int K, bf16* out, cudaStream_t s) {
  if (count <= 0) return;
  const int blocks = (K + (1 << W.kb_shift) - 1) >> W.kb_shift;
  const size_t first = static_cast<size_t>(e) * N;
  const unsigned grid = static_cast<unsigned>(count) * N;
  if (K % 8 == 0 && W.kb_shift >= 3 && reinterpret_cast<uintptr_t>(out) % 16 == 0)
    device::dequantise8_kernel<<<grid, 128, 0, s>>>(W.w + first * K, W.scales + first * blocks, K, W.kb_shift, blocks, out);
  else
    device::dequantise_kernel<<<grid, 256, 0, s>>>(W.w + first * K, W.scales + first * blocks, K, W.kb_shift, blocks, out);
  check_launch();
}

void fill_random_fp8(uint8_t* w, float* scales, size_t rows, int K, int kb_shift, uint64_t seed, float stddev,
                     cudaStream_t s) {
  const int blocks = (K + (1 << kb_shift) - 1) >> kb_shift;
  // Values spread over about +-28 in e4m3 (16 times the scale), where it keeps 3 bits of mantissa.
  const float scale = stddev / 16.0f;
  const size_t n = rows * static_cast<size_t>(K);
  const unsigned grid = static_cast<unsigned>(std::min<size_t>((n + 255) / 256, 65536));
  device::fill_random_fp8_kernel<<<grid, 256, 0, s>>>(w, scales, rows, K, blocks, seed, 16.0f, scale);
  check_launch();
}

void route_and_group(const float* logits, const float* correction_bias, const router_config& c, int n, int32_t* ids,
                     float* weights, const expert_groups& groups, unsigned* arrivals, cudaStream_t s,
                     const shared_experts& shared) {
  if (n == 0) return;
  if (c.experts > 1024 || c.groups > 64 || c.top_k > 32)
    throw std::runtime_error("the GPU router takes up to 1024 experts, 64 groups and top 32");
  const size_t smem = sizeof(float) * (2 * static_cast<size_t>(c.experts) + c.groups);
  launch_early(device::route_kernel, dim3(n), dim3(256), smem, s, logits, correction_bias, c, ids, weights, groups,
               arrivals, shared);
}

template <typename T>
void expert_gemv(const T* W, const T* x, const int32_t* x_rows, const int32_t* offsets, const int32_t* active,
                 int max_active, int N, int K, float* out, cudaStream_t s) {
  if (max_active == 0) return;
  if constexpr (std::is_same_v<T, bf16>) {
    if (K % 32 == 0 && N % 8 == 0) {
      launch_expert_mma(device::bf16_rows{W}, x, x_rows, offsets, active, max_active, N, K, out, s);
      return;
    }
  }
  const dim3 grid(static_cast<unsigned>((N + 7) / 8), static_cast<unsigned>(max_active));
  if (K % 8 == 0) device::expert_gemv_kernel<T, true><<<grid, 256, 0, s>>>(W, x, x_rows, offsets, active, N, K, out);
  else device::expert_gemv_kernel<T, false><<<grid, 256, 0, s>>>(W, x, x_rows, offsets, active, N, K, out);
  check_launch();
}

void expert_down_with_shared(const bf16* W, const bf16* act, const int32_t* offsets, const int32_t* active,
                             int max_active, int hidden, int inter, float* out, const shared_experts& shared,
                             cudaStream_t s, bool lone_token, bool whole_lines) {
  if (!shared_in_experts_fits(inter, shared.parts, hidden) || shared.hidden != hidden || shared.inter != inter)
    throw std::logic_error("expert_down_with_shared: shapes the tensor-core product does not take");
  launch_expert_mma(device::bf16_rows{W}, act, nullptr, offsets, active, max_active, hidden, inter, out, s, nullptr,
                    shared, lone_token, whole_lines);
}

bool expert_gate_up_silu_fits(int inter, int K) { return inter > 0 && inter % 32 == 0 && K % 32 == 0; }

void expert_gate_up_silu(const bf16* W, const bf16* x, const int32_t* x_rows, const int32_t* offsets,
                         const int32_t* active, int max_active, int inter, int K, bf16* act, cudaStream_t s,
                         const shared_experts& shared, bool lone_token, bool whole_lines) {
  if (max_active == 0) return;
  if (!expert_gate_up_silu_fits(inter, K))
    throw std::logic_error("expert_gate_up_silu: inter % 32 and K % 32 must be 0");
  if (shared.gate_up && (shared.inter != inter || shared.hidden != K || shared.rows < 1 ||
                         !shared_in_experts_fits(inter, shared.parts, K)))
    throw std::logic_error("expert_gate_up_silu: shared experts of other shapes");
  // Slices of 32 gate columns (with their 32 up columns): as many as of 64 columns of [2 inter].
  launch_expert_mma(device::bf16_rows{W}, x, x_rows, offsets, active, max_active, 2 * inter, K, nullptr, s, act,
                    shared, lone_token, whole_lines);
}

template void expert_gemv<float>(const float*, const float*, const int32_t*, const int32_t*, const int32_t*, int, int,
                                 int, float*, cudaStream_t);
template void expert_gemv<bf16>(const bf16*, const bf16*, const int32_t*, const int32_t*, const int32_t*, int, int, int,
                                float*, cudaStream_t);

}  // namespace tollgate::engine::cuda
