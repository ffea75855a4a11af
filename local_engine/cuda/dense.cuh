// Dense products with few rows (decode steps of up to 64 tokens) on bf16 tensor cores: every
// weight byte is read once, by the block that owns its columns and a slice of K, and the slices'
// fp32 partial sums are added in a fixed order. The split depends on the weight's shape alone, so
// a token's row comes out bit for bit the same whatever the batch size (of two rows or more: a
// lone row is read in whole lines, skinny_plan::whole_lines, and summed in another order). The last block of a column
// block to finish adds the slices (no second kernel); for up to 16 rows cut in at most 8 slices,
// the slices are one block's warp groups, added in shared memory in the same order. Each product is
// launched dependent on the kernel before it (programmatic dependent launch): its blocks start
// while that kernel finishes and ask L2 for their first weight lines, then wait for its results.
// The backend uses it up to backend_options::skinny_rows rows; larger products (prefill) stay with
// cuBLAS.
#pragma once

#include <cstddef>

#include "local_engine/cuda/common.cuh"
#include "local_engine/cuda/moe.cuh"

namespace tollgate::engine::cuda {

/// Rows a skinny product takes at most.
constexpr int skinny_max_rows = 64;

/// How a [N, K] weight is cut: `splits` slices of K, `units_per_split` 16-byte units (8 values) each.
/// The first `lead_blocks` column blocks (64 columns each) may be cut finer, in `lead_splits`
/// slices of `lead_units`: their blocks are placed first and each reads less, so that those
/// columns (a router's logits) are summed early while the rest of the product streams.
/// With `slices_in_block` (skinny_split's default; TOLLGATE_ENGINE_SKINNY_IN_BLOCK=0 turns it off,
/// for measurements), a product of up to 16 rows whose K is cut in 2 to skinny_block_slices slices
/// and no lead blocks takes each column block's slices as the warp groups of one block, added in
/// shared memory (the same bits as the scratch's sums): no partial sums through L2.
/// With `whole_lines` (skinny_split's default; TOLLGATE_ENGINE_SKINNY_LINES=0 turns it off), a
/// product of one row reads each weight row 256 bytes a load (whole 128-byte lines) where the
/// tensor-core fragments of several rows take 64 bytes of each of 8 rows (about 3.9 TB/s against
/// 3.4 on an H200); its sums are the same values to float rounding, not the same bits.
struct skinny_plan {
  int splits = 1, units_per_split = 0;
  int lead_blocks = 0, lead_splits = 0, lead_units = 0;
  bool slices_in_block = true;
  bool whole_lines = true;
};

/// The most K slices one block of the skinny product takes (slices_in_block above).
constexpr int skinny_block_slices = 8;

/// The partial-sum floats a product of M rows and N columns with this plan needs in its scratch.
size_t skinny_partial_floats(const skinny_plan& plan, int M, int N);

/// Whether skinny_gemm takes a weight of N rows and K columns (K % 32 == 0, N % 8 == 0).
bool skinny_fits(int N, int K);

/// The cut for a weight of N x K on a GPU of `sms` multiprocessors, with a workspace of
/// `workspace_floats` for the partial sums (splits x 64 x N of them). With `lead_cols` > 0 and
/// `lead_chunks` > 0, the column blocks that hold the first lead_cols columns are cut in slices
/// of lead_chunks 128-value chunks (when K is split at all). The cut depends on these arguments
/// and the shape alone, so a row's bits do not depend on the batch.
skinny_plan skinny_split(int N, int K, int sms, size_t workspace_floats, int lead_cols = 0, int lead_chunks = 0);

/// Device scratch for the skinny products of one stream (two streams at once need two): the K
/// slices' partial sums, and an arrival count per column block, left at 0 after each product.
struct skinny_scratch {
  static constexpr unsigned column_blocks = 4096;  ///< K is split only for N up to 64 x this
  explicit skinny_scratch(size_t partial_floats);
  ~skinny_scratch();
  skinny_scratch(const skinny_scratch&) = delete;
  skinny_scratch& operator=(const skinny_scratch&) = delete;
  size_t floats = 0;
  float* partial = nullptr;
  unsigned* counters = nullptr;
};

/// A lone token's routing done by the router's product itself: the last block to finish the
/// columns [0, experts) routes the token from them (route_and_group's work for one token, with
/// the same bits), so that no router kernel runs between the product and the experts. It does not
/// write the shared experts' SiLU-mul: the caller routes here only when the gate-up product
/// computes their gate and up itself (shared_experts::gate_up), when they run their own kernels,
/// or when there are none.
struct skinny_route {
  router_config c;  ///< c.stride is set to N by skinny_gemm
  const float* bias = nullptr;
  int32_t* ids = nullptr;
  float* weights = nullptr;
  expert_groups groups;
};

/// Whether skinny_gemm routes with this plan: one row, float output, K split (a last block per
/// column block), up to 128 experts (the router's sums then have the router kernel's bits).
bool skinny_route_fits(const skinny_plan& plan, int M, int N, const router_config& c);

/// y[M, N] = x[M, K] . W[N, K]^T for 1 <= M <= 64, with y in float (y_float) or bf16. `workspace`
/// holds splits x M x N floats (skinny_split bounds it); the product is launched on `s`. With
/// `route` (skinny_route_fits), the token is routed from y's first columns too.
void skinny_gemm(const bf16* x, int M, const bf16* W, int N, int K, void* y, bool y_float, const skinny_plan& plan,
                 const skinny_scratch& workspace, cudaStream_t s, const skinny_route* route = nullptr);

/// Whether staged_row_gemm takes a weight of N rows and K columns on a GPU of `sms`
/// multiprocessors: a block's share of the rows (N / sms of them) fits its shared memory.
bool staged_row_fits(int N, int K, int sms);

/// y[1, N] = x[1, K] . W[N, K]^T, y in float (y_float) or bf16, for one row whose weight fits the
/// multiprocessors' shared memory (staged_row_fits): each block copies its columns' rows there
/// before it waits for the kernel before (launched dependent on it), so only x is read after the
/// wait. Each column is one warp's sum over K in a fixed order.
void staged_row_gemm(const bf16* x, const bf16* W, int N, int K, void* y, bool y_float, int sms, cudaStream_t s);

}  // namespace tollgate::engine::cuda
