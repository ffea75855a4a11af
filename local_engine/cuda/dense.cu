#include "local_engine/cuda/dense.cuh"
#include "local_engine/cuda/route.cuh"
#include "local_engine/cuda/tensor_core.cuh"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace tollgate::engine::cuda {

namespace device {

constexpr int skinny_warps = 4;  // a block: 4 warps side by side over the columns
constexpr int skinny_tiles = 2;  // n-tiles of 8 columns a warp carries: a block owns 64 columns
constexpr int skinny_ahead = 4;  // 32-value chunks of a weight row whose loads are issued together
constexpr int skinny_cols = 8 * skinny_tiles * skinny_warps;
constexpr int skinny_chunk_units = 4 * skinny_ahead;  // 16-byte units a warp covers an iteration
constexpr int staged_threads = 256;
constexpr int staged_units = 12;                   // 16-byte units of x a lane holds: K up to 3,072
constexpr size_t staged_max_bytes = 120 * 1024;    // weight bytes a block of staged_row_kernel holds

// A warp's two 8-row tiles of W from column n_base (rows past N repeat row N - 1). The weights do
// not depend on the kernel before: their first lines are asked of L2 while that kernel finishes
// (up to 1 KB of each row's units [u0, u1); lane q takes lines q, q + 4).
__device__ __forceinline__ void skinny_rows_ahead(const bf16* W, int N, int K, int n_base, int u0, int u1,
                                                  const uint4* (&wrow)[skinny_tiles]) {
  const int g = (threadIdx.x & 31) >> 2, q = threadIdx.x & 3;
#pragma unroll
  for (int t = 0; t < skinny_tiles; ++t) {
    const int n = min(n_base + t * 8 + g, N - 1);
    wrow[t] = reinterpret_cast<const uint4*>(W + static_cast<size_t>(n) * K);
  }
#pragma unroll
  for (int t = 0; t < skinny_tiles; ++t)
    for (int j = q; j < 8; j += 4)
      if (u0 + 8 * j < u1) prefetch_l2(wrow[t] + u0 + 8 * j);
}

// A lone row's sums of a warp's 16 columns (rows n_base .. of W, N rows) over units [u0, u1),
// each load reading whole 128-byte lines, as expert_lone_kernel (moe.cu) does: a load covers two
// rows, 256 bytes of each (lanes 0-15 row 2p, 16-31 row 2p + 1, lane (g, q) unit 4 (g % 4) + q of a
// 16-unit window), x's row goes to A's row g with the same units, and a row's sum is the sum of its
// four columns' diagonals C[g][g]. The sums land where the fragments' would for row 0: lane q
// (g == 0) holds columns 8t + 2q and 8t + 2q + 1 in c[0][t][0..1] (the rest of c is 0). The next
// window's loads are asked for before this one's products.
__device__ __forceinline__ void skinny_lone_sums(const bf16* W, int N, int K, int n_base, const uint4* xv, int u0,
                                                 int u1, float (&c)[skinny_tiles][4]) {
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int my_unit = 4 * (g & 3) + q, half = g >> 2;
  const uint4* row[8];
#pragma unroll
  for (int p = 0; p < 8; ++p)
    row[p] = reinterpret_cast<const uint4*>(W + static_cast<size_t>(min(n_base + 2 * p + half, N - 1)) * K);
  float acc[8][4];
#pragma unroll
  for (int p = 0; p < 8; ++p) acc[p][0] = acc[p][1] = acc[p][2] = acc[p][3] = 0;
  const auto load = [&](int k, uint4(&B)[8]) {
    const int unit = k + my_unit;
#pragma unroll
    for (int p = 0; p < 8; ++p) B[p] = unit < u1 ? load_streaming(row[p] + unit) : zero;
  };
  const auto product = [&](int k, const uint4(&B)[8]) {
    const int unit = k + my_unit;
    const uint4 xr = unit < u1 ? xv[unit] : zero;
#pragma unroll
    for (int p = 0; p < 8; ++p) {
      mma_bf16(acc[p], xr.x, 0u, xr.y, 0u, B[p].x, B[p].y);
      mma_bf16(acc[p], xr.z, 0u, xr.w, 0u, B[p].z, B[p].w);
    }
  };
  if (u0 < u1) {
    uint4 B0[8], B1[8];
    int k = u0;
    load(k, B0);
    for (;;) {
      if (k + 16 < u1) load(k + 16, B1);
      product(k, B0);
      if ((k += 16) >= u1) break;
      if (k + 16 < u1) load(k + 16, B0);
      product(k, B1);
      if ((k += 16) >= u1) break;
    }
  }
#pragma unroll
  for (int t = 0; t < skinny_tiles; ++t) c[t][0] = c[t][1] = c[t][2] = c[t][3] = 0;
  const bool diagonal = q == (g >> 1);
#pragma unroll
  for (int p = 0; p < 8; ++p) {
    float d = diagonal ? ((g & 1) ? acc[p][1] : acc[p][0]) : 0.0f;
#pragma unroll
    for (int off = 8; off >= 1; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
    const float b = __shfl_sync(0xffffffffu, d, 16);  // row 2p + 1's sum
    if (lane == (p & 3)) c[p >> 2][0] = d, c[p >> 2][1] = b;
  }
}

// One warp's sums of its 16 columns (rows wrow of W) over units [u0, u1) against every row tile
// of x (rows at xa and xc, as 16-byte unit offsets): weights streamed past L1 once, x from L1.
// `lone` (one row of x, RT 1): skinny_lone_sums instead, from column n_base of W.
template <int RT>
__device__ __forceinline__ void skinny_warp_sums(const uint4* const (&wrow)[skinny_tiles], const uint4* xv,
                                                 const int (&xa)[RT], const int (&xc)[RT], int u0, int u1,
                                                 float (&c)[RT][skinny_tiles][4], bool lone = false,
                                                 const bf16* W = nullptr, int N = 0, int K = 0, int n_base = 0) {
  if constexpr (RT == 1) {
    if (lone) return skinny_lone_sums(W, N, K, n_base, xv, u0, u1, c[0]);
  }
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const int q = threadIdx.x & 3;
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int t = 0; t < skinny_tiles; ++t) c[r][t][0] = c[r][t][1] = c[r][t][2] = c[r][t][3] = 0;
  for (int k = u0; k < u1; k += skinny_chunk_units) {
    uint4 B[skinny_ahead][skinny_tiles];
#pragma unroll
    for (int u = 0; u < skinny_ahead; ++u) {
      const bool in = k + 4 * u < u1;
#pragma unroll
      for (int t = 0; t < skinny_tiles; ++t) B[u][t] = in ? load_streaming(wrow[t] + k + 4 * u + q) : zero;
    }
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      uint4 A[skinny_ahead], C[skinny_ahead];
#pragma unroll
      for (int u = 0; u < skinny_ahead; ++u) {
        const bool in = k + 4 * u < u1;
        A[u] = in ? xv[xa[r] + k + 4 * u] : zero;
        C[u] = in ? xv[xc[r] + k + 4 * u] : zero;
      }
#pragma unroll
      for (int u = 0; u < skinny_ahead; ++u) {
#pragma unroll
        for (int t = 0; t < skinny_tiles; ++t) {
          mma_bf16(c[r][t], A[u].x, C[u].x, A[u].y, C[u].y, B[u][t].x, B[u][t].y);
          mma_bf16(c[r][t], A[u].z, C[u].z, A[u].w, C[u].w, B[u][t].z, B[u][t].w);
        }
      }
    }
  }
}

// grid (column blocks, K slices), or with lead blocks one dimension (block_of). Each warp owns 16
// columns of one K slice and carries every row tile (16 rows each) of x against them: the weight chunk is loaded once (streamed past L1) and
// used for all RT row tiles; the four warps of a block read the same x values, which L1 serves.
// The k order within a 32-value chunk is permuted alike in A and B (lane q holds units q, q + 4,
// ...), as in the expert kernel. Rows past M repeat row M - 1 and are never stored.
// With K split (to_partial), each block stores its slice's sums, and the last block of a column
// block to arrive (counted in counters[column block], which it sets back to 0) adds the slices in
// slice order into y: the same bits whatever the order the blocks ran in.
// With `route` (one row, float y), the last block of the column blocks that hold the router's
// logits routes the token (skinny_route in dense.cuh): with the router's columns as lead blocks,
// their slices are placed first and read less, so the routing overlaps the rest of the product.
// A plan with lead blocks (skinny_plan) takes a one-dimensional grid: the lead column blocks'
// slices first, then the other column blocks' slices, column blocks fastest.
struct skinny_block {
  int column_block, slice, slices, units_per_split;
};

__device__ __forceinline__ skinny_block block_of(const skinny_plan& plan, int N) {
  if (plan.lead_blocks == 0)
    return {static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y), static_cast<int>(gridDim.y),
            plan.units_per_split};
  const int b = static_cast<int>(blockIdx.x), lead = plan.lead_blocks * plan.lead_splits;
  if (b < lead) return {b % plan.lead_blocks, b / plan.lead_blocks, plan.lead_splits, plan.lead_units};
  const int rest = (N + skinny_cols - 1) / skinny_cols - plan.lead_blocks;
  return {plan.lead_blocks + (b - lead) % rest, (b - lead) / rest, plan.splits, plan.units_per_split};
}

template <int RT, bool to_partial, typename OutT, bool route = false>
__global__ void __launch_bounds__(128, 4) skinny_mma_kernel(const bf16* x, int M, const bf16* W, int N, int K,
                                                         skinny_plan plan, OutT* y, float* partial,
                                                         unsigned* counters, skinny_route rt) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int units = K / 8;
  const skinny_block blk = block_of(plan, N);
  const int u0 = blk.slice * blk.units_per_split, u1 = min(units, u0 + blk.units_per_split);
  const int n_base = (blk.column_block * skinny_warps + warp) * 8 * skinny_tiles;
  const uint4* wrow[skinny_tiles];
  skinny_rows_ahead(W, N, K, n_base, u0, u1, wrow);
  wait_for_prerequisites();
  // x has at most 64 rows: its offsets in 16-byte units fit 32 bits, and spare registers.
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  int xa[RT], xc[RT];
#pragma unroll
  for (int r = 0; r < RT; ++r) {
    xa[r] = min(r * 16 + g, M - 1) * units + q;
    xc[r] = min(r * 16 + g + 8, M - 1) * units + q;
  }
  float c[RT][skinny_tiles][4];
  skinny_warp_sums<RT>(wrow, xv, xa, xc, u0, u1, c, plan.whole_lines && M == 1, W, N, K, n_base);

  // The next kernel is placed once every block has read its weights, not when the blocks start:
  // placed at the start, it lets the one after it be placed in turn, and a chain of products
  // asking L2 for their first lines competes with the kernels still running.
  trigger_dependents();
  // Warps past N (the last column block of a matrix whose N is not a multiple of 64) read row
  // N - 1 again and store nothing.
  // The lead column blocks' slices keep their sums in a region of their own after the others'
  // (rows lead_blocks x 64 wide), so that their finer cut does not multiply the scratch by N.
  const bool lead = blk.column_block < plan.lead_blocks;
  const int ld = lead ? plan.lead_blocks * skinny_cols : N;
  float* region = lead ? partial + static_cast<size_t>(plan.splits) * M * N : partial;
  float* part = to_partial ? region + static_cast<size_t>(blk.slice) * M * ld : nullptr;
#pragma unroll
  for (int r = 0; r < RT; ++r) {
    const int ra = r * 16 + g, rc = ra + 8;
#pragma unroll
    for (int t = 0; t < skinny_tiles; ++t) {
      const int col = n_base + t * 8 + 2 * q;
      if (col >= N) continue;
      if constexpr (to_partial) {
        if (ra < M) *reinterpret_cast<float2*>(part + static_cast<size_t>(ra) * ld + col) = make_float2(c[r][t][0], c[r][t][1]);
        if (rc < M) *reinterpret_cast<float2*>(part + static_cast<size_t>(rc) * ld + col) = make_float2(c[r][t][2], c[r][t][3]);
      } else {
        if (ra < M) {
          y[static_cast<size_t>(ra) * N + col] = from_float<OutT>(c[r][t][0]);
          y[static_cast<size_t>(ra) * N + col + 1] = from_float<OutT>(c[r][t][1]);
        }
        if (rc < M) {
          y[static_cast<size_t>(rc) * N + col] = from_float<OutT>(c[r][t][2]);
          y[static_cast<size_t>(rc) * N + col + 1] = from_float<OutT>(c[r][t][3]);
        }
      }
    }
  }
  if constexpr (to_partial) {
    __shared__ bool last;
    __threadfence();  // this block's sums are visible before it is counted
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&counters[blk.column_block], 1u) == static_cast<unsigned>(blk.slices - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    const int c0 = blk.column_block * skinny_cols, width = min(skinny_cols, N - c0);
    const size_t stride = static_cast<size_t>(M) * ld;
    for (int i = threadIdx.x; i < M * skinny_cols; i += blockDim.x) {
      const int r = i / skinny_cols, col = i % skinny_cols;
      if (col >= width) continue;
      const size_t at = static_cast<size_t>(r) * ld + c0 + col;
      float sum = __ldcg(region + at);
      for (int p = 1; p < blk.slices; ++p) sum += __ldcg(region + static_cast<size_t>(p) * stride + at);
      y[static_cast<size_t>(r) * N + c0 + col] = from_float<OutT>(sum);
    }
    if (threadIdx.x == 0) counters[blk.column_block] = 0;
    if constexpr (route) {
      // The router's column blocks count themselves in the scratch's last counter (left at 0).
      const unsigned route_blocks = (rt.c.experts + skinny_cols - 1) / skinny_cols;
      if (static_cast<unsigned>(blk.column_block) >= route_blocks) return;
      __shared__ bool route_last;
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0)
        route_last = route_blocks == 1 || atomicAdd(&counters[skinny_scratch::column_blocks - 1], 1u) == route_blocks - 1;
      __syncthreads();
      if (!route_last) return;
      __threadfence();
      __shared__ float route_sm[2 * 128 + 64];
      const int* chosen = route_token(y, rt.bias, rt.c, 0, rt.ids, rt.weights, route_sm, shared_experts{});
      group_lone_token(chosen, rt.c, rt.groups);
      if (threadIdx.x == 0 && route_blocks > 1) counters[skinny_scratch::column_blocks - 1] = 0;
    }
  }
}

// A plan's K slices as the warp groups of one block (skinny_plan::slices_in_block), for up to 16
// rows: warp w takes slice w / col_warps and the 16 columns (blockIdx.x col_warps + w % col_warps)
// 16 onwards. The slices' sums meet in shared memory and are added in slice order, as the last
// block of a column block adds them from the scratch in skinny_mma_kernel: the same bits, with no
// partial sums through L2, no arrival count and no last block's second round trip.
template <typename OutT>
__global__ void __launch_bounds__(32 * skinny_block_slices, 2)
    skinny_slices_kernel(const bf16* x, int M, const bf16* W, int N, int K, int units_per_split, int col_warps,
                         bool lines, OutT* y) {
  extern __shared__ float sums[];  // [slice][column warp][16 rows][16 columns]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int slices = static_cast<int>(blockDim.x >> 5) / col_warps;
  const int slice = warp / col_warps, cw = warp % col_warps;
  const int units = K / 8;
  const int u0 = slice * units_per_split, u1 = min(units, u0 + units_per_split);
  const int n_base = (static_cast<int>(blockIdx.x) * col_warps + cw) * 8 * skinny_tiles;
  const uint4* wrow[skinny_tiles];
  skinny_rows_ahead(W, N, K, n_base, u0, u1, wrow);
  wait_for_prerequisites();
  const int xa[1] = {min(g, M - 1) * units + q}, xc[1] = {min(g + 8, M - 1) * units + q};
  float c[1][skinny_tiles][4];
  skinny_warp_sums<1>(wrow, reinterpret_cast<const uint4*>(x), xa, xc, u0, u1, c, lines && M == 1, W, N, K, n_base);
  trigger_dependents();  // as skinny_mma_kernel: once the weights are read
  float* mine = sums + (slice * col_warps + cw) * 256;
#pragma unroll
  for (int t = 0; t < skinny_tiles; ++t) {
    const int col = t * 8 + 2 * q;
    mine[g * 16 + col] = c[0][t][0], mine[g * 16 + col + 1] = c[0][t][1];
    mine[(g + 8) * 16 + col] = c[0][t][2], mine[(g + 8) * 16 + col + 1] = c[0][t][3];
  }
  __syncthreads();
  const int n0 = static_cast<int>(blockIdx.x) * col_warps * 16;
  for (int i = threadIdx.x; i < col_warps * 16 * M; i += blockDim.x) {
    const int w = i / (16 * M), r = i / 16 % M, col = i % 16, n = n0 + w * 16 + col;
    if (n >= N) continue;
    const int at = (w * 16 + r) * 16 + col;
    float sum = sums[at];
    for (int p = 1; p < slices; ++p) sum += sums[p * col_warps * 256 + at];
    y[static_cast<size_t>(r) * N + n] = from_float<OutT>(sum);
  }
}


// One row's product whose weights fit the multiprocessors' shared memory (staged_row_fits): a
// block owns `cols` consecutive columns, whose rows of W lie together, and copies them into shared
// memory before its wait, while the kernels before it run (before o_proj, the attention's kernels
// are latency-bound and leave the memory idle). After the wait it reads x (lane l its 16-byte units l, l + 32, ...) and each warp
// sums its columns from shared memory: the weights' stream is off the critical path.
template <typename OutT>
__global__ void __launch_bounds__(staged_threads) staged_row_kernel(const bf16* x, const bf16* W, int N, int K, int cols,
                                                                   OutT* y) {
  extern __shared__ __align__(16) unsigned char staged_raw[];
  const uint4* w_s = reinterpret_cast<const uint4*>(staged_raw);
  const int n0 = static_cast<int>(blockIdx.x) * cols, nc = min(cols, N - n0), ku = K / 8;
  {
    const uint4* src = reinterpret_cast<const uint4*>(W + static_cast<size_t>(n0) * K);
    uint4* dst = reinterpret_cast<uint4*>(staged_raw);
    for (int u = threadIdx.x; u < nc * ku; u += blockDim.x) tc::cp_async16(dst + u, src + u);
  }
  wait_for_prerequisites();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  uint4 xr[staged_units];
#pragma unroll
  for (int i = 0; i < staged_units; ++i) xr[i] = lane + 32 * i < ku ? xv[lane + 32 * i] : make_uint4(0, 0, 0, 0);
  tc::cp_async_wait_all();
  __syncthreads();
  trigger_dependents();  // as the skinny products: once the weights are read
  for (int c = warp; c < nc; c += warps) {
    const uint4* wr = w_s + c * ku;
    float a0 = 0, a1 = 0;
#pragma unroll
    for (int i = 0; i < staged_units; ++i) {
      if (lane + 32 * i >= ku) break;
      const uint4 w = wr[lane + 32 * i];
      const auto* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
      const auto* xp = reinterpret_cast<const __nv_bfloat162*>(&xr[i]);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 a = __bfloat1622float2(xp[e]), b = __bfloat1622float2(wp[e]);
        a0 = fmaf(a.x, b.x, a0);
        a1 = fmaf(a.y, b.y, a1);
      }
    }
    const float v = warp_sum(a0 + a1);
    if (lane == 0) y[n0 + c] = from_float<OutT>(v);
  }
}

/// Whether a product of up to 16 rows takes skinny_slices_kernel with this plan.
inline bool slices_in_block(const skinny_plan& plan) {
  return plan.slices_in_block && plan.lead_blocks == 0 && plan.splits >= 2 && plan.splits <= skinny_block_slices;
}

template <int RT, typename OutT>
void launch(const bf16* x, int M, const bf16* W, int N, int K, OutT* y, const skinny_plan& plan,
            const skinny_scratch& scratch, cudaStream_t s, const skinny_route* route) {
  const int col_blocks = (N + skinny_cols - 1) / skinny_cols;
  const dim3 grid = plan.lead_blocks == 0
                        ? dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(plan.splits))
                        : dim3(static_cast<unsigned>(plan.lead_blocks * plan.lead_splits +
                                                     (col_blocks - plan.lead_blocks) * plan.splits));
  const dim3 block(32 * skinny_warps);
  if (RT == 1 && route == nullptr && slices_in_block(plan)) {
    const int col_warps = std::max(1, skinny_block_slices / plan.splits);
    const int blocks = ((N + 15) / 16 + col_warps - 1) / col_warps;
    const size_t smem = static_cast<size_t>(plan.splits) * col_warps * 256 * sizeof(float);
    launch_dependent_smem(true, skinny_slices_kernel<OutT>, dim3(static_cast<unsigned>(blocks)),
                          dim3(static_cast<unsigned>(32 * col_warps * plan.splits)), smem, s, x, M, W, N, K,
                          plan.units_per_split, col_warps, plan.whole_lines, y);
    return;
  }
  if (plan.splits == 1 && plan.lead_blocks == 0) {
    launch_dependent(skinny_mma_kernel<RT, false, OutT>, grid, block, s, x, M, W, N, K, plan, y,
                     static_cast<float*>(nullptr), static_cast<unsigned*>(nullptr), skinny_route{});
    return;
  }
  if (col_blocks > static_cast<int>(skinny_scratch::column_blocks) || skinny_partial_floats(plan, M, N) > scratch.floats ||
      plan.lead_blocks > col_blocks || (plan.lead_blocks > 0 && (plan.lead_splits < 1 || plan.lead_units < 1)))
    throw std::logic_error("skinny_gemm: the scratch is too small for this plan");
  if constexpr (RT == 1 && std::is_same_v<OutT, float>) {
    if (route != nullptr) {
      skinny_route r = *route;
      r.c.stride = N;
      launch_dependent(skinny_mma_kernel<1, true, float, true>, grid, block, s, x, M, W, N, K, plan, y,
                       scratch.partial, scratch.counters, r);
      return;
    }
  }
  launch_dependent(skinny_mma_kernel<RT, true, OutT>, grid, block, s, x, M, W, N, K, plan, y,
                   scratch.partial, scratch.counters, skinny_route{});
}

template <typename OutT>
void dispatch(const bf16* x, int M, const bf16* W, int N, int K, OutT* y, const skinny_plan& plan,
              const skinny_scratch& workspace, cudaStream_t s, const skinny_route* route) {
  switch ((M + 15) / 16) {
    case 1: return launch<1>(x, M, W, N, K, y, plan, workspace, s, route);
    case 2: return launch<2>(x, M, W, N, K, y, plan, workspace, s, nullptr);
    case 3: return launch<3>(x, M, W, N, K, y, plan, workspace, s, nullptr);
    default: return launch<4>(x, M, W, N, K, y, plan, workspace, s, nullptr);
  }
}

}  // namespace device

size_t skinny_partial_floats(const skinny_plan& plan, int M, int N) {
  return static_cast<size_t>(M) * (static_cast<size_t>(plan.splits) * N +
                                   static_cast<size_t>(plan.lead_splits) * plan.lead_blocks * device::skinny_cols);
}

bool skinny_fits(int N, int K) { return N > 0 && K > 0 && N % 8 == 0 && K % 32 == 0; }

skinny_plan skinny_split(int N, int K, int sms, size_t workspace_floats, int lead_cols, int lead_chunks) {
  // Enough blocks for four a multiprocessor, in slices of at least 256 values of K so that the
  // partial sums (64 rows x 4 bytes a column a slice) stay at most half the weight bytes.
  const int units = K / 8;
  const int col_blocks = (N + device::skinny_cols - 1) / device::skinny_cols;
  const int chunks = (units + device::skinny_chunk_units - 1) / device::skinny_chunk_units;
  int splits = std::max(1, (4 * sms + col_blocks - 1) / col_blocks);
  if (col_blocks > skinny_scratch::column_blocks) splits = 1;
  splits = std::min(splits, std::max(1, chunks / 2));
  const size_t per_split = static_cast<size_t>(skinny_max_rows) * static_cast<size_t>(N);
  splits = static_cast<int>(std::min<size_t>(static_cast<size_t>(splits), std::max<size_t>(1, workspace_floats / per_split)));
  static const bool in_block = [] {
    const char* e = std::getenv("TOLLGATE_ENGINE_SKINNY_IN_BLOCK");
    return e == nullptr || std::string(e) != "0";
  }();
  static const bool lines = [] {
    const char* e = std::getenv("TOLLGATE_ENGINE_SKINNY_LINES");
    return e == nullptr || std::string(e) != "0";
  }();
  skinny_plan p;
  p.slices_in_block = in_block;
  p.whole_lines = lines;
  p.units_per_split = (chunks + splits - 1) / splits * device::skinny_chunk_units;
  p.splits = (units + p.units_per_split - 1) / p.units_per_split;
  if (p.splits > 1 && lead_cols > 0 && lead_chunks > 0) {
    const int lead_units = std::min(lead_chunks, chunks) * device::skinny_chunk_units;
    const int lead_splits = (units + lead_units - 1) / lead_units;
    skinny_plan lead = p;
    lead.lead_blocks = std::min(col_blocks, (lead_cols + device::skinny_cols - 1) / device::skinny_cols);
    lead.lead_splits = lead_splits;
    lead.lead_units = lead_units;
    if (lead_splits > 1 && skinny_partial_floats(lead, skinny_max_rows, N) <= workspace_floats) p = lead;
  }
  return p;
}

bool skinny_route_fits(const skinny_plan& plan, int M, int N, const router_config& c) {
  const int column_blocks = (N + device::skinny_cols - 1) / device::skinny_cols;
  return M == 1 && plan.splits > 1 && c.experts >= 1 && c.experts <= 128 && c.experts <= N && c.top_k >= 1 &&
         c.top_k <= 32 && c.top_k <= c.experts && c.groups >= 1 && c.groups <= 64 &&
         column_blocks < static_cast<int>(skinny_scratch::column_blocks);
}

void skinny_gemm(const bf16* x, int M, const bf16* W, int N, int K, void* y, bool y_float, const skinny_plan& plan,
                 const skinny_scratch& workspace, cudaStream_t s, const skinny_route* route) {
  if (M < 1 || M > skinny_max_rows || !skinny_fits(N, K))
    throw std::runtime_error("skinny_gemm takes 1 to 64 rows, N % 8 == 0 and K % 32 == 0");
  if (route != nullptr && (!y_float || !skinny_route_fits(plan, M, N, route->c)))
    throw std::logic_error("skinny_gemm: this product cannot route (skinny_route_fits)");
  if (y_float) device::dispatch(x, M, W, N, K, static_cast<float*>(y), plan, workspace, s, route);
  else device::dispatch(x, M, W, N, K, static_cast<bf16*>(y), plan, workspace, s, nullptr);
}

namespace {
int staged_cols(int N, int sms) { return (N + sms - 1) / sms; }
}  // namespace

bool staged_row_fits(int N, int K, int sms) {
  return sms > 0 && N > 0 && K > 0 && K % 8 == 0 && K / 8 <= 32 * device::staged_units &&
         static_cast<size_t>(staged_cols(N, sms)) * K * sizeof(bf16) <= device::staged_max_bytes;
}

void staged_row_gemm(const bf16* x, const bf16* W, int N, int K, void* y, bool y_float, int sms, cudaStream_t s) {
  if (!staged_row_fits(N, K, sms)) throw std::logic_error("staged_row_gemm: the weight does not fit (staged_row_fits)");
  const int cols = staged_cols(N, sms);
  const unsigned blocks = static_cast<unsigned>((N + cols - 1) / cols);
  const size_t smem = static_cast<size_t>(cols) * K * sizeof(bf16);
  const auto go = [&](auto kernel, auto* out) {
    // The largest any launch takes, so that a graph's earlier launches stay valid whatever the order.
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(device::staged_max_bytes)));
    launch_dependent_smem(true, kernel, dim3(blocks), dim3(device::staged_threads), smem, s, x, W, N, K, cols, out);
  };
  if (y_float) go(device::staged_row_kernel<float>, static_cast<float*>(y));
  else go(device::staged_row_kernel<bf16>, static_cast<bf16*>(y));
}

skinny_scratch::skinny_scratch(size_t partial_floats) : floats(partial_floats) {
  check(cudaMalloc(&partial, std::max<size_t>(floats, 1) * sizeof(float)));
  check(cudaMalloc(&counters, column_blocks * sizeof(unsigned)));
  check(cudaMemset(counters, 0, column_blocks * sizeof(unsigned)));
}

skinny_scratch::~skinny_scratch() {
  cudaFree(partial);
  cudaFree(counters);
}

}  // namespace tollgate::engine::cuda
