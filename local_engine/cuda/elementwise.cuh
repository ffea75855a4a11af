// Row-wise kernels of the forward: embedding lookup, RMSNorm fused with the residual add, the
// SwiGLU activation, bias adds, row gathers, and weight conversion and random initialisation.
// T is the weights' and activations' type (float or bf16); the residual stream is always float.
#pragma once

#include <cstdint>

#include "local_engine/cuda/common.cuh"

namespace tollgate::engine::cuda {

/// x[t, :] = table[tokens[t], :] (as float), for t < n.
template <typename T>
void embed(const T* table, const int32_t* tokens, int n, int hidden, float* x, cudaStream_t s);

/// A MoE layer's output, summed where it is added to the residual stream: for token t,
/// shared[t] (when shared) + sum_k weights[t, k] * rows[slot_row[t * top_k + k]].
struct moe_sum {
  const float* rows = nullptr;  ///< null: no MoE output
  const int32_t* slot_row = nullptr;
  const float* weights = nullptr;
  const float* shared = nullptr;
  int top_k = 0;
  const bf16* rows16 = nullptr;  ///< the rows in bf16 instead of rows (prefill's expert slots in bf16 mode)
  __host__ __device__ bool any() const { return rows || rows16; }
};

/// For each output row r < n with source row i = rows ? rows[r] : r:
///   x[i] += add[i] (when add), x[i] += the MoE sum of token i (when moe.rows), x[i] += bias (when
///   bias), then out[r] = w * x[i] / rms(x[i]).
/// x is updated in place (the residual stream); out is the normalised row in T.
template <typename T>
void rmsnorm(float* x, const float* add, const moe_sum& moe, const float* bias, const float* w, float eps, int cols,
             int n, const int32_t* rows, T* out, cudaStream_t s);

/// out[r, i] = silu(gu[r, i]) * gu[r, inter + i] for r < n, i < inter (gu holds gate then up;
/// its rows are `stride` floats apart, 2 * inter when 0).
template <typename T>
void silu_mul(const float* gu, int inter, int n, T* out, cudaStream_t s, int stride = 0);

/// silu_mul with gate and up in bf16 (rows 2 * inter apart; inter a multiple of 4).
void silu_mul(const bf16* gu, int inter, int n, bf16* out, cudaStream_t s);

/// y[r, c] += bias[c].
void add_bias(float* y, const float* bias, int cols, int n, cudaStream_t s);

/// dst[r, :] = src[rows[r], :] for r < n.
template <typename T>
void gather_rows(const T* src, const int32_t* rows, int cols, int n, T* dst, cudaStream_t s);

/// Prefill's experts in slots (cuda_forward.cpp, slot_experts): slot_index[s] = base[ids[s]] +
/// slot_row[s] - offsets[ids[s]] for the n slots s (token, k): the padded row where that slot's row
/// went, base[e] being expert e's first padded row.
void expert_slot_index(const int32_t* ids, const int32_t* slot_row, const int32_t* offsets, const int32_t* base, int n,
                       int32_t* slot_index, cudaStream_t s);

/// dst[i] = T(src[i]).
template <typename T>
void convert(const float* src, size_t n, T* dst, cudaStream_t s);

/// dst[i] = mean + stddev * (a uniform draw in [-sqrt(3), sqrt(3)) from (seed, i)): benchmark weights
/// made on the device instead of read from disk.
template <typename T>
void fill_random(T* dst, size_t n, uint64_t seed, float mean, float stddev, cudaStream_t s);

}  // namespace tollgate::engine::cuda
