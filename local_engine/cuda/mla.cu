#include "local_engine/cuda/mla.cuh"

#include "local_engine/cuda/tensor_core.cuh"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace tollgate::engine::cuda {

/// Floats a (token, head, split) partial sum takes: the kv_rank sums, the running max and the
/// sum of exponentials, padded so that each starts 16 bytes aligned.
__host__ __device__ constexpr int partial_stride(int kv_rank) { return (kv_rank + 2 + 3) / 4 * 4; }

namespace {
constexpr int heads_per_block = 16;  // query heads that share one pass over the cached positions
constexpr int keys_per_tile = 32;
constexpr int threads = 256;
constexpr int cols_per_thread = 2;  // latent columns a thread accumulates: kv_rank <= 512
constexpr int split_len = 64;       // positions a block takes at least when a context is split
constexpr int max_splits = 32;  // the combine merges them in one warp

int head_groups(const mla_dims& d) { return (d.heads + heads_per_block - 1) / heads_per_block; }

int choose_splits(int n, const mla_dims& d, int max_len) {
  // Up to one wave of two blocks per multiprocessor of an H100/H200 (132; the bf16 kernel's
  // shared memory holds two): a block's tiles run one after another, so a small batch's long
  // contexts are cut into shorter chains, but never into a second, mostly idle wave.
  const int blocks = n * head_groups(d);
  if (blocks >= 132) return 1;  // the batch already fills the multiprocessors
  const int want = std::max(1, 264 / blocks);
  const int by_len = (max_len + split_len - 1) / split_len;
  return std::max(1, std::min({want, by_len, max_splits}));
}
}  // namespace

namespace device {

// Part h of token blockIdx.x's preparation: h < heads copies head h's nope part (q in float) and
// rotates its rope query; h == heads normalises the latent into the cache and rotates the rope key.
// EARLY (a kernel that has let its dependents go but not waited yet): what does not depend on the
// kernel before (the position's rope pair and cache slot, which a step copies before its first
// kernel; the norm's weights) is read first, then it waits; the latent's values and its rope key
// then come in one round trip, kept in registers (up to 4 values a thread) through the norm.
template <typename T, bool EARLY = false>
__device__ void prepare_part(const float* ckv, int ckv_stride, const float* norm_w, float eps, const mla_query<T>& q,
                             const float2* rope_cs, bool interleave, const mla_dims& d, const token_map& map, T* q_full,
                             T* cache, int h) {
  __shared__ float scratch[32];
  const int t = blockIdx.x;
  const int W = d.width(), half = d.rope_dim / 2;
  const float* row = ckv + static_cast<size_t>(t) * ckv_stride;
  const float2* cs = rope_cs + static_cast<size_t>(map.pos[t]) * half;
  const int tid = static_cast<int>(threadIdx.x), bd = static_cast<int>(blockDim.x);
  const bool latent = h == d.heads;
  const float2 my_cs = tid < half ? cs[tid] : make_float2(0, 0);  // thread i's pair, i < half
  constexpr int R = 4;  // latent values a thread keeps
  float wn[R];
#pragma unroll
  for (int j = 0; j < R; ++j) wn[j] = latent && tid + j * bd < d.kv_rank ? norm_w[tid + j * bd] : 0.0f;
  const size_t slot = latent ? static_cast<size_t>(map.slot[t]) : 0;
  if constexpr (EARLY) wait_for_prerequisites();
  // Pairs are adjacent (interleave) or half apart.
  const auto rotate = [&](int i, float a, float b, T* dst) {
    const float2 c = i == tid ? my_cs : cs[i];
    const int ia = interleave ? 2 * i : i, ib = interleave ? 2 * i + 1 : i + half;
    dst[ia] = from_float<T>(a * c.x - b * c.y);
    dst[ib] = from_float<T>(b * c.x + a * c.y);
  };
  const auto pair = [&](int i) { return interleave ? int2{2 * i, 2 * i + 1} : int2{i, i + half}; };
  if (latent) {
    T* c = cache + slot * W;
    float rv[R], ka = 0, kb = 0;
#pragma unroll
    for (int j = 0; j < R; ++j) rv[j] = tid + j * bd < d.kv_rank ? row[tid + j * bd] : 0.0f;
    if (tid < half) {
      const int2 p = pair(tid);
      ka = row[d.kv_rank + p.x], kb = row[d.kv_rank + p.y];
    }
    float ss = 0;
#pragma unroll
    for (int j = 0; j < R; ++j) ss += rv[j] * rv[j];
    for (int i = tid + R * bd; i < d.kv_rank; i += bd) ss += row[i] * row[i];
    const float r = rsqrtf(block_sum(ss, scratch) / static_cast<float>(d.kv_rank) + eps);
#pragma unroll
    for (int j = 0; j < R; ++j)
      if (tid + j * bd < d.kv_rank) c[tid + j * bd] = from_float<T>(wn[j] * (rv[j] * r));
    for (int i = tid + R * bd; i < d.kv_rank; i += bd) c[i] = from_float<T>(norm_w[i] * (row[i] * r));
    if (tid < half) rotate(tid, ka, kb, c + d.kv_rank);
    for (int i = tid + bd; i < half; i += bd) {
      const int2 p = pair(i);
      rotate(i, row[d.kv_rank + p.x], row[d.kv_rank + p.y], c + d.kv_rank);
    }
    return;
  }
  T* dst = q_full + (static_cast<size_t>(t) * d.heads + h) * W + d.kv_rank;
  if (q.f != nullptr) {
    const float* qh = q.f + static_cast<size_t>(t) * q.stride + static_cast<size_t>(h) * d.qk_dim;
    if (q.nope != nullptr) {
      T* nope = q.nope + (static_cast<size_t>(t) * d.heads + h) * d.nope_dim;
      for (int k = tid; k < d.nope_dim; k += bd) nope[k] = from_float<T>(qh[k]);
    }
    for (int i = tid; i < half; i += bd) {
      const int2 p = pair(i);
      rotate(i, qh[d.nope_dim + p.x], qh[d.nope_dim + p.y], dst);
    }
  } else {
    const T* qh = q.t + (static_cast<size_t>(t) * d.heads + h) * d.qk_dim + d.nope_dim;
    for (int i = tid; i < half; i += bd) {
      const int2 p = pair(i);
      rotate(i, to_float(qh[p.x]), to_float(qh[p.y]), dst);
    }
  }
}

// grid (token, (heads + 1) / per_block rounded up): block y takes parts y * per_block.. of its
// token, one after another.
template <typename T>
__global__ void mla_prepare_kernel(const float* ckv, int ckv_stride, const float* norm_w, float eps, mla_query<T> q,
                                   const float2* rope_cs, bool interleave, mla_dims d, token_map map, T* q_full,
                                   T* cache, int per_block) {
  enter_in_order();
  const int h0 = blockIdx.y * per_block, h1 = min(d.heads + 1, h0 + per_block);
  for (int h = h0; h < h1; ++h)
    prepare_part(ckv, ckv_stride, norm_w, eps, q, rope_cs, interleave, d, map, q_full, cache, h);
}

// grid (1, heads + 1 + heads x kv_rank / 64): blocks y <= heads are mla_prepare_kernel's parts
// (without the nope copy), the rest W_UK slices: block (h, c) holds kv_b[h, i, c*64 .. c*64 + 64)
// for its rows i, warp w the rows w, w + 4, ..., a lane two columns, loaded before the wait.
__global__ void __launch_bounds__(128) mla_prepare_absorbing_kernel(const float* ckv, int ckv_stride,
                                                                    const float* norm_w, float eps,
                                                                    mla_query<bf16> q, const bf16* kv_b, int v_dim,
                                                                    const float2* rope_cs, bool interleave,
                                                                    mla_dims d, token_map map, bf16* q_full,
                                                                    bf16* cache) {
  const int part = static_cast<int>(blockIdx.y);
  if (part <= d.heads) {
    trigger_dependents();
    mla_query<bf16> no_copy = q;
    no_copy.nope = nullptr;
    prepare_part<bf16, true>(ckv, ckv_stride, norm_w, eps, no_copy, rope_cs, interleave, d, map, q_full, cache, part);
    return;
  }
  const int per_head = d.kv_rank / 64, k = part - d.heads - 1, h = k / per_head, c0 = (k % per_head) * 64;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, rows = d.nope_dim / 4;
  const bf16* w = kv_b + static_cast<size_t>(h) * (d.nope_dim + v_dim) * d.kv_rank + c0 + 2 * lane;
  __nv_bfloat162 wv[32];
#pragma unroll
  for (int j = 0; j < 32; ++j)
    if (j < rows) wv[j] = __ldg(reinterpret_cast<const __nv_bfloat162*>(w + static_cast<size_t>(warp + 4 * j) * d.kv_rank));
  enter_in_order();
  const float* qh = q.f + static_cast<size_t>(h) * d.qk_dim;  // token 0's row
  // Lane j loads the warp's j-th q value and the warp passes them round: one round trip to memory,
  // where loads placed beside their uses waited for each other in turn.
  const float mine = lane < rows ? qh[warp + 4 * lane] : 0.0f;
  float a = 0, b = 0;
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    const float qj = __shfl_sync(0xffffffffu, mine, j);
    if (j < rows) {
      const float x = __bfloat162float(__float2bfloat16_rn(qj));  // the bf16 q the product reads
      const float2 f = __bfloat1622float2(wv[j]);
      a += x * f.x, b += x * f.y;
    }
  }
  __shared__ float2 red[4][32];
  red[warp][lane] = make_float2(a, b);
  __syncthreads();
  if (warp == 0) {
    float2 s = red[0][lane];
#pragma unroll
    for (int v = 1; v < 4; ++v) s.x += red[v][lane].x, s.y += red[v][lane].y;
    *reinterpret_cast<__nv_bfloat162*>(q_full + static_cast<size_t>(h) * d.width() + c0 + 2 * lane) =
        __floats2bfloat162_rn(s.x, s.y);
  }
}

// grid: (token, head group, split). Each block runs an online softmax over its share of the
// token's positions for up to 16 heads at once, reading each cached position once for all of them.
template <typename T>
__global__ void __launch_bounds__(threads) mla_attend_kernel(const T* q_full, const T* cache, mla_dims d,
                                                             token_map map, float scale, float* partial, T* out) {
  extern __shared__ float smem[];
  const int W = d.width(), P = W + 1;  // padded rows: lanes reading different positions hit different banks
  float* q_s = smem;                                  // [heads_per_block][P]
  float* kv_s = q_s + heads_per_block * P;            // [keys_per_tile][P]
  float* p_s = kv_s + keys_per_tile * P;              // [heads_per_block][keys_per_tile]
  float* corr_s = p_s + heads_per_block * keys_per_tile;  // [heads_per_block]

  const int t = blockIdx.x, h0 = blockIdx.y * heads_per_block, splits = gridDim.z;
  const int hg = min(heads_per_block, d.heads - h0);
  const int len = map.pos[t] + 1;
  const int tiles = (len + keys_per_tile - 1) / keys_per_tile;
  const int per_split = (tiles + splits - 1) / splits;
  const int tile_begin = blockIdx.z * per_split, tile_end = min(tiles, tile_begin + per_split);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  for (int k = threadIdx.x; k < hg * W; k += blockDim.x) {
    const int h = k / W, i = k % W;
    q_s[h * P + i] = to_float(q_full[(static_cast<size_t>(t) * d.heads + h0 + h) * W + i]);
  }
  const int32_t* table = map.table + map.table_off[t];
  float acc[cols_per_thread][heads_per_block];
#pragma unroll
  for (int ci = 0; ci < cols_per_thread; ++ci)
#pragma unroll
    for (int h = 0; h < heads_per_block; ++h) acc[ci][h] = 0;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0, 0};  // for heads warp and warp + 8

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int first = tile * keys_per_tile, nk = min(keys_per_tile, len - first);
    __syncthreads();  // the previous tile's readers are done with kv_s and p_s
    for (int k = threadIdx.x; k < nk * W; k += blockDim.x) {
      const int j = k / W, i = k % W, pos = first + j;
      const size_t slot = static_cast<size_t>(table[pos / map.block_size]) * map.block_size + pos % map.block_size;
      kv_s[j * P + i] = to_float(cache[slot * W + i]);
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int h = warp + r * 8;
      if (h >= hg) continue;  // warp-uniform
      float s = -INFINITY;
      if (lane < nk) {
        const float* qh = q_s + h * P;
        const float* kj = kv_s + lane * P;
        float dot = 0;
        for (int i = 0; i < W; ++i) dot += qh[i] * kj[i];
        s = dot * scale;
      }
      const float m_new = fmaxf(m_run[r], warp_max(s));
      const float p = lane < nk ? __expf(s - m_new) : 0.0f;
      const float corr = __expf(m_run[r] - m_new);
      l_run[r] = l_run[r] * corr + warp_sum(p);
      m_run[r] = m_new;
      p_s[h * keys_per_tile + lane] = p;
      if (lane == 0) corr_s[h] = corr;
    }
    __syncthreads();
#pragma unroll
    for (int ci = 0; ci < cols_per_thread; ++ci) {
      const int c = threadIdx.x + ci * threads;
      if (c >= d.kv_rank) continue;
#pragma unroll
      for (int h = 0; h < heads_per_block; ++h)
        if (h < hg) acc[ci][h] *= corr_s[h];
      for (int j = 0; j < nk; ++j) {
        const float v = kv_s[j * P + c];
#pragma unroll
        for (int h = 0; h < heads_per_block; ++h)
          if (h < hg) acc[ci][h] += p_s[h * keys_per_tile + j] * v;
      }
    }
  }
  // Each warp's lane 0 knows (m, l) of its heads; share them through shared memory.
  __syncthreads();
  float* m_s = p_s;                     // reuse: [heads_per_block]
  float* l_s = p_s + heads_per_block;   // [heads_per_block]
  if (lane == 0) {
    for (int r = 0; r < 2; ++r) {
      const int h = warp + r * 8;
      if (h < hg) {
        m_s[h] = m_run[r];
        l_s[h] = l_run[r];
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int ci = 0; ci < cols_per_thread; ++ci) {
    const int c = threadIdx.x + ci * threads;
    if (c >= d.kv_rank) continue;
#pragma unroll
    for (int h = 0; h < heads_per_block; ++h) {
      if (h >= hg) continue;
      const size_t th = static_cast<size_t>(t) * d.heads + h0 + h;
      if (splits == 1) {
        out[th * d.kv_rank + c] = from_float<T>(acc[ci][h] / l_s[h]);
      } else {
        float* part = partial + (th * splits + blockIdx.z) * partial_stride(d.kv_rank);
        part[c] = acc[ci][h];
        if (c == 0) {
          part[d.kv_rank] = m_s[h];
          part[d.kv_rank + 1] = l_s[h];
        }
      }
    }
  }
}

// The bf16 path on tensor cores (mma.m16n8k16), for kv_lora_rank 512. A block takes QT tokens of
// one sequence (1 in decode; several in prefill, where they share every tile of cached positions)
// and a group of 16 heads: the products' rows are the 16 heads of each of its tokens. Per tile of
// 64 positions, each warp scores 8 positions over all `width` values for its share of the rows,
// the softmax runs on the scores in shared memory, and each warp adds P . latent for its own
// latent columns. Operands are read with ldmatrix from padded rows. A row's arithmetic is the
// same whatever QT is (the same tiles, the same order of sums), so a token gets the same bits
// alone and in a prefill chunk; tiles past a shorter token's length add exact zeros.
namespace tc {
constexpr int keys = 64;
constexpr int rank = 512;
constexpr int p_pitch = keys + 8;  // bf16 values a probability row takes
}  // namespace tc

// ASYNC (one token a block): what does not depend on the kernel before is looked up before the
// wait for it: the token's length and its first tile's cache rows (positions and block tables are
// copied before a step's first kernel; older positions were cached by earlier steps). After the
// wait the query and the tile come by cp.async, all of a thread's units in flight at once and
// no registers to stage them: one round trip to memory where the register loads take three.
template <int QT, int WARPS, bool ASYNC>
__global__ void __launch_bounds__(WARPS * 32, QT == 1 ? 2 : 1) mla_attend_tc_kernel(const bf16* q_full, const bf16* cache, mla_dims d,
                                                                   token_map map, int n, float scale, float* partial,
                                                                   bf16* out) {
  static_assert(!ASYNC || QT == 1, "cp.async loads for one token a block");
  if constexpr (ASYNC) trigger_dependents();
  else enter_in_order();
  static_assert(WARPS % 8 == 0 && QT % (WARPS / 8) == 0, "warps score 8 positions each, for whole tokens");
  constexpr int R = 16 * QT;                  // rows of the products: QT tokens x 16 heads
  constexpr int cols = tc::rank / WARPS;      // latent columns a warp owns in P . latent
  constexpr int ntiles = cols / 8;
  constexpr int MT = QT / (WARPS / 8);        // 16-row tiles a warp scores
  constexpr int rows_per_warp = R / WARPS;    // rows whose softmax a warp updates
  extern __shared__ __align__(16) unsigned char raw[];
  const int W = d.width(), PW = W + 8, W8 = W / 8;
  bf16* q_s = reinterpret_cast<bf16*>(raw);                       // [R][PW]
  bf16* kv_s = q_s + R * PW;                                       // [keys][PW]
  bf16* p_s = kv_s + tc::keys * PW;                                // [R][p_pitch]
  float* s_s = reinterpret_cast<float*>(p_s + R * tc::p_pitch);   // [R][keys]
  float* m_s = s_s + R * tc::keys;
  float* l_s = m_s + R;
  float* corr_s = l_s + R;
  __shared__ const bf16* row_src[tc::keys];
  __shared__ int len_s[QT];

  const int h0 = blockIdx.y * 16, splits = gridDim.z;
  const int hg = min(16, d.heads - h0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const int t_stop = min(n, static_cast<int>(blockIdx.x) * QT + QT);
  // The block's tokens, a run of one sequence at a time (a prefill chunk is one run).
  for (int t0 = blockIdx.x * QT; t0 < t_stop;) {
    int t1 = t0 + 1;
    while (t1 < t_stop && map.table_off[t1] == map.table_off[t0]) ++t1;
    const int nt = t1 - t0;
    __syncthreads();  // the last run's readers are done
    // A thread's first unit of a tile and its step (keys x W8 units to the threads in turn).
    const int j0 = threadIdx.x / W8, c0 = threadIdx.x % W8;
    const int step_j = blockDim.x / W8, step_c = blockDim.x % W8;
    // (ASYNC) A tile's copies, eight threads a row, so that a warp asks for four whole runs of
    // 128 bytes and a thread's units are one pointer apart (a few instructions a unit: the walk
    // above took 22): rows past the length are zeros.
    const auto copy_tile = [&](int nk) {
      const int cu = threadIdx.x & 7;
      for (int j = threadIdx.x >> 3; j < tc::keys; j += blockDim.x >> 3) {
        bf16* dst = kv_s + j * PW;
        if (j < nk) {
          const bf16* src = row_src[j];
          for (int c8 = cu; c8 < W8; c8 += 8) tc::cp_async16(dst + c8 * 8, src + c8 * 8);
        } else {
          for (int c8 = cu; c8 < W8; c8 += 8) *reinterpret_cast<uint4*>(dst + c8 * 8) = zero;
        }
      }
    };
    const int32_t* table = map.table + map.table_off[t0];
    int tile_pre = -1;  // ASYNC: the tile already in kv_s
    if constexpr (ASYNC) {
      const int len1 = map.pos[t0] + 1;
      if (threadIdx.x == 0) len_s[0] = len1;
      const int tiles1 = (len1 + tc::keys - 1) / tc::keys, per1 = (tiles1 + splits - 1) / splits;
      const int tb = blockIdx.z * per1;
      if (tb < min(tiles1, tb + per1)) {
        tile_pre = tb;
        const int pos = tb * tc::keys + threadIdx.x;
        if (threadIdx.x < tc::keys)
          row_src[threadIdx.x] =
              pos < len1 ? cache + (static_cast<size_t>(table[pos / map.block_size]) * map.block_size + pos % map.block_size) * W
                         : nullptr;
      }
      wait_for_prerequisites();
      // The query, sixteen threads a head's row.
      for (int r = threadIdx.x >> 4; r < R; r += blockDim.x >> 4) {
        bf16* dst = q_s + r * PW;
        if (r < hg) {
          const bf16* src = q_full + (static_cast<size_t>(t0) * d.heads + h0 + r) * W;
          for (int c8 = threadIdx.x & 15; c8 < W8; c8 += 16) tc::cp_async16(dst + c8 * 8, src + c8 * 8);
        } else {
          for (int c8 = threadIdx.x & 15; c8 < W8; c8 += 16) *reinterpret_cast<uint4*>(dst + c8 * 8) = zero;
        }
      }
      __syncthreads();  // row_src
      if (tile_pre >= 0) copy_tile(min(tc::keys, len1 - tile_pre * tc::keys));
      tc::cp_async_wait_all();
    } else {
    if (threadIdx.x < QT) len_s[threadIdx.x] = map.pos[threadIdx.x < nt ? t0 + threadIdx.x : t0] + 1;
    // The queries' units, up to 8 a thread in flight at once (their loads issued before the stores).
    for (int base = threadIdx.x; base < R * W8; base += 8 * blockDim.x) {
      uint4 v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int idx = base + u * blockDim.x;
        const int r = idx / W8, c8 = idx % W8, i = r >> 4, hr = r & 15;
        v[u] = idx < R * W8 && i < nt && hr < hg
                   ? *reinterpret_cast<const uint4*>(q_full + (static_cast<size_t>(t0 + i) * d.heads + h0 + hr) * W + c8 * 8)
                   : zero;
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int idx = base + u * blockDim.x;
        if (idx < R * W8) *reinterpret_cast<uint4*>(q_s + (idx / W8) * PW + (idx % W8) * 8) = v[u];
      }
    }
    }
    if (threadIdx.x < R) {
      m_s[threadIdx.x] = -INFINITY;
      l_s[threadIdx.x] = 0;
    }
    __syncthreads();
    int len = 0;
#pragma unroll
    for (int i = 0; i < QT; ++i) len = max(len, len_s[i]);
    const int tiles = (len + tc::keys - 1) / tc::keys;
    const int per_split = (tiles + splits - 1) / splits;
    const int tile_begin = blockIdx.z * per_split, tile_end = min(tiles, tile_begin + per_split);
    float acc[QT][ntiles][4];
#pragma unroll
    for (int i = 0; i < QT; ++i)
#pragma unroll
      for (int c = 0; c < ntiles; ++c) acc[i][c][0] = acc[i][c][1] = acc[i][c][2] = acc[i][c][3] = 0;

    // The tile's 16-byte units (keys x W8) go to the threads in turn; a thread's first unit and
    // its step are fixed, so the walk needs no division, and each key's cache row is looked up
    // once a tile (row_src), not once a unit.
    for (int tile = tile_begin; tile < tile_end; ++tile) {
      const int first = tile * tc::keys, nk = min(tc::keys, len - first);
      if (tile != tile_pre) {
      __syncthreads();  // the last tile's readers are done
      if (threadIdx.x < tc::keys) {
        const int pos = first + threadIdx.x;
        row_src[threadIdx.x] =
            threadIdx.x < nk
                ? cache + (static_cast<size_t>(table[pos / map.block_size]) * map.block_size + pos % map.block_size) * W
                : nullptr;
      }
      __syncthreads();
      if constexpr (ASYNC) {
        copy_tile(nk);
        tc::cp_async_wait_all();
      } else {
      // One token a block (decode; two blocks a multiprocessor, so at most 128 registers a
      // thread): half a tile of DeepSeek's width (64 keys x 72 units) in flight at once, two round
      // trips to memory a tile, not three. Several (prompts): six units at a time.
      constexpr int unroll = QT == 1 ? (tc::keys * 72 + 2 * WARPS * 32 - 1) / (2 * WARPS * 32) : 6;
      int j = j0, c8 = c0;
      while (j < tc::keys) {
        uint4 v[unroll];
        int jj[unroll], cc[unroll];
#pragma unroll
        for (int u = 0; u < unroll; ++u) {
          jj[u] = j, cc[u] = c8;
          v[u] = j < nk ? *reinterpret_cast<const uint4*>(row_src[j] + c8 * 8) : zero;
          j += step_j, c8 += step_c;
          if (c8 >= W8) c8 -= W8, ++j;
        }
#pragma unroll
        for (int u = 0; u < unroll; ++u)
          if (jj[u] < tc::keys) *reinterpret_cast<uint4*>(kv_s + jj[u] * PW + cc[u] * 8) = v[u];
      }
      }
      }
      __syncthreads();
      // Scores of this warp's 8 positions for its 16-row tiles (tile i: token i's heads).
      {
        const int kw = warp % 8;
        float sc[MT][4];
#pragma unroll
        for (int m = 0; m < MT; ++m) sc[m][0] = sc[m][1] = sc[m][2] = sc[m][3] = 0;
        for (int k0 = 0; k0 < W; k0 += 16) {
          uint32_t b[2];
          tc::ldsm_x2(b, kv_s + (kw * 8 + (lane & 7)) * PW + k0 + ((lane >> 3) & 1) * 8);
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            const int mt = warp / 8 + m * (WARPS / 8);
            uint32_t a[4];
            tc::ldsm_x4(a, q_s + (mt * 16 + (lane & 15)) * PW + k0 + (lane >> 4) * 8);
            tc::mma(sc[m], a, b);
          }
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const int mt = warp / 8 + m * (WARPS / 8);
          const int nkt = min(tc::keys, len_s[mt] - first);
          const int key = kw * 8 + 2 * q;
          float* row = s_s + (mt * 16 + g) * tc::keys;
          row[key] = key < nkt ? sc[m][0] * scale : -INFINITY;
          row[key + 1] = key + 1 < nkt ? sc[m][1] * scale : -INFINITY;
          row[8 * tc::keys + key] = key < nkt ? sc[m][2] * scale : -INFINITY;
          row[8 * tc::keys + key + 1] = key + 1 < nkt ? sc[m][3] * scale : -INFINITY;
        }
      }
      __syncthreads();
      // Online softmax: each warp updates R / WARPS rows, a lane per 32 positions. A tile past a
      // row's length leaves it as it was (no position: no change, the correction is 1).
      constexpr int per_lane = tc::keys / 32;
#pragma unroll
      for (int i = 0; i < rows_per_warp; ++i) {
        const int h = warp * rows_per_warp + i;
        const int nkt = min(tc::keys, len_s[h >> 4] - first);
        float v[per_lane], mx = -INFINITY;
#pragma unroll
        for (int k = 0; k < per_lane; ++k) mx = fmaxf(mx, v[k] = s_s[h * tc::keys + lane + 32 * k]);
        const float m_old = m_s[h], m_new = fmaxf(m_old, warp_max(mx));
        float part = 0;
#pragma unroll
        for (int k = 0; k < per_lane; ++k) {
          const int at = lane + 32 * k;
          const bf16 p = __float2bfloat16_rn(at < nkt ? __expf(v[k] - m_new) : 0.0f);
          p_s[h * tc::p_pitch + at] = p;
          part += __bfloat162float(p);
        }
        const float sum = warp_sum(part);
        if (lane == 0) {
          const float corr = nkt > 0 ? __expf(m_old - m_new) : 1.0f;
          corr_s[h] = corr;
          l_s[h] = l_s[h] * corr + sum;
          m_s[h] = m_new;
        }
      }
      __syncthreads();
#pragma unroll
      for (int i = 0; i < QT; ++i) {
        const float cg = corr_s[i * 16 + g], cg8 = corr_s[i * 16 + g + 8];
#pragma unroll
        for (int c = 0; c < ntiles; ++c) acc[i][c][0] *= cg, acc[i][c][1] *= cg, acc[i][c][2] *= cg8, acc[i][c][3] *= cg8;
      }
#pragma unroll
      for (int k0 = 0; k0 < tc::keys; k0 += 16) {
        uint32_t a[QT][4];
#pragma unroll
        for (int i = 0; i < QT; ++i) tc::ldsm_x4(a[i], p_s + (i * 16 + (lane & 15)) * tc::p_pitch + k0 + (lane >> 4) * 8);
#pragma unroll
        for (int c = 0; c < ntiles; ++c) {
          uint32_t b[2];
          tc::ldsm_x2_trans(b, kv_s + (k0 + (lane & 15)) * PW + warp * cols + c * 8);
#pragma unroll
          for (int i = 0; i < QT; ++i) tc::mma(acc[i][c], a[i], b);
        }
      }
    }
    __syncthreads();
    if constexpr (ASYNC) {
      // The block's sums staged in shared memory (the cache tile's, free now), then written 16
      // bytes a thread, each warp's stores contiguous: the scattered 4-byte stores below took
      // about 3 us of a 9 us block (in-kernel clocks). The same values as those stores.
      constexpr int SP = tc::rank + 4;
      float* st = reinterpret_cast<float*>(kv_s);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int hr = g + 8 * half;
#pragma unroll
        for (int c = 0; c < ntiles; ++c)
          *reinterpret_cast<float2*>(st + hr * SP + warp * cols + c * 8 + 2 * q) =
              make_float2(acc[0][c][2 * half], acc[0][c][2 * half + 1]);
      }
      __syncthreads();
      const size_t th0 = static_cast<size_t>(t0) * d.heads + h0;
      if (splits > 1) {
        // Sixteen threads a head's row.
        constexpr int U = tc::rank / 4;
        for (int hr = threadIdx.x >> 4; hr < hg; hr += blockDim.x >> 4) {
          float4* part = reinterpret_cast<float4*>(partial + ((th0 + hr) * splits + blockIdx.z) * partial_stride(tc::rank));
          const float4* src = reinterpret_cast<const float4*>(st + hr * SP);
          for (int u = threadIdx.x & 15; u < U; u += 16) part[u] = src[u];
        }
        if (static_cast<int>(threadIdx.x) < hg) {
          float* part = partial + ((th0 + threadIdx.x) * splits + blockIdx.z) * partial_stride(tc::rank);
          part[tc::rank] = m_s[threadIdx.x];
          part[tc::rank + 1] = l_s[threadIdx.x];
        }
      } else {
        // The group's heads' outputs lie together: 8 bf16 values a store.
        constexpr int U = tc::rank / 8;
        for (int hr = threadIdx.x >> 4; hr < hg; hr += blockDim.x >> 4) {
          const float inv = 1.0f / l_s[hr];
          for (int u = threadIdx.x & 15; u < U; u += 16) {
            const float4 a = *reinterpret_cast<const float4*>(st + hr * SP + 8 * u);
            const float4 b = *reinterpret_cast<const float4*>(st + hr * SP + 8 * u + 4);
            const __nv_bfloat162 p0 = __floats2bfloat162_rn(a.x * inv, a.y * inv), p1 = __floats2bfloat162_rn(a.z * inv, a.w * inv),
                                 p2 = __floats2bfloat162_rn(b.x * inv, b.y * inv), p3 = __floats2bfloat162_rn(b.z * inv, b.w * inv);
            uint4 v;
            v.x = *reinterpret_cast<const uint32_t*>(&p0), v.y = *reinterpret_cast<const uint32_t*>(&p1);
            v.z = *reinterpret_cast<const uint32_t*>(&p2), v.w = *reinterpret_cast<const uint32_t*>(&p3);
            reinterpret_cast<uint4*>(out + (th0 + hr) * tc::rank)[u] = v;
          }
        }
      }
    } else {
#pragma unroll
    for (int i = 0; i < QT; ++i) {
      if (i >= nt) break;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int hr = g + 8 * half, r = i * 16 + hr;
        if (hr >= hg) continue;
        const size_t th = static_cast<size_t>(t0 + i) * d.heads + h0 + hr;
        if (splits == 1) {
          const float inv = 1.0f / l_s[r];
#pragma unroll
          for (int c = 0; c < ntiles; ++c) {
            const int col = warp * cols + c * 8 + 2 * q;
            *reinterpret_cast<__nv_bfloat162*>(out + th * tc::rank + col) =
                __floats2bfloat162_rn(acc[i][c][2 * half] * inv, acc[i][c][2 * half + 1] * inv);
          }
        } else {
          float* part = partial + (th * splits + blockIdx.z) * partial_stride(tc::rank);
#pragma unroll
          for (int c = 0; c < ntiles; ++c) {
            const int col = warp * cols + c * 8 + 2 * q;
            part[col] = acc[i][c][2 * half];
            part[col + 1] = acc[i][c][2 * half + 1];
          }
          if (warp == 0 && q == 0) {
            part[tc::rank] = m_s[r];
            part[tc::rank + 1] = l_s[r];
          }
        }
      }
    }
    }
    t0 = t1;
  }
}

// The merge of one (token, head)'s split partial softmax sums at `base`, in two steps that every
// kernel merging them shares (so that they give the same bits). First, by the block's first warp
// (max_splits <= 32), each split's scale and the inverse of the merged sum of exponentials.
__device__ __forceinline__ void merge_scales(const float* base, int stride, int splits, int kv_rank, float* scale_s,
                                             float* inv_l) {
  const int s = threadIdx.x;
  const float m = s < splits ? base[s * stride + kv_rank] : -INFINITY;
  const float l = s < splits ? base[s * stride + kv_rank + 1] : 0.0f;
  const float M = warp_max(m);
  const float f = m == -INFINITY ? 0.0f : __expf(m - M);
  const float L = warp_sum(l * f);
  if (s < splits) scale_s[s] = f;
  if (s == 0) *inv_l = 1.0f / L;
}

// Then, after a barrier, latent column c of the merged attention (before its rounding).
__device__ __forceinline__ float merged_value(const float* base, int stride, int splits, const float* scale_s,
                                              float inv_l, int c) {
  float v = 0;
#pragma unroll 8
  for (int s = 0; s < splits; ++s) v += base[s * stride + c] * scale_s[s];
  return v * inv_l;
}

// One block per (token, head): merges the splits' partial softmax sums.
template <typename T>
__global__ void mla_combine_kernel(const float* partial, int splits, int kv_rank, T* out) {
  enter_in_order();
  __shared__ float scale_s[max_splits];
  __shared__ float inv_l;
  const size_t th = blockIdx.x;
  const int stride = partial_stride(kv_rank);
  const float* base = partial + th * splits * stride;
  if (threadIdx.x < 32) merge_scales(base, stride, splits, kv_rank, scale_s, &inv_l);
  __syncthreads();
  for (int c = threadIdx.x; c < kv_rank; c += blockDim.x)
    out[th * kv_rank + c] = from_float<T>(merged_value(base, stride, splits, scale_s, inv_l, c));
}

// The merge with W_UV after it, for bf16 at kv_rank tc::rank: grid (head, v_dim / uv_cols, token).
// A block loads its uv_cols rows of the head's W_UV (kv_b[h, nope_dim + c, :]) before it waits for
// the attention (the next kernel may start once it has waited), merges the head's latent as mla_combine_kernel does (the same bf16 values), then
// warp w takes rows 4w .. 4w + 3, a lane 16 of each row's 512 columns, the sums rounded once:
// attn[t, h, c] = bf16(o_lat[t, h, :] . kv_b[h, nope_dim + c, :]).
constexpr int uv_cols = 16;
__global__ void __launch_bounds__(128) mla_combine_uv_kernel(const float* partial, int splits, const bf16* kv_b,
                                                             int nope_dim, int v_dim, int heads, bf16* attn) {
  constexpr int K = tc::rank, units = K / 8 / 32;  // 16-byte units of a row a lane holds
  __shared__ float scale_s[max_splits];
  __shared__ float inv_l;
  __shared__ __align__(16) bf16 lat[K];
  const int h = blockIdx.x, t = blockIdx.z, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row0 = blockIdx.y * uv_cols + warp * 4;
  const uint4* w = reinterpret_cast<const uint4*>(kv_b + (static_cast<size_t>(h) * (nope_dim + v_dim) + nope_dim + row0) * K);
  uint4 wv[4][units];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int u = 0; u < units; ++u) wv[r][u] = load_streaming(w + r * (K / 8) + lane + 32 * u);
  wait_for_prerequisites();
  // Only now may the next kernel (the o_proj product, which reads its weights before it waits)
  // start: let go before the wait, the kernels after this one are placed in a chain while the
  // attention still runs, and their loads slow it (B=1 2.33 -> 2.50 ms a step).
  trigger_dependents();
  const size_t th = static_cast<size_t>(t) * heads + h;
  const int stride = partial_stride(K);
  const float* base = partial + th * splits * stride;
  // A thread's columns of the first `held` splits' sums are asked for with the first warp's
  // scales, not after them: one round trip where there were two (the same sums in the same order).
  constexpr int held = 16, cols = K / 128;
  static_assert(K % 128 == 0, "128 threads, whole columns each");
  float pv[cols][held];
#pragma unroll
  for (int j = 0; j < cols; ++j)
#pragma unroll
    for (int s = 0; s < held; ++s) pv[j][s] = s < splits ? base[s * stride + threadIdx.x + 128 * j] : 0.0f;
  if (threadIdx.x < 32) merge_scales(base, stride, splits, K, scale_s, &inv_l);
  __syncthreads();
#pragma unroll
  for (int j = 0; j < cols; ++j) {
    const int c = threadIdx.x + 128 * j;
    float v = 0;
#pragma unroll
    for (int s = 0; s < held; ++s)
      if (s < splits) v += pv[j][s] * scale_s[s];
    for (int s = held; s < splits; ++s) v += base[s * stride + c] * scale_s[s];
    lat[c] = from_float<bf16>(v * inv_l);
  }
  __syncthreads();
  float acc[4] = {0, 0, 0, 0};
#pragma unroll
  for (int u = 0; u < units; ++u) {
    const uint4 x = reinterpret_cast<const uint4*>(lat)[lane + 32 * u];
    const auto* xp = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const auto* wp = reinterpret_cast<const __nv_bfloat162*>(&wv[r][u]);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 a = __bfloat1622float2(xp[e]), b = __bfloat1622float2(wp[e]);
        acc[r] += a.x * b.x + a.y * b.y;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) acc[r] = warp_sum(acc[r]);
  if (lane < 4) {
    float v = acc[0];
#pragma unroll
    for (int r = 1; r < 4; ++r)
      if (lane == r) v = acc[r];
    attn[th * v_dim + row0 + lane] = from_float<bf16>(v);
  }
}

}  // namespace device

template <typename T>
void mla_prepare(const float* ckv, int ckv_stride, const float* norm_w, float eps, const mla_query<T>& q,
                 const float2* rope_cs, bool interleave, const mla_dims& d, int n, const token_map& map, T* q_full,
                 T* cache, cudaStream_t s) {
  if (n == 0) return;
  // Parts (heads and the latent) a block: one for a few tokens (spread over the GPU), several for
  // prompts, whose (token, part) blocks are too small to be worth their scheduling.
  static const int prompt_parts = [] {
    const char* v = std::getenv("TOLLGATE_ENGINE_PREPARE_PARTS");
    return v && std::atoi(v) > 0 ? std::atoi(v) : 6;
  }();
  const int per_block = n > 256 ? std::min(prompt_parts, d.heads + 1) : 1;
  launch_early(device::mla_prepare_kernel<T>,
               dim3(static_cast<unsigned>(n), static_cast<unsigned>((d.heads + 1 + per_block - 1) / per_block)),
               dim3(128), 0, s, ckv, ckv_stride, norm_w, eps, q, rope_cs, interleave, d, map, q_full, cache, per_block);
  check_launch();
}

void mla_prepare_absorbing(const float* ckv, int ckv_stride, const float* norm_w, float eps, const mla_query<bf16>& q,
                           const bf16* kv_b, int v_dim, const float2* rope_cs, bool interleave, const mla_dims& d,
                           const token_map& map, bf16* q_full, bf16* cache, cudaStream_t s) {
  if (!mla_prepare_absorbing_fits(d) || q.f == nullptr)
    throw std::logic_error("mla_prepare_absorbing: a float query and nope_dim % 4, kv_rank % 64 dims");
  const unsigned parts = static_cast<unsigned>(d.heads + 1 + d.heads * (d.kv_rank / 64));
  launch_early(device::mla_prepare_absorbing_kernel, dim3(1, parts), dim3(128), 0, s, ckv, ckv_stride, norm_w, eps, q,
               kv_b, v_dim, rope_cs, interleave, d, map, q_full, cache);
  check_launch();
}

int mla_splits(int n, const mla_dims& d, int max_len) { return choose_splits(n, d, max_len); }

size_t mla_partial_floats(int n, const mla_dims& d, int max_len) {
  const int splits = choose_splits(n, d, max_len);
  if (splits == 1) return 0;
  return static_cast<size_t>(n) * d.heads * splits * partial_stride(d.kv_rank);
}

namespace {
/// Launches the tensor-core kernel with QT tokens a block.
template <int QT, int WARPS, bool ASYNC = false>
void launch_tc(const bf16* q_full, const bf16* cache, const mla_dims& d, int n, int splits, const token_map& map,
               float scale, float* partial, bf16* out, cudaStream_t s) {
  constexpr int R = 16 * QT;
  const int PW = d.width() + 8;
  const size_t smem = sizeof(bf16) * (static_cast<size_t>(R + device::tc::keys) * PW + R * device::tc::p_pitch) +
                      sizeof(float) * (static_cast<size_t>(R) * device::tc::keys + 3 * R);
  auto* kernel = device::mla_attend_tc_kernel<QT, WARPS, ASYNC>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>((n + QT - 1) / QT), static_cast<unsigned>(head_groups(d)),
                  static_cast<unsigned>(splits));
  launch_early(kernel, grid, dim3(WARPS * 32), smem, s, q_full, cache, d, map, n, scale, partial, out);
  check_launch();
}

/// TOLLGATE_MLA_ASYNC=0: one token a block loads its query and tiles through registers after the
/// wait, as before the cp.async loads (for measurements and the test that compares the two). Read
/// at each launch, so that a process can compare both (decode steps are launched from graphs).
bool async_loads() {
  const char* v = std::getenv("TOLLGATE_MLA_ASYNC");
  return v == nullptr || std::string(v) != "0";
}

/// Tokens a block of the tensor-core kernel takes: several when the batch is mostly prompt chunks
/// (they share the tiles they read), 1 in decode. TOLLGATE_MLA_TOKENS (1, 2 or 4) overrides the
/// choice for measurements.
int tokens_per_block(int n, int sequences, int splits, int asked) {
  if (splits > 1) return 1;
  if (asked == 0) {
    static const int env = [] {
      const char* v = std::getenv("TOLLGATE_MLA_TOKENS");
      return v ? std::atoi(v) : 0;
    }();
    asked = env;
  }
  if (asked == 1 || asked == 2 || asked == 4) return asked;
  return n > 256 && n >= 4 * sequences ? 4 : 1;
}
}  // namespace

template <typename T>
void mla_attend(const T* q_full, const T* cache, const mla_dims& d, int n, int sequences, int max_len,
                const token_map& map, float scale, float* partial, size_t partial_capacity, T* out, cudaStream_t s,
                int tokens_per_block_asked) {
  if (n == 0) return;
  if (d.kv_rank > threads * cols_per_thread)
    throw std::runtime_error("the attention kernel holds kv_lora_rank up to " + std::to_string(threads * cols_per_thread) +
                             ", the model has " + std::to_string(d.kv_rank));
  const int splits = choose_splits(n, d, max_len);
  if (splits > 1 && partial_capacity < mla_partial_floats(n, d, max_len))
    throw std::logic_error("mla_attend: the partial scratch is too small");
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(head_groups(d)), static_cast<unsigned>(splits));
  if constexpr (std::is_same_v<T, bf16>) {
    if (d.kv_rank == device::tc::rank && d.width() % 16 == 0) {
      switch (tokens_per_block(n, sequences, splits, tokens_per_block_asked)) {
        case 4: launch_tc<4, 16>(q_full, cache, d, n, splits, map, scale, partial, out, s); break;
        case 2: launch_tc<2, 8>(q_full, cache, d, n, splits, map, scale, partial, out, s); break;
        default:
          if (async_loads()) launch_tc<1, 8, true>(q_full, cache, d, n, splits, map, scale, partial, out, s);
          else launch_tc<1, 8>(q_full, cache, d, n, splits, map, scale, partial, out, s);
          break;
      }
      if (splits > 1)
        launch_early(device::mla_combine_kernel<T>, dim3(static_cast<unsigned>(n * d.heads)), dim3(256), 0, s, partial,
                     splits, d.kv_rank, out);
      return;
    }
  }
  const int P = d.width() + 1;
  const size_t smem =
      sizeof(float) * (static_cast<size_t>(heads_per_block + keys_per_tile) * P + heads_per_block * keys_per_tile + heads_per_block);
  check(cudaFuncSetAttribute(device::mla_attend_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem)));
  device::mla_attend_kernel<T><<<grid, threads, smem, s>>>(q_full, cache, d, map, scale, partial, out);
  check_launch();
  if (splits > 1) {
    device::mla_combine_kernel<T><<<static_cast<unsigned>(n * d.heads), 256, 0, s>>>(partial, splits, d.kv_rank, out);
    check_launch();
  }
}

bool mla_attend_uv_takes(const mla_dims& d, int n, int max_len, int v_dim) {
  return n > 0 && d.kv_rank == device::tc::rank && d.width() % 16 == 0 && v_dim > 0 && v_dim % device::uv_cols == 0 &&
         choose_splits(n, d, max_len) > 1;
}

void mla_attend_uv(const bf16* q_full, const bf16* cache, const mla_dims& d, int n, int max_len, const token_map& map,
                   float scale, float* partial, size_t partial_capacity, const bf16* kv_b, int v_dim, bf16* attn,
                   cudaStream_t s) {
  if (!mla_attend_uv_takes(d, n, max_len, v_dim))
    throw std::logic_error("mla_attend_uv: kv_rank 512, width % 16 == 0, v_dim % 16 == 0 and a split context");
  const int splits = choose_splits(n, d, max_len);
  if (partial_capacity < mla_partial_floats(n, d, max_len)) throw std::logic_error("mla_attend_uv: the partial scratch is too small");
  if (async_loads()) launch_tc<1, 8, true>(q_full, cache, d, n, splits, map, scale, partial, nullptr, s);
  else launch_tc<1, 8>(q_full, cache, d, n, splits, map, scale, partial, nullptr, s);
  launch_dependent(device::mla_combine_uv_kernel,
                   dim3(static_cast<unsigned>(d.heads), static_cast<unsigned>(v_dim / device::uv_cols),
                        static_cast<unsigned>(n)),
                   dim3(128), s, partial, splits, kv_b, d.nope_dim, v_dim, d.heads, attn);
  check_launch();
}

#define TOLLGATE_INSTANTIATE(T)                                                                                  \
  template void mla_prepare<T>(const float*, int, const float*, float, const mla_query<T>&, const float2*, bool,    \
                               const mla_dims&, int, const token_map&, T*, T*, cudaStream_t);                      \
  template void mla_attend<T>(const T*, const T*, const mla_dims&, int, int, int, const token_map&, float, float*,   \
                              size_t, T*, cudaStream_t, int);
TOLLGATE_INSTANTIATE(float)
TOLLGATE_INSTANTIATE(bf16)
#undef TOLLGATE_INSTANTIATE

}  // namespace tollgate::engine::cuda
