// Multi-head latent attention on the paged latent cache, in DeepSeek's absorbed form: the cache
// holds per position only the normalised latent (kv_lora_rank values) and the rotated rope key
// (qk_rope_head_dim values); W_UK is folded into the query before attention and W_UV applied to
// the attended latent after it, so prefill and decode read the same compressed cache.
#pragma once

#include <cstdint>

#include "local_engine/cuda/common.cuh"

namespace tollgate::engine::cuda {

/// Where each new token of a batch lives: its position in its sequence, its cache slot
/// (block * block_size + position % block_size) and its sequence's block table.
struct token_map {
  const int32_t* pos = nullptr;
  const int32_t* slot = nullptr;
  const int32_t* table = nullptr;      ///< all block tables, one after another
  const int32_t* table_off = nullptr;  ///< per token: where its sequence's block table starts in `table`
  int block_size = 0;
};

struct mla_dims {
  int heads = 0, kv_rank = 0, rope_dim = 0, nope_dim = 0, qk_dim = 0;
  __host__ __device__ int width() const { return kv_rank + rope_dim; }  ///< values a cached position holds
};

/// Where mla_prepare finds each token's query ([heads, qk_dim]): in T, rows heads * qk_dim apart
/// (`t`), or in float, rows `stride` apart (`f`: the product that gave q and ckv at once), in
/// which case its nope parts are also written in T to `nope` ([n, heads, nope_dim], what the
/// W_UK product reads).
template <typename T>
struct mla_query {
  const T* t = nullptr;
  const float* f = nullptr;
  int stride = 0;
  T* nope = nullptr;
};

/// For n tokens: normalises the latent part of ckv ([n, kv_rank + rope_dim] float, rows
/// ckv_stride apart) with norm_w and writes it, with the rope key rotated, to the cache at each
/// token's slot; rotates every head's rope part of q into q_full[t, h, kv_rank:] ([n, heads,
/// width]). rope_cs holds (cos, sin) pairs [max_positions, rope_dim / 2], the YaRN factor applied.
template <typename T>
void mla_prepare(const float* ckv, int ckv_stride, const float* norm_w, float eps, const mla_query<T>& q,
                 const float2* rope_cs, bool interleave, const mla_dims& d, int n, const token_map& map, T* q_full,
                 T* cache, cudaStream_t s);

/// Whether mla_prepare_absorbing takes these dims: nope_dim % 4 == 0 and <= 128, kv_rank % 64 == 0.
inline bool mla_prepare_absorbing_fits(const mla_dims& d) {
  return d.nope_dim % 4 == 0 && d.nope_dim <= 128 && d.nope_dim > 0 && d.kv_rank % 64 == 0;
}

/// mla_prepare of one token in bf16 whose query is in float (q.f), with W_UK absorbed by the same
/// kernel: q_full[h, :kv_rank] = bf16(q_nope[h]) . kv_b[h, :nope_dim, :] (kv_b [heads, nope_dim +
/// v_dim, kv_rank] as the W_UK product reads it), by heads x kv_rank / 64 more blocks, each of which
/// loads its 64-column slice of a head's weights before it waits for the kernel before. Float
/// sums, rounded once: the product's values to float rounding, without its kernel. q.nope is not
/// written.
void mla_prepare_absorbing(const float* ckv, int ckv_stride, const float* norm_w, float eps, const mla_query<bf16>& q,
                           const bf16* kv_b, int v_dim, const float2* rope_cs, bool interleave, const mla_dims& d,
                           const token_map& map, bf16* q_full, bf16* cache, cudaStream_t s);

/// Causal attention of n tokens over their sequences' cached positions 0..pos: scores are
/// (q_full . cached) * scale over `width` values, the output is the attended latent [n, heads,
/// kv_rank] in T. The batch's tokens come from `sequences` sequences, each one's tokens side by
/// side. `partial` (scratch of partial_floats(n, d, max_len) floats) lets long contexts split
/// across blocks when the batch is small. tokens_per_block (bf16: 1, 2 or 4; 0 chooses) sets how
/// many tokens of one sequence share a block's reads of the cache; the result's bits do not
/// depend on it.
template <typename T>
void mla_attend(const T* q_full, const T* cache, const mla_dims& d, int n, int sequences, int max_len,
                const token_map& map, float scale, float* partial, size_t partial_capacity, T* out, cudaStream_t s,
                int tokens_per_block = 0);

/// Whether mla_attend_uv takes n tokens whose longest context is max_len: kv_rank 512 (the
/// tensor-core attention), width and v_dim multiples of 16, and contexts split across blocks (the
/// merge that W_UV joins).
bool mla_attend_uv_takes(const mla_dims& d, int n, int max_len, int v_dim);

/// mla_attend in bf16 with W_UV applied by the kernel that merges the split contexts:
/// attn[t, h, :] = o_lat[t, h, :] . kv_b[h, nope_dim:, :]^T ([n, heads, v_dim]; kv_b [heads,
/// nope_dim + v_dim, kv_rank] as the W_UV product reads it), where o_lat holds exactly mla_attend's
/// bf16 values. Float sums over the latent, rounded once (the product's values to float rounding,
/// without its kernel nor the merge's own). Each merging block loads its rows of W_UV before it
/// waits for the attention. Only where mla_attend_uv_takes.
void mla_attend_uv(const bf16* q_full, const bf16* cache, const mla_dims& d, int n, int max_len, const token_map& map,
                   float scale, float* partial, size_t partial_capacity, const bf16* kv_b, int v_dim, bf16* attn,
                   cudaStream_t s);

/// The scratch that mla_attend may use for n tokens whose longest context is max_len.
size_t mla_partial_floats(int n, const mla_dims& d, int max_len);

/// How many blocks share one token's context in mla_attend (1: no split).
int mla_splits(int n, const mla_dims& d, int max_len);

}  // namespace tollgate::engine::cuda
