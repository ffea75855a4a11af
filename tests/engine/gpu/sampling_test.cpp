// The GPU sampler (cuda/sampling.cu) on fresh random logits: a greedy row's token is the first
// largest logit; a drawn token is one the cut-offs keep (fewer than top_k larger, less than top_p
// of the kept mass strictly above it, by a double reference) and sits where the draw falls on the
// kept tokens' distribution in id order; the same (seed, draw) gives the same token. Rows of
// DeepSeek's vocabulary (102,400: half of it cached in shared memory, the rest read 16 bytes at a
// time) and of small and odd widths; each setting timed with CUDA events. With a split scratch, a
// greedy row of a small batch is taken by several blocks and must give the same token.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "local_engine/cuda/sampling.cuh"
#include "tests/engine/gpu/gpu_support.hpp"

namespace cu = tollgate::engine::cuda;
using tollgate::engine::test::device_array;

namespace {

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Where a drawn token stands against the rules, in doubles.
struct judged {
  bool kept;          // within the top_k and top_p cut-offs (with a relative slack of 1e-4 on top_p)
  double cdf_before;  // the kept mass below the token in id order, over the kept mass
  double cdf_after;   // the same, with the token
};

judged judge(const std::vector<float>& row, const cu::sample_params& p, int token) {
  const double mx = *std::max_element(row.begin(), row.end());
  const int V = static_cast<int>(row.size());
  const float v = row[static_cast<size_t>(token)];
  // top_k: fewer than k values strictly larger (ties with the k-th largest are kept).
  std::vector<float> sorted(row);
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  const float kth = p.top_k > 0 && p.top_k < V ? sorted[static_cast<size_t>(p.top_k - 1)] : sorted.back();
  const auto in_k = [&](float x) { return x >= kth; };
  const auto w = [&](float x) { return std::exp((static_cast<double>(x) - mx) / p.temperature); };
  double mass = 0, above = 0;
  for (float x : row)
    if (in_k(x)) {
      mass += w(x);
      if (x > v) above += w(x);
    }
  bool kept = in_k(v);
  if (p.top_p < 1) kept = kept && above < p.top_p * mass * (1 + 1e-4);
  // The kept set as the kernel's cut leaves it: the values at or above the smallest kept value
  // whose mass strictly above stays under the need (the double cut).
  double need = p.top_p * mass, nucleus_mass = 0, acc = 0;
  float cut = kth;
  if (p.top_p < 1) {
    double run = 0;
    for (float x : sorted) {
      if (!in_k(x)) break;
      if (run >= need) break;
      run += w(x);
      cut = x;
    }
  }
  for (float x : row)
    if (x >= cut) nucleus_mass += w(x);
  double before = 0;
  for (int i = 0; i < token; ++i)
    if (row[static_cast<size_t>(i)] >= cut) before += w(row[static_cast<size_t>(i)]);
  acc = before + (v >= cut ? w(v) : 0);
  return {kept, before / nucleus_mass, acc / nucleus_mass};
}

}  // namespace

TEST_CASE("gpu: the sampler keeps to greedy, top_k and top_p, and draws where the CDF says", "[gpu][sampling]") {
  std::mt19937 gen(std::random_device{}());
  struct setting {
    float temperature, top_p;
    int top_k;
  };
  const setting settings[] = {{0, 1, 0},      {1, 1, 0},      {0.7f, 0.9f, 0}, {0.6f, 0.95f, 0},
                              {1, 1, 50},     {0.8f, 0.5f, 20}, {1.3f, 0.3f, 0}, {1, 1, 1}};
  const cu::sample_scratch split;
  int sms = 0;
  REQUIRE(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) == cudaSuccess);
  CHECK(cu::sample_parts(1, 102400, sms) == std::min(32, sms));
  CHECK(cu::sample_parts(cu::sample_scratch::rows + 1, 102400, sms) == 1);
  for (const int V : {102400, 50001, 1000, 257}) {
    for (const float spread : {1.0f, 8.0f}) {  // flat rows, and peaked ones
      const int rows = 16;
      std::normal_distribution<float> nd(0.0f, spread);
      std::vector<float> logits(static_cast<size_t>(rows) * V);
      for (auto& x : logits) x = nd(gen);
      logits[static_cast<size_t>(V) + 3] = logits[static_cast<size_t>(V) + 7] = 100.0f;  // a tie for the largest
      device_array<float> dl(logits);
      for (const auto& st : settings)
      for (const bool mixed : {false, true}) {
        if (mixed && (st.temperature <= 0 || st.top_k == 1)) continue;
        std::vector<cu::sample_params> params(static_cast<size_t>(rows));
        for (int r = 0; r < rows; ++r) {
          auto& p = params[static_cast<size_t>(r)];
          p.temperature = st.temperature, p.top_p = st.top_p, p.top_k = st.top_k;
          if (mixed && r % 2 == 1) p.temperature = 0;  // greedy rows beside drawn ones in one launch
          p.seed = 1234 + static_cast<uint64_t>(r), p.draw = static_cast<uint64_t>(r) * 7;
        }
        device_array<cu::sample_params> dp(params);
        device_array<int32_t> out(std::vector<int32_t>(static_cast<size_t>(rows), -1));
        cu::sample_rows(dl.p, V, dp.p, rows, out.p, nullptr);
        REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
        const auto tokens = out.get();
        cu::sample_rows(dl.p, V, dp.p, rows, out.p, nullptr);
        REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
        CHECK(out.get() == tokens);  // the same (seed, draw), the same token
        // Greedy rows split over several blocks (twice: the arrival counts are left at 0), and a
        // lone row split over the most blocks: the same tokens.
        for (int again = 0; again < 2; ++again) {
          device_array<int32_t> split_out(std::vector<int32_t>(static_cast<size_t>(rows), -1));
          cu::sample_rows(dl.p, V, dp.p, rows, split_out.p, nullptr, &split);
          REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
          CHECK(split_out.get() == tokens);
        }
        for (const int r : {0, 1}) {
          device_array<int32_t> one(std::vector<int32_t>(1, -1));
          cu::sample_rows(dl.p + static_cast<size_t>(r) * V, V, dp.p + r, 1, one.p, nullptr, &split);
          REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
          CHECK(one.get()[0] == tokens[static_cast<size_t>(r)]);
        }
        int far = 0;
        for (int r = 0; r < rows; ++r) {
          const int t = tokens[static_cast<size_t>(r)];
          INFO("V " << V << " spread " << spread << " T " << st.temperature << " top_p " << st.top_p << " top_k "
                    << st.top_k << " row " << r << " token " << t);
          REQUIRE(t >= 0);
          REQUIRE(t < V);
          const std::vector<float> row(logits.begin() + static_cast<ptrdiff_t>(r) * V,
                                       logits.begin() + static_cast<ptrdiff_t>(r + 1) * V);
          if (params[static_cast<size_t>(r)].temperature <= 0 || st.top_k == 1) {
            const auto first_max = std::max_element(row.begin(), row.end()) - row.begin();
            CHECK(t == first_max);
            continue;
          }
          const judged j = judge(row, params[static_cast<size_t>(r)], t);
          CHECK(j.kept);
          // The draw, as the kernel makes it, against the double CDF of the kept tokens.
          const uint64_t z = mix64(params[static_cast<size_t>(r)].seed ^ mix64(params[static_cast<size_t>(r)].draw +
                                                                             0x9e3779b97f4a7c15ull));
          const double u = static_cast<double>(z >> 11) * 0x1.0p-53;
          far += u < j.cdf_before - 1e-4 || u > j.cdf_after + 1e-4;
        }
        CHECK(far == 0);
        // Timed: 20 launches of a lone row after 3, one block a row and split.
        const auto time_us = [&](const cu::sample_scratch* sc) {
          cudaEvent_t a, b;
          REQUIRE(cudaEventCreate(&a) == cudaSuccess);
          REQUIRE(cudaEventCreate(&b) == cudaSuccess);
          for (int i = 0; i < 3; ++i) cu::sample_rows(dl.p, V, dp.p, 1, out.p, nullptr, sc);
          REQUIRE(cudaEventRecord(a) == cudaSuccess);
          for (int i = 0; i < 20; ++i) cu::sample_rows(dl.p, V, dp.p, 1, out.p, nullptr, sc);
          REQUIRE(cudaEventRecord(b) == cudaSuccess);
          REQUIRE(cudaEventSynchronize(b) == cudaSuccess);
          float ms = 0;
          REQUIRE(cudaEventElapsedTime(&ms, a, b) == cudaSuccess);
          cudaEventDestroy(a);
          cudaEventDestroy(b);
          return ms * 1000.0 / 20;
        };
        if (V == 102400 && !mixed) {
          const double one = time_us(nullptr), parts = time_us(&split);
          std::printf("gpu sampler, vocab %d, spread %.0f, T %.1f top_p %.2f top_k %d: %.1f us a row (%.1f split)\n", V,
                      spread, st.temperature, st.top_p, st.top_k, one, parts);
        }
      }
    }
  }
}
