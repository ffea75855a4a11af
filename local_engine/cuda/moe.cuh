// DeepSeekMoE on the GPU: the router (softmax or sigmoid with the correction bias, group-limited
// top-k, normalisation, scaling), the permutation that groups a batch's token slots by expert, and
// a grouped product that reads each chosen expert's weights once for all of its rows. The
// weighted sum of the experts' rows is taken by the next RMSNorm (elementwise.cuh, moe_sum).
#pragma once

#include <cstdint>

#include "local_engine/cuda/common.cuh"

namespace tollgate::engine::cuda {

struct router_config {
  int experts = 0, top_k = 0, groups = 1, top_groups = 1;
  bool sigmoid = false;   ///< V3 scoring (else softmax)
  bool grouped = false;   ///< group-limited selection
  bool group_by_top2 = false;  ///< V3: a group's score is the sum of its two best biased scores (else its best score)
  bool normalise = false;
  float scaling = 1.0f;
  int stride = 0;  ///< floats between two tokens' logits; 0: experts
};

/// Where route_and_group writes the slots grouped by expert: offsets [experts + 1] (exclusive sums
/// of the rows each expert got), active [experts + 1]: how many experts have rows, then their ids;
/// row_token [n * top_k]: the token of each grouped row; slot_row [n * top_k]: the grouped row of
/// slot (t, k).
struct expert_groups {
  int32_t *offsets = nullptr, *active = nullptr, *row_token = nullptr, *slot_row = nullptr;
};

/// The shared experts' part in a decode step's routed kernels (no product or stream of their own).
/// The router's kernel writes act[t, :] = bf16(silu(gate) * up) from the router-and-shared product
/// (a token's gate values follow its `experts` router logits, its up values follow them; `inter`
/// values each) and zeroes out[t, :] (`hidden` floats). The routed down product then adds each
/// shared expert's part of W [hidden, parts * inter] . act to out: part p is columns p inter ..
/// (p + 1) inter, and with at most two parts the sum's bits do not depend on their order.
/// With `gate_up` (the shared experts' gate rows, then their up rows: [2 parts inter, hidden]), the
/// routed gate-up product computes the shared experts' gate and up itself, as more items of its
/// grid, and writes act and zeroes out: the router's product is then the router's rows alone.
struct shared_experts {
  bf16* act = nullptr;
  float* out = nullptr;
  const bf16* w = nullptr;
  int inter = 0, parts = 0, hidden = 0, rows = 0;
  const bf16* gate_up = nullptr;
};

/// Whether the routed kernels take the shared experts (bf16 weights, at most two parts, the shapes
/// the tensor-core product takes).
inline bool shared_in_experts_fits(int inter, int parts, int hidden) {
  return parts >= 1 && parts <= 2 && inter % 32 == 0 && hidden % 8 == 0;
}

/// logits [n, experts] (rows c.stride floats apart when set) -> ids [n, top_k] and weights
/// [n, top_k], as the CPU route_token() does; then the slots grouped by expert, by the last block
/// to finish (one kernel). `arrivals` is one device counter at 0, left at 0. With `shared.act`, also
/// the shared experts' SiLU-mul and the zeroed sums (above).
void route_and_group(const float* logits, const float* correction_bias, const router_config& c, int n, int32_t* ids,
                     float* weights, const expert_groups& groups, unsigned* arrivals, cudaStream_t s,
                     const shared_experts& shared = {});

/// out[r, :] = W[e] x[a(r), :] for the rows r of each expert e that `active` lists (offsets as
/// above), where a(r) = x_rows ? x_rows[r] : r: W is [experts, N, K] in T, x in T, out [rows, N]
/// in float. max_active bounds the list's length (min(experts, rows)), so no block is launched
/// for an expert without rows. bf16 with K % 32 == 0 and N % 8 == 0 runs on tensor cores.
template <typename T>
void expert_gemv(const T* W, const T* x, const int32_t* x_rows, const int32_t* offsets, const int32_t* active,
                 int max_active, int N, int K, float* out, cudaStream_t s);

/// expert_gemv<bf16> of the routed down product (W [experts, hidden, inter]) with the shared
/// experts' parts (shared_experts above) as more work items of the same grid. `lone_token`: the
/// slots are one token's, grouped by group_lone_token (max_active = top_k distinct experts, the
/// y-th listed owning row y), so an item reads only its expert, not `offsets` (same values).
/// `whole_lines` (with lone_token; shared.rows at most 1, inter % 8 == 0): on a kernel whose loads
/// read whole 128-byte lines of the weights, not the tensor-core fragments' 64 bytes of 8 rows
/// (about 3.9 TB/s against 3.3 on an H200); its sums run in another order (the same values to
/// float rounding).
void expert_down_with_shared(const bf16* W, const bf16* act, const int32_t* offsets, const int32_t* active,
                             int max_active, int hidden, int inter, float* out, const shared_experts& shared,
                             cudaStream_t s, bool lone_token = false, bool whole_lines = false);

/// Whether expert_gate_up_silu takes these shapes (inter % 32 == 0, K % 32 == 0).
bool expert_gate_up_silu_fits(int inter, int K);

/// expert_gemv of a gate-up matrix (bf16, W [experts, 2 inter, K]: gate rows, then up rows) with
/// silu_mul applied as it stores: act[r, :inter] = bf16(silu(gate) * up), the values expert_gemv
/// then silu_mul give, with no float [rows, 2 inter] between them.
/// With `shared.gate_up`, the shared experts' gate-up rows are items of the grid placed before the
/// routed ones, over shared.rows tokens (x's rows 0 .. rows - 1), and those items start without
/// waiting for the kernel before: they read only weights and x, so x must be complete when this
/// kernel is placed (the kernel before may let it start only after its own wait, as the skinny
/// product does, and x must come from before that kernel). The routed items wait as usual.
/// `lone_token` and `whole_lines` as for expert_down_with_shared (x_rows then all 0: not read).
void expert_gate_up_silu(const bf16* W, const bf16* x, const int32_t* x_rows, const int32_t* offsets,
                         const int32_t* active, int max_active, int inter, int K, bf16* act, cudaStream_t s,
                         const shared_experts& shared = {}, bool lone_token = false, bool whole_lines = false);

/// Expert weights kept in FP8 on the GPU (an FP8 checkpoint's e4m3 values, not dequantised at
/// load): w [experts, N, K] bytes and one float scale per row per block of 2^kb_shift columns,
/// scales [experts, N, ceil(K / 2^kb_shift)] (the checkpoint's block scales, spread over rows).
struct fp8_experts {
  const uint8_t* w = nullptr;
  const float* scales = nullptr;
  int kb_shift = 7;
};

/// Shapes the FP8 expert product takes (otherwise FP8 experts are dequantised at load).
inline bool fp8_experts_fit(int N, int K, int block_cols) {
  return K % 32 == 0 && N % 8 == 0 && block_cols >= 8 && (block_cols & (block_cols - 1)) == 0;
}

/// expert_gemv for bf16 activations and FP8 weights: each weight is dequantised as it is read, to
/// the bf16 value the loader would have made (value * scale, rounded to nearest), so the result
/// has the same bits as the dequantised model's. Same layout rules as expert_gemv. With `shared`
/// (a down product), the shared experts' parts too, as expert_down_with_shared does.
void expert_gemv_fp8(const fp8_experts& W, const bf16* x, const int32_t* x_rows, const int32_t* offsets,
                     const int32_t* active, int max_active, int N, int K, float* out, cudaStream_t s,
                     const shared_experts& shared = {});

/// Expert e's [N, K] matrix in bf16, dequantised as above (for prefill's cuBLAS products).
void dequantise_expert(const fp8_experts& W, int e, int N, int K, bf16* out, cudaStream_t s);
/// Experts e .. e + count - 1 the same way, one after another in out ([count, N, K]), one launch.
void dequantise_experts(const fp8_experts& W, int e, int count, int N, int K, bf16* out, cudaStream_t s);

/// Whether the FP8 tensor-core product takes these experts: scale blocks of 128 columns (as
/// DeepSeek's checkpoints have), K % 128 == 0, N % 8 == 0. The GPU must have FP8 (sm_89+).
inline bool fp8_mma_fits(int N, int K, int kb_shift) { return kb_shift == 7 && K % 128 == 0 && N % 8 == 0; }

/// Activations in FP8 as DeepSeek's inference quantises them: per row and block of 128 values,
/// scale = max |x| / 448 and q = e4m3(x / scale). x [rows, K] bf16 -> q [rows, K] bytes and
/// scales [rows, K / 128]. K % 128 == 0.
void quantise_rows_fp8(const bf16* x, int rows, int K, uint8_t* q, float* scales, cudaStream_t s);

/// expert_gemv on FP8 tensor cores (mma e4m3 x e4m3, float sums): activations quantised by
/// quantise_rows_fp8 (rows a(r) as in expert_gemv), weights as stored; each block of 128 values
/// is summed, then scaled by its activation and weight scales. Needs fp8_mma_fits.
void expert_fp8_mma(const fp8_experts& W, const uint8_t* xq, const float* xs, const int32_t* x_rows,
                    const int32_t* offsets, const int32_t* active, int max_active, int N, int K, float* out,
                    cudaStream_t s);

/// Benchmark weights: rows x K e4m3 values drawn from a seed (a spread of about `stddev` once
/// scaled) and their scales, on the device.
void fill_random_fp8(uint8_t* w, float* scales, size_t rows, int K, int kb_shift, uint64_t seed, float stddev,
                     cudaStream_t s);

}  // namespace tollgate::engine::cuda
