// The router's work for one token, by one block (device code for the kernels that route: the
// router's own kernel, and the router's product when it routes a lone token in its last block).
// Seen only by nvcc.
#pragma once

#include "local_engine/cuda/common.cuh"
#include "local_engine/cuda/moe.cuh"

namespace tollgate::engine::cuda::device {

// The larger of two (value, index) pairs; ties go to the lower index, as on the CPU.
__device__ __forceinline__ void better(float& v, int& i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i) || i < 0) {
    v = v2;
    i = i2;
  }
}

__device__ __forceinline__ void block_argmax(float& v, int& i, float* sv, int* si) {
  for (int o = 16; o > 0; o >>= 1) better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = i;
  }
  __syncthreads();
  v = -INFINITY;
  i = -1;
  if (lane < warps) {
    v = sv[lane];
    i = si[lane];
  }
  for (int o = 16; o > 0; o >>= 1) better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
}

// Token t's share of the shared experts (shared_experts in moe.cuh), by the block's threads from
// `first` on: SiLU-mul of its gate and up values (the separate kernel's formula and rounding), and
// its sums zeroed for the down product to add to. Four values a thread in flight.
__device__ inline void shared_prep(const shared_experts& sh, const float* row, int experts, int t, int first) {
  const int n = static_cast<int>(blockDim.x) - first, i0 = static_cast<int>(threadIdx.x) - first;
  const int width = sh.parts * sh.inter;  // every shared expert's gate values, then their up values
  const float* gate = row + experts;
  const float* up = gate + width;
  bf16* act = sh.act + static_cast<size_t>(t) * width;
  for (int i = i0; i < width; i += 4 * n) {
    float g[4], u[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int at = i + j * n;
      g[j] = at < width ? gate[at] : 0.0f;
      u[j] = at < width ? up[at] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (i + j * n < width) act[i + j * n] = __float2bfloat16_rn(silu_times(g[j], u[j]));
  }
  float* out = sh.out + static_cast<size_t>(t) * sh.hidden;
  for (int i = i0; i < sh.hidden; i += n) out[i] = 0.0f;
}

/// Token `token`'s routing from its logits `row`, by all of the block's threads: scores (softmax or
/// sigmoid with the correction bias), the group-limited top k, and its ids and weights (as the CPU
/// route_token() does); with `shared.act`, the shared experts' share too. `sm` holds
/// 2 x experts + groups floats. Returns the chosen experts (in shared memory, top_k of them). The
/// sums and maxima go a value a thread for up to blockDim.x experts, so a block of 128 threads and
/// one of 256 give the same bits for up to 128 experts.
__device__ inline const int* route_token(const float* row, const float* bias, const router_config& c, int token,
                                         int32_t* ids, float* weights, float* sm, const shared_experts& shared) {
  float* score = sm;                   // [experts]
  float* choice = score + c.experts;  // [experts]
  float* gscore = choice + c.experts;  // [groups]
  __shared__ float sv[32], red[32];
  __shared__ int si[32];
  __shared__ int keep_group[64];
  float mx = -INFINITY;
  for (int e = threadIdx.x; e < c.experts; e += blockDim.x) mx = fmaxf(mx, row[e]);
  if (!c.sigmoid) mx = block_max(mx, red);
  float sum = 0;
  for (int e = threadIdx.x; e < c.experts; e += blockDim.x) {
    const float v = c.sigmoid ? 1.0f / (1.0f + expf(-row[e])) : expf(row[e] - mx);
    score[e] = v;
    sum += v;
  }
  if (!c.sigmoid) {
    const float inv = 1.0f / block_sum(sum, red);
    for (int e = threadIdx.x; e < c.experts; e += blockDim.x) score[e] *= inv;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < c.experts; e += blockDim.x) choice[e] = score[e] + (c.sigmoid && bias ? bias[e] : 0.0f);
  __syncthreads();
  if (c.grouped) {
    const int per = c.experts / c.groups;
    for (int g = threadIdx.x; g < c.groups; g += blockDim.x) {
      float b1 = -INFINITY, b2 = -INFINITY;
      for (int i = 0; i < per; ++i) {
        const float v = c.group_by_top2 ? choice[g * per + i] : score[g * per + i];
        if (v > b1) {
          b2 = b1;
          b1 = v;
        } else if (v > b2) {
          b2 = v;
        }
      }
      gscore[g] = c.group_by_top2 ? b1 + b2 : b1;
      keep_group[g] = 0;
    }
    __syncthreads();
    for (int k = 0; k < c.top_groups; ++k) {
      float v = -INFINITY;
      int i = -1;
      for (int g = threadIdx.x; g < c.groups; g += blockDim.x) better(v, i, gscore[g], g);
      block_argmax(v, i, sv, si);
      if (threadIdx.x == 0) {
        keep_group[i] = 1;
        gscore[i] = -INFINITY;
      }
      __syncthreads();
    }
    const float masked = c.sigmoid ? -INFINITY : 0.0f;
    for (int e = threadIdx.x; e < c.experts; e += blockDim.x)
      if (!keep_group[e / per]) choice[e] = masked;
    __syncthreads();
  }
  __shared__ int chosen[32];
  if (c.experts <= 256) {
    // Up to 256 experts: one warp picks the top k from registers (8 choices a lane), with no
    // block-wide step between picks; the same picks and ties as below.
    if (threadIdx.x < 32) {
      const int lane = threadIdx.x;
      float v[8];
      unsigned left = 0;  // bit j: choice lane + 32 j not taken yet
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int e = lane + 32 * j;
        v[j] = e < c.experts ? choice[e] : -INFINITY;
        if (e < c.experts) left |= 1u << j;
      }
      for (int k = 0; k < c.top_k; ++k) {
        float bv = -INFINITY;
        int bi = -1;
#pragma unroll
        for (int j = 0; j < 8; ++j)
          if (left >> j & 1u) better(bv, bi, v[j], lane + 32 * j);
        for (int o = 16; o > 0; o >>= 1)
          better(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
        if (bi >= 0 && (bi & 31) == lane) left &= ~(1u << (bi >> 5));
        if (lane == 0) chosen[k] = bi;
      }
    } else if (shared.act) {  // the other warps meanwhile
      shared_prep(shared, row, c.experts, token, 32);
    }
    __syncthreads();
  } else {
    __shared__ unsigned char taken[1024];
    for (int e = threadIdx.x; e < c.experts; e += blockDim.x) taken[e] = 0;
    __syncthreads();
    for (int k = 0; k < c.top_k; ++k) {
      float v = -INFINITY;
      int i = -1;
      for (int e = threadIdx.x; e < c.experts; e += blockDim.x)
        if (!taken[e]) better(v, i, choice[e], e);
      block_argmax(v, i, sv, si);
      if (threadIdx.x == 0) {
        chosen[k] = i;
        taken[i] = 1;
      }
      __syncthreads();
    }
    if (shared.act) shared_prep(shared, row, c.experts, token, 0);
  }
  if (threadIdx.x == 0) {
    float wsum = 0;
    for (int k = 0; k < c.top_k; ++k) wsum += score[chosen[k]];
    const float den = wsum + 1e-20f;
    for (int k = 0; k < c.top_k; ++k) {
      float w = score[chosen[k]];
      if (c.normalise) w /= den;
      ids[token * c.top_k + k] = chosen[k];
      weights[token * c.top_k + k] = w * c.scaling;
    }
  }
  return chosen;
}

/// A lone token's slots grouped by expert from its `chosen` experts (all of the block's threads,
/// after route_token): each chosen expert has one row, at its rank among them.
__device__ inline void group_lone_token(const int* chosen, const router_config& c, const expert_groups& groups) {
  for (int e = threadIdx.x; e <= c.experts; e += blockDim.x) {
    int below = 0;
    for (int k = 0; k < c.top_k; ++k) below += chosen[k] < e;
    groups.offsets[e] = below;
  }
  if (static_cast<int>(threadIdx.x) < c.top_k) {
    const int e = chosen[threadIdx.x];
    int rank = 0;
    for (int k = 0; k < c.top_k; ++k) rank += chosen[k] < e;
    groups.active[1 + rank] = e;
    groups.row_token[rank] = 0;
    groups.slot_row[threadIdx.x] = rank;
  }
  if (threadIdx.x == 0) groups.active[0] = c.top_k;
}

}  // namespace tollgate::engine::cuda::device
