#include "local_engine/cuda/mla_prefill.cuh"

#include "local_engine/cuda/tensor_core.cuh"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace tollgate::engine::cuda {

namespace device {

template <typename T>
__global__ void gather_positions_kernel(const T* cache, const int32_t* table, int block_size, int width, int L,
                                        T* out) {
  enter_in_order();
  const size_t total = static_cast<size_t>(L) * width;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int j = static_cast<int>(i / width), c = static_cast<int>(i % width);
    const size_t slot = static_cast<size_t>(table[j / block_size]) * block_size + j % block_size;
    out[i] = cache[slot * width + c];
  }
}

template <typename T>
__global__ void concat_heads_kernel(const T* x, int x_ld, int x_head, int a, const T* y, int y_ld, int y_head, int b,
                                    int rows, int heads, T* out) {
  enter_in_order();
  const int w = a + b;
  const size_t total = static_cast<size_t>(rows) * heads * w;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % w);
    const size_t rh = i / w;
    const int h = static_cast<int>(rh % heads);
    const size_t r = rh / heads;
    out[i] = c < a ? x[r * x_ld + static_cast<size_t>(h) * x_head + c] : y[r * y_ld + static_cast<size_t>(h) * y_head + c - a];
  }
}

// concat_heads_kernel 16 bytes a thread: every width, stride and pointer a multiple of 16 bytes
// (counts here are in 16-byte units).
__global__ void concat_heads16_kernel(const uint4* x, int x_ld, int x_head, int a, const uint4* y, int y_ld, int y_head,
                                      int b, int rows, int heads, uint4* out) {
  enter_in_order();
  const int w = a + b;
  const int total = rows * heads * w;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int c = i % w, rh = i / w, h = rh % heads, r = rh / heads;
    out[i] = c < a ? x[static_cast<size_t>(r) * x_ld + h * x_head + c] : y[static_cast<size_t>(r) * y_ld + h * y_head + c - a];
  }
}

// One block a row: the row's maximum, its sum of exponentials, then the probabilities.
template <typename T>
__global__ void causal_softmax_kernel(const float* scores, int q_rows, int L, int first_pos, float scale, T* p) {
  enter_in_order();
  __shared__ float scratch[32];
  const size_t r = blockIdx.x;
  const int valid = min(L, first_pos + static_cast<int>(r % q_rows) + 1);
  const float* row = scores + r * L;
  T* out = p + r * L;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < valid; j += blockDim.x) m = fmaxf(m, row[j]);
  m = block_max(m, scratch);
  float sum = 0;
  for (int j = threadIdx.x; j < valid; j += blockDim.x) sum += expf((row[j] - m) * scale);
  const float inv = 1.0f / block_sum(sum, scratch);
  for (int j = threadIdx.x; j < L; j += blockDim.x)
    out[j] = from_float<T>(j < valid ? expf((row[j] - m) * scale) * inv : 0.0f);
}

constexpr int softmax_vecs = 16;  // float4s a lane holds: rows up to 2,048 keys in registers

// One warp a row of up to 128 * softmax_vecs keys (L a multiple of 4), held in registers: one read
// of the scores, one write of the probabilities.
template <typename T>
__global__ void causal_softmax_warp_kernel(const float* scores, int rows, int q_rows, int L, int first_pos, float scale,
                                           T* p) {
  enter_in_order();
  const int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
  if (r >= rows) return;
  const int valid = min(L, first_pos + r % q_rows + 1);
  const float4* row = reinterpret_cast<const float4*>(scores + static_cast<size_t>(r) * L);
  float v[softmax_vecs][4];
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < softmax_vecs; ++i) {
    const int j = 4 * (lane + 32 * i);
    const float4 x = j < valid ? row[j / 4] : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
    v[i][0] = j < valid ? x.x : -INFINITY, v[i][1] = j + 1 < valid ? x.y : -INFINITY;
    v[i][2] = j + 2 < valid ? x.z : -INFINITY, v[i][3] = j + 3 < valid ? x.w : -INFINITY;
#pragma unroll
    for (int c = 0; c < 4; ++c) m = fmaxf(m, v[i][c]);
  }
  m = warp_max(m);
  float sum = 0;
#pragma unroll
  for (int i = 0; i < softmax_vecs; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      v[i][c] = v[i][c] == -INFINITY ? 0.0f : expf((v[i][c] - m) * scale);
      sum += v[i][c];
    }
  const float inv = 1.0f / warp_sum(sum);
  T* out = p + static_cast<size_t>(r) * L;
#pragma unroll
  for (int i = 0; i < softmax_vecs; ++i) {
    const int j = 4 * (lane + 32 * i);
    if (j < L) store4(out + j, v[i][0] * inv, v[i][1] * inv, v[i][2] * inv, v[i][3] * inv);
  }
}

namespace flash {
constexpr int keys = 64;      // keys a tile
constexpr int qk_steps = 12;  // 16-wide steps of nope + rope (192 at DeepSeek's shapes)
constexpr int v_tiles = 16;   // 8-wide tiles of v (128)
constexpr int qk = qk_steps * 16, vd = v_tiles * 8;
constexpr int k_pitch = qk + 8, v_pitch = vd + 8;  // padded rows: ldmatrix without bank conflicts
constexpr size_t smem_bytes = sizeof(bf16) * 2 * keys * (k_pitch + v_pitch);
}  // namespace flash

// A block: 16 * WARPS queries of one head, a warp's 16 rows each. Its key tiles are copied by
// cp.async one ahead of the products (two stages of keys and values; the queries come through the
// key stages first and stay in registers). Per tile, a warp's 16 x 64 scores are products of its
// query fragments and the tile's keys; the running maximum and sums follow FlashAttention's
// online softmax in registers, the probabilities (bf16) are used as the A fragments of P . V
// directly, and the output is scaled once at the end. Tiles past a block's last query are never
// read; keys past a query's position get probability 0.
template <int WARPS>
__global__ void __launch_bounds__(WARPS * 32, 8 / WARPS) flash_prefill_kernel(flash_operands a) {
  enter_in_order();
  using namespace flash;
  constexpr int rows = 16 * WARPS, threads = 32 * WARPS;
  static_assert(rows <= 2 * keys, "the queries come through the two key stages");
  extern __shared__ __align__(16) unsigned char raw[];
  bf16* k_s = reinterpret_cast<bf16*>(raw);  // [2][keys][k_pitch]
  bf16* v_s = k_s + 2 * keys * k_pitch;      // [2][keys][v_pitch]
  const int h = blockIdx.y;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * rows;  // the longest blocks first
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, qd = lane & 3;
  const int len = a.start + a.n;
  const int first_pos = a.start + q0, last_pos = min(first_pos + rows - 1, len - 1);
  const int tiles = last_pos / keys + 1;
  const int un = a.nope / 8, ur = a.rope / 8;  // 16-byte units of a row's parts
  constexpr int uq = qk / 8, uv = vd / 8;
  const uint4 zero = make_uint4(0, 0, 0, 0);

  const auto copy_keys = [&](int tile, int stage) {
    bf16* ks = k_s + stage * keys * k_pitch;
    bf16* vs = v_s + stage * keys * v_pitch;
    for (int idx = threadIdx.x; idx < keys * uq; idx += threads) {
      const int j = idx / uq, u = idx % uq, key = tile * keys + j;
      bf16* dst = ks + j * k_pitch + u * 8;
      if (key < len && u < un)
        tc::cp_async16(dst, a.k_nope + static_cast<size_t>(key) * a.k_nope_ld + static_cast<size_t>(h) * a.k_nope_head + u * 8);
      else if (key < len && u < un + ur)
        tc::cp_async16(dst, a.k_rope + static_cast<size_t>(key) * a.k_rope_ld + (u - un) * 8);
      else
        *reinterpret_cast<uint4*>(dst) = zero;
    }
    for (int idx = threadIdx.x; idx < keys * uv; idx += threads) {
      const int j = idx / uv, u = idx % uv, key = tile * keys + j;
      bf16* dst = vs + j * v_pitch + u * 8;
      if (key < len)
        tc::cp_async16(dst, a.v + static_cast<size_t>(key) * a.v_ld + static_cast<size_t>(h) * a.v_head + u * 8);
      else
        *reinterpret_cast<uint4*>(dst) = zero;
    }
  };

  // The queries through the key stages first, then the first tile.
  {
    bf16* qs = k_s;
    for (int idx = threadIdx.x; idx < rows * uq; idx += threads) {
      const int r = idx / uq, u = idx % uq, i = q0 + r;
      bf16* dst = qs + r * k_pitch + u * 8;
      if (i < a.n && u < un)
        tc::cp_async16(dst, a.q_nope + static_cast<size_t>(i) * a.q_nope_ld + static_cast<size_t>(h) * a.q_nope_head + u * 8);
      else if (i < a.n && u < un + ur)
        tc::cp_async16(dst, a.q_rope + static_cast<size_t>(i) * a.q_rope_ld + static_cast<size_t>(h) * a.q_rope_head +
                                (u - un) * 8);
      else
        *reinterpret_cast<uint4*>(dst) = zero;
    }
  }
  tc::cp_async_commit();
  tc::cp_async_wait_group<0>();
  __syncthreads();
  uint32_t qf[qk_steps][4];
#pragma unroll
  for (int ks = 0; ks < qk_steps; ++ks)
    tc::ldsm_x4(qf[ks], k_s + (warp * 16 + (lane & 15)) * k_pitch + ks * 16 + (lane >> 4) * 8);
  __syncthreads();  // the queries are in registers: the stages are free
  copy_keys(0, 0);
  tc::cp_async_commit();

  float o[v_tiles][4];
#pragma unroll
  for (int t = 0; t < v_tiles; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0, l1 = 0;  // rows g and g + 8 of the warp's 16
  const float sl = a.scale * 1.4426950408889634f;        // scores to base-2 exponents
  const int pos0 = first_pos + warp * 16 + g, pos1 = pos0 + 8;

  for (int tile = 0; tile < tiles; ++tile) {
    const int stage = tile & 1;
    if (tile + 1 < tiles) copy_keys(tile + 1, stage ^ 1);
    tc::cp_async_commit();
    tc::cp_async_wait_group<1>();
    __syncthreads();
    const bf16* ks = k_s + stage * keys * k_pitch;
    const bf16* vs = v_s + stage * keys * v_pitch;
    float sc[keys / 8][4];
#pragma unroll
    for (int t = 0; t < keys / 8; ++t) sc[t][0] = sc[t][1] = sc[t][2] = sc[t][3] = 0;
#pragma unroll
    for (int k = 0; k < qk_steps; ++k)
#pragma unroll
      for (int np = 0; np < keys / 16; ++np) {
        uint32_t b[4];
        tc::ldsm_x4(b, ks + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * k_pitch + k * 16 + ((lane >> 3) & 1) * 8);
        const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
        tc::mma(sc[2 * np], qf[k], b0);
        tc::mma(sc[2 * np + 1], qf[k], b1);
      }
    // Keys past a row's position (only in tiles that reach past the block's first query).
    const int key0 = tile * keys;
    if (key0 + keys - 1 > first_pos) {
#pragma unroll
      for (int t = 0; t < keys / 8; ++t) {
        const int key = key0 + t * 8 + 2 * qd;
        if (key > pos0) sc[t][0] = -INFINITY;
        if (key + 1 > pos0) sc[t][1] = -INFINITY;
        if (key > pos1) sc[t][2] = -INFINITY;
        if (key + 1 > pos1) sc[t][3] = -INFINITY;
      }
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int t = 0; t < keys / 8; ++t) {
      mx0 = fmaxf(mx0, fmaxf(sc[t][0], sc[t][1]));
      mx1 = fmaxf(mx1, fmaxf(sc[t][2], sc[t][3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    // Every row has key 0 in the first tile, so the maxima are finite from there on.
    const float n0 = fmaxf(m0, mx0 * sl), n1 = fmaxf(m1, mx1 * sl);
    const float c0 = exp2f(m0 - n0), c1 = exp2f(m1 - n1);
    m0 = n0, m1 = n1;
    l0 *= c0, l1 *= c1;
#pragma unroll
    for (int t = 0; t < v_tiles; ++t) o[t][0] *= c0, o[t][1] *= c0, o[t][2] *= c1, o[t][3] *= c1;
    uint32_t pf[keys / 8][2];  // the probabilities, bf16 pairs: rows g and g + 8
#pragma unroll
    for (int t = 0; t < keys / 8; ++t) {
      const __nv_bfloat162 p0 = __floats2bfloat162_rn(exp2f(sc[t][0] * sl - n0), exp2f(sc[t][1] * sl - n0));
      const __nv_bfloat162 p1 = __floats2bfloat162_rn(exp2f(sc[t][2] * sl - n1), exp2f(sc[t][3] * sl - n1));
      l0 += __low2float(p0) + __high2float(p0);
      l1 += __low2float(p1) + __high2float(p1);
      pf[t][0] = *reinterpret_cast<const uint32_t*>(&p0);
      pf[t][1] = *reinterpret_cast<const uint32_t*>(&p1);
    }
#pragma unroll
    for (int k = 0; k < keys / 16; ++k) {
      const uint32_t pa[4] = {pf[2 * k][0], pf[2 * k][1], pf[2 * k + 1][0], pf[2 * k + 1][1]};
#pragma unroll
      for (int vp = 0; vp < v_tiles / 2; ++vp) {
        uint32_t b[4];
        tc::ldsm_x4_trans(b, vs + (k * 16 + (lane & 15)) * v_pitch + vp * 16 + (lane >> 4) * 8);
        const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
        tc::mma(o[2 * vp], pa, b0);
        tc::mma(o[2 * vp + 1], pa, b1);
      }
    }
    __syncthreads();  // this stage's readers are done before the next copy into it
  }
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
  const int i0 = q0 + warp * 16 + g, i1 = i0 + 8;
#pragma unroll
  for (int t = 0; t < v_tiles; ++t) {
    const int c = t * 8 + 2 * qd;
    if (i0 < a.n)
      *reinterpret_cast<__nv_bfloat162*>(a.out + static_cast<size_t>(i0) * a.out_ld + static_cast<size_t>(h) * a.out_head + c) =
          __floats2bfloat162_rn(o[t][0] * inv0, o[t][1] * inv0);
    if (i1 < a.n)
      *reinterpret_cast<__nv_bfloat162*>(a.out + static_cast<size_t>(i1) * a.out_ld + static_cast<size_t>(h) * a.out_head + c) =
          __floats2bfloat162_rn(o[t][2] * inv1, o[t][3] * inv1);
  }
}

}  // namespace device

template <typename T>
void gather_positions(const T* layer_cache, const int32_t* table, int block_size, int width, int L, T* out,
                      cudaStream_t s) {
  if (L == 0) return;
  const size_t total = static_cast<size_t>(L) * width;
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>((total + 255) / 256, 4096));
  launch_early(device::gather_positions_kernel<T>, dim3(blocks), dim3(256), 0, s, layer_cache, table, block_size, width,
               L, out);
  check_launch();
}

template <typename T>
void concat_heads(const T* x, int x_ld, int x_head, int a, const T* y, int y_ld, int y_head, int b, int rows, int heads,
                  T* out, cudaStream_t s) {
  const size_t total = static_cast<size_t>(rows) * heads * (a + b);
  if (total == 0) return;
  constexpr int v = 16 / sizeof(T);
  const auto fits = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (a % v == 0 && b % v == 0 && x_ld % v == 0 && x_head % v == 0 && y_ld % v == 0 && y_head % v == 0 && fits(x) &&
      fits(y) && fits(out) && total / v < (size_t{1} << 31)) {
    const unsigned blocks = static_cast<unsigned>(std::min<size_t>((total / v + 255) / 256, 8192));
    launch_early(device::concat_heads16_kernel, dim3(blocks), dim3(256), 0, s, reinterpret_cast<const uint4*>(x),
                 x_ld / v, x_head / v, a / v, reinterpret_cast<const uint4*>(y), y_ld / v, y_head / v, b / v, rows, heads,
                 reinterpret_cast<uint4*>(out));
    check_launch();
    return;
  }
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>((total + 255) / 256, 8192));
  launch_early(device::concat_heads_kernel<T>, dim3(blocks), dim3(256), 0, s, x, x_ld, x_head, a, y, y_ld, y_head, b,
               rows, heads, out);
  check_launch();
}

template <typename T>
void causal_softmax(const float* scores, int rows, int q_rows, int L, int first_pos, float scale, T* p,
                    cudaStream_t s) {
  if (rows == 0) return;
  if (L % 4 == 0 && L <= 128 * device::softmax_vecs && reinterpret_cast<uintptr_t>(scores) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(p) % 16 == 0) {
    launch_early(device::causal_softmax_warp_kernel<T>, dim3(static_cast<unsigned>((rows + 7) / 8)), dim3(256), 0, s,
                 scores, rows, q_rows, L, first_pos, scale, p);
    check_launch();
    return;
  }
  launch_early(device::causal_softmax_kernel<T>, dim3(static_cast<unsigned>(rows)), dim3(256), 0, s, scores, q_rows, L,
               first_pos, scale, p);
  check_launch();
}

bool flash_prefill_fits(const flash_operands& a) {
  const auto al = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const auto st = [](int x) { return x % 8 == 0; };
  return a.nope % 8 == 0 && a.rope % 8 == 0 && (a.nope + a.rope + 15) / 16 == device::flash::qk_steps &&
         a.v_dim == device::flash::vd && al(a.q_nope) && al(a.q_rope) && al(a.k_nope) && al(a.k_rope) && al(a.v) &&
         al(a.out) && st(a.q_nope_ld) && st(a.q_nope_head) && st(a.q_rope_ld) && st(a.q_rope_head) &&
         st(a.k_nope_ld) && st(a.k_nope_head) && st(a.k_rope_ld) && st(a.v_ld) && st(a.v_head) && st(a.out_ld) &&
         st(a.out_head);
}

namespace {
template <int WARPS>
void launch_flash(const flash_operands& a, cudaStream_t s) {
  auto* kernel = device::flash_prefill_kernel<WARPS>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(device::flash::smem_bytes)));
  const dim3 grid(static_cast<unsigned>((a.n + 16 * WARPS - 1) / (16 * WARPS)), static_cast<unsigned>(a.heads));
  launch_early(kernel, grid, dim3(32 * WARPS), device::flash::smem_bytes, s, a);
  check_launch();
}
}  // namespace

void flash_prefill(const flash_operands& a, cudaStream_t s) {
  if (a.n == 0 || a.heads == 0) return;
  if (!flash_prefill_fits(a)) throw std::invalid_argument("flash_prefill: unsupported head shapes or alignment");
  // Eight warps a block (128 queries share each key tile's copy) unless TOLLGATE_ENGINE_FLASH_WARPS=4
  // (for measurements): 28.4 against 29.0-29.3 ms a 2,048-token prefill on the H200.
  static const int warps = [] {
    const char* v = std::getenv("TOLLGATE_ENGINE_FLASH_WARPS");
    return v && std::string(v) == "4" ? 4 : 8;
  }();
  if (warps == 8) launch_flash<8>(a, s);
  else launch_flash<4>(a, s);
}

#define TOLLGATE_INSTANTIATE(T)                                                                                   \
  template void gather_positions<T>(const T*, const int32_t*, int, int, int, T*, cudaStream_t);                     \
  template void concat_heads<T>(const T*, int, int, int, const T*, int, int, int, int, int, T*, cudaStream_t);      \
  template void causal_softmax<T>(const float*, int, int, int, int, float, T*, cudaStream_t);
TOLLGATE_INSTANTIATE(float)
TOLLGATE_INSTANTIATE(bf16)
#undef TOLLGATE_INSTANTIATE

}  // namespace tollgate::engine::cuda
