// The pieces of un-absorbed attention for long prompts. Prefill of n tokens over a context of L
// positions in the absorbed form (mla.cuh) costs 2 * (2 * kv_rank + rope_dim) FLOPs a head for
// each (query, key) pair; expanding the cached latents to per-head keys and values first (one
// product with kv_b, 2 * kv_rank * heads * (nope_dim + v_dim) FLOPs a position) leaves
// 2 * (qk_dim + v_dim) a pair, about 3.4x fewer at DeepSeek's shapes, and every step is a plain
// matrix product. The forward does the products with cuBLAS; these kernels gather the latents
// and take the causal softmax between them.
#pragma once

#include <cstdint>

#include "local_engine/cuda/common.cuh"

namespace tollgate::engine::cuda {

/// out[j, :] = the cached row of position j (width values) for j < L, where position j lives in
/// block table[j / block_size] at row j % block_size of layer_cache.
template <typename T>
void gather_positions(const T* layer_cache, const int32_t* table, int block_size, int width, int L, T* out,
                      cudaStream_t s);

/// out[r, h, :a] = x[r * x_ld + h * x_head + :a] and out[r, h, a:a + b] = y[r * y_ld + h * y_head + :b]
/// for r < rows, h < heads (out is [rows, heads, a + b]): a head's nope and rope parts side by
/// side, for keys and queries, so that one product gives the scores.
template <typename T>
void concat_heads(const T* x, int x_ld, int x_head, int a, const T* y, int y_ld, int y_head, int b, int rows, int heads,
                  T* out, cudaStream_t s);

/// Row r of scores ([rows, L] float, rows = heads * q_rows) is query i = r % q_rows at position
/// first_pos + i: p[r, j] = softmax over j <= first_pos + i of scores[r, j] * scale, 0 past it.
template <typename T>
void causal_softmax(const float* scores, int rows, int q_rows, int L, int first_pos, float scale, T* p,
                    cudaStream_t s);

}  // namespace tollgate::engine::cuda
