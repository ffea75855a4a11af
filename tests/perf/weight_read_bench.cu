// In what order a lone token's expert product should read its weights. The product's blocks each
// take an item of 64 rows of a row-major bf16 matrix (V2-Lite's gate-up: 32 gate rows and the 32
// up rows of the same columns, 2,048 values a row: two runs of 128 KB); a decode step reads six
// experts' 44 items each (69 MB), one item a block. This reads the same bytes in the same grid
// (264 blocks of 256 threads, two a multiprocessor) with only loads (their words XORed into a sink
// so that they are kept), in these orders:
//   rows     the expert kernel's: the tensor-core fragments' 8 rows a warp, 256 bytes of each of
//            the block's 64 rows a round (each half of the block over half of K), 16 B loads,
//            `ahead` rounds' loads in flight a thread (1: as main's kernel; 2: the next chunk
//            asked for before this one is used)
//   strips   8 rows a round across the whole block (the 8 warps each over an eighth of K), so a
//            round reads 2 x 32 KB that lie together, the same fragments a warp
//   L lanes  a warp's load over 32 / L rows, L x 16 bytes of each (4: the fragments' 64 bytes a
//            row; 8: a whole line), each warp its 8 rows in turn over all of K, 8 loads in flight
//   plain    each block its two 128 KB runs from start to end, 16 loads in flight a thread
// Two copies of the experts are read in turn, so that the 50 MB L2 does not serve a launch from
// the launch before. Timed with CUDA events (20 launches after 3), the median of `runs`.
//
//   tollgate-weight-read-bench [--runs 7] [--experts 6]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

constexpr int inter = 1408, K = 2048, units = K / 8;  // 16-byte units a row
constexpr int rows_per_expert = 2 * inter, slices = inter / 32;

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ unsigned fold(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }

/// Item `item`'s row `r` (0..31 gate, 32..63 up).
__device__ __forceinline__ const uint4* item_row(const uint4* w, int item, int r) {
  const int e = item / slices, slice = item % slices;
  const int row = e * rows_per_expert + (r < 32 ? 0 : inter) + slice * 32 + (r & 31);
  return w + static_cast<size_t>(row) * units;
}

/// A thread's loads of AHEAD chunks of the fragments' order from k (16 units a chunk: units
/// k + 16 a + 4 u + q of both rows), all issued before any is used, folded into acc.
template <int AHEAD>
__device__ __forceinline__ void fragment_chunks(const uint4* const (&row)[2], int k, int q, unsigned& acc) {
  uint4 v[AHEAD][4][2];
#pragma unroll
  for (int a = 0; a < AHEAD; ++a)
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
      for (int t = 0; t < 2; ++t) v[a][u][t] = ld_stream(row[t] + k + 16 * a + 4 * u + q);
#pragma unroll
  for (int a = 0; a < AHEAD; ++a)
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
      for (int t = 0; t < 2; ++t) acc ^= fold(v[a][u][t]);
}

template <int AHEAD>
__global__ void __launch_bounds__(256, 2) rows_kernel(const uint4* w, int items, unsigned* sink) {
  const int warp = threadIdx.x >> 5, w4 = warp & 3, kw = warp >> 2, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  unsigned acc = 0;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    const uint4* row[2] = {item_row(w, item, w4 * 8 + g), item_row(w, item, 32 + w4 * 8 + g)};
    const int k0 = kw * (units / 2), k1 = k0 + units / 2;
    for (int k = k0; k < k1; k += 16 * AHEAD) fragment_chunks<AHEAD>(row, k, q, acc);
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

template <int AHEAD>
__global__ void __launch_bounds__(256, 2) strips_kernel(const uint4* w, int items, unsigned* sink) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  unsigned acc = 0;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    for (int r0 = 0; r0 < 32; r0 += 8) {
      const uint4* row[2] = {item_row(w, item, r0 + g), item_row(w, item, 32 + r0 + g)};
      // Warp w: units [w * 32, w * 32 + 32): two chunks of 16.
      const int k0 = warp * (units / 8);
      for (int k = k0; k < k0 + units / 8; k += 16 * AHEAD) fragment_chunks<AHEAD>(row, k, q, acc);
    }
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

// L lanes a row: a warp's load reads 32 / L rows, L x 16 bytes of each (a whole line or more). Warp
// w takes the item's rows 8w .. 8w + 7 in groups of 32 / L, each group over all of K, 8 loads in
// flight a thread.
template <int L>
__global__ void __launch_bounds__(256, 2) wide_kernel(const uint4* w, int items, unsigned* sink) {
  constexpr int per = 32 / L;  // rows a load covers
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  unsigned acc = 0;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    for (int r0 = 0; r0 < 8; r0 += per) {
      const uint4* row = item_row(w, item, warp * 8 + r0 + lane / L);
      for (int k = lane % L; k < units; k += 8 * L) {
        uint4 v[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = ld_stream(row + k + j * L);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc ^= fold(v[j]);
      }
    }
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

__global__ void __launch_bounds__(256, 2) plain_kernel(const uint4* w, int items, unsigned* sink) {
  unsigned acc = 0;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    for (int half = 0; half < 2; ++half) {
      const uint4* run = item_row(w, item, 32 * half);  // 32 rows that lie together
      constexpr int run_units = 32 * units;
      for (int i = threadIdx.x; i < run_units; i += 16 * 256) {
        uint4 v[16];
#pragma unroll
        for (int j = 0; j < 16; ++j) v[j] = ld_stream(run + i + j * 256);
#pragma unroll
        for (int j = 0; j < 16; ++j) acc ^= fold(v[j]);
      }
    }
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

using kernel_t = void (*)(const uint4*, int, unsigned*);

double time_us(kernel_t k, const uint4* a, const uint4* b, int items, unsigned* sink, int runs) {
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), "event");
  check(cudaEventCreate(&e1), "event");
  std::vector<double> t;
  for (int r = 0; r < runs; ++r) {
    for (int i = 0; i < 3; ++i) k<<<264, 256>>>(i % 2 ? b : a, items, sink);
    check(cudaEventRecord(e0), "record");
    for (int i = 0; i < 20; ++i) k<<<264, 256>>>(i % 2 ? b : a, items, sink);
    check(cudaEventRecord(e1), "record");
    check(cudaEventSynchronize(e1), "sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
    t.push_back(1e3 * ms / 20);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 7, experts = 6;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--runs") runs = std::atoi(argv[i + 1]);
    else if (a == "--experts") experts = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: %s [--runs 7] [--experts 6]\n", argv[0]);
      return 2;
    }
  }
  try {
    const size_t bytes = static_cast<size_t>(experts) * rows_per_expert * K * 2;
    uint4 *a = nullptr, *b = nullptr;
    unsigned* sink = nullptr;
    check(cudaMalloc(&a, bytes), "malloc");
    check(cudaMalloc(&b, bytes), "malloc");
    check(cudaMalloc(&sink, sizeof(unsigned)), "malloc");
    check(cudaMemset(a, 0x3c, bytes), "memset");
    check(cudaMemset(b, 0x3d, bytes), "memset");
    const int items = experts * slices;
    const struct {
      const char* name;
      kernel_t k;
    } modes[] = {{"rows, 1 chunk ahead", rows_kernel<1>},     {"rows, 2 chunks ahead", rows_kernel<2>},
                 {"strips, 1 chunk ahead", strips_kernel<1>}, {"strips, 2 chunks ahead", strips_kernel<2>},
                 {"4 lanes a row (rows)", wide_kernel<4>},    {"8 lanes a row", wide_kernel<8>},
                 {"16 lanes a row", wide_kernel<16>},          {"32 lanes a row", wide_kernel<32>},
                 {"plain, 16 loads ahead", plain_kernel}};
    std::printf("%d experts' gate-up rows, %.1f MB a launch, %d items on 264 blocks\n", experts, bytes / 1e6, items);
    for (int round = 0; round < 2; ++round)
      for (const auto& m : modes) {
        const double us = time_us(m.k, a, b, items, sink, runs);
        std::printf("  %-24s %8.2f us  %.2f TB/s\n", m.name, us, bytes / (us * 1e-6) / 1e12);
      }
    cudaFree(a);
    cudaFree(b);
    cudaFree(sink);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
