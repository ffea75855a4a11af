// The pieces of un-absorbed attention for long prompts. Prefill of n tokens over a context of L
// positions in the absorbed form (mla.cuh) costs 2 * (2 * kv_rank + rope_dim) FLOPs a head for
// each (query, key) pair; expanding the cached latents to per-head keys and values first (one
// product with kv_b, 2 * kv_rank * heads * (nope_dim + v_dim) FLOPs a position) leaves
// 2 * (qk_dim + v_dim) a pair, about 3.4x fewer at DeepSeek's shapes. The forward expands the
// latents with cuBLAS; at DeepSeek's head shapes one fused kernel (flash_prefill) then takes the
// scores, the causal softmax and the weighted values tile by tile in registers, and at other
// shapes cuBLAS products with the softmax kernel below between them.
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

/// The operands of flash_prefill: pointers in bf16 elements, each row `_ld` apart and each head
/// `_head` apart; the rope key is shared by the heads.
struct flash_operands {
  const bf16* q_nope; int q_nope_ld, q_nope_head;
  const bf16* q_rope; int q_rope_ld, q_rope_head;
  const bf16* k_nope; int k_nope_ld, k_nope_head;
  const bf16* k_rope; int k_rope_ld;
  const bf16* v; int v_ld, v_head;
  bf16* out; int out_ld, out_head;
  int nope, rope, v_dim;
  int heads;  ///< heads from the pointers on
  int n;      ///< queries, at positions start .. start + n - 1
  int start;  ///< keys are positions 0 .. start + n - 1
  float scale;
};

/// Whether flash_prefill takes these head shapes (DeepSeek's: nope 128, rope 64, v 128), with
/// every pointer, row and head step 16-byte aligned.
bool flash_prefill_fits(const flash_operands& a);

/// out[i, h, :] = softmax over keys j <= start + i of scale * (q_nope[i, h] . k_nope[j, h] +
/// q_rope[i, h] . k_rope[j]), applied to v[j, h]; probabilities rounded to bf16 as the values
/// are summed (float sums). Blocks of 128 queries and one head, 64-key tiles copied ahead.
void flash_prefill(const flash_operands& a, cudaStream_t s);

}  // namespace tollgate::engine::cuda
