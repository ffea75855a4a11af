// The FP8 expert product (cuda/moe.cu) on fresh random inputs: activations quantised per block of
// 128 (checked against their bf16 values), then the e4m3 tensor-core product of three experts with
// 1, 7 and 20 rows against a double product of the same dequantised values.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "local_engine/cuda/moe.cuh"
#include "local_engine/safetensors.hpp"
#include "tests/engine/gpu/gpu_support.hpp"

namespace cu = tollgate::engine::cuda;
namespace eng = tollgate::engine;
using tollgate::engine::test::bf16_bits;
using tollgate::engine::test::bf16_value;
using tollgate::engine::test::device_array;

TEST_CASE("gpu: the FP8 expert product equals a double product of its quantised inputs", "[gpu][fp8]") {
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  if (major * 10 + minor < 89) {
    std::printf("gpu fp8 product: compute capability %d.%d has no FP8 tensor cores; not run\n", major, minor);
    return;
  }
  const int E = 4, N = 136, K = 384, tokens = 12;  // N: 64-column slices with a ragged last one
  const std::vector<int> rows_of = {1, 0, 7, 20};   // expert 1 has none
  std::mt19937 gen(std::random_device{}());
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  // Weights: e4m3 bytes and a scale per row per 128 columns.
  std::vector<uint8_t> w(static_cast<size_t>(E) * N * K);
  std::vector<float> ws(static_cast<size_t>(E) * N * (K / 128));
  for (auto& b : w) b = eng::f32_to_e4m3(u(gen) * 300.0f);
  for (auto& s : ws) s = 1e-3f * (0.5f + std::fabs(u(gen)));
  // Activations: bf16 rows of tokens, some large, some tiny, and a block of zeros.
  std::vector<uint16_t> x(static_cast<size_t>(tokens) * K);
  for (size_t i = 0; i < x.size(); ++i) x[i] = bf16_bits(u(gen) * (i % 7 == 0 ? 50.0f : 0.5f));
  for (int k = 128; k < 256; ++k) x[static_cast<size_t>(3) * K + k] = 0;
  // Grouped rows: each expert's rows take tokens in turn.
  std::vector<int32_t> offsets(E + 1, 0), active(E + 1, 0), row_token;
  for (int e = 0; e < E; ++e) {
    offsets[e + 1] = offsets[e] + rows_of[e];
    if (rows_of[e] > 0) active[1 + active[0]++] = e;
    for (int r = 0; r < rows_of[e]; ++r) row_token.push_back((e * 5 + r) % tokens);
  }
  const int R = offsets[E];
  device_array<uint8_t> d_w(w), d_xq(std::vector<uint8_t>(x.size()));
  device_array<float> d_ws(ws), d_xs(std::vector<float>(static_cast<size_t>(tokens) * (K / 128)));
  device_array<float> d_out(std::vector<float>(static_cast<size_t>(R) * N, -1.0f));
  device_array<uint16_t> d_x(x);
  device_array<int32_t> d_off(offsets), d_act(active), d_rows(row_token);
  cu::quantise_rows_fp8(reinterpret_cast<const cu::bf16*>(d_x.p), tokens, K, d_xq.p, d_xs.p, nullptr);
  const cu::fp8_experts W{d_w.p, d_ws.p, 7};
  cu::expert_fp8_mma(W, d_xq.p, d_xs.p, d_rows.p, d_off.p, d_act.p, E, N, K, d_out.p, nullptr);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto xq = d_xq.get();
  const auto xs = d_xs.get();
  const auto out = d_out.get();

  // The quantised activations keep the bf16 values within e4m3's rounding (3 mantissa bits).
  double qn = 0, qd = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double back = static_cast<double>(eng::e4m3_to_f32(xq[i])) * xs[(i / K) * (K / 128) + (i % K) / 128];
    qn += (back - bf16_value(x[i])) * (back - bf16_value(x[i]));
    qd += static_cast<double>(bf16_value(x[i])) * bf16_value(x[i]);
  }
  const double q_rel = std::sqrt(qn / qd);
  CHECK(q_rel < 0.05);
  CHECK(xs[static_cast<size_t>(3) * (K / 128) + 1] == 1.0f);  // an all-zero block: scale 1, values 0

  double num = 0, den = 0;
  for (int e = 0; e < E; ++e)
    for (int r = offsets[e]; r < offsets[e + 1]; ++r) {
      const int t = row_token[static_cast<size_t>(r)];
      for (int n = 0; n < N; ++n) {
        double ref = 0;
        for (int k = 0; k < K; ++k) {
          const size_t xi = static_cast<size_t>(t) * K + k, wi = (static_cast<size_t>(e) * N + n) * K + k;
          const double xv = static_cast<double>(eng::e4m3_to_f32(xq[xi])) * xs[static_cast<size_t>(t) * (K / 128) + k / 128];
          const double wv = static_cast<double>(eng::e4m3_to_f32(w[wi])) * ws[(static_cast<size_t>(e) * N + n) * (K / 128) + k / 128];
          ref += xv * wv;
        }
        const double got = out[static_cast<size_t>(r) * N + n];
        num += (got - ref) * (got - ref);
        den += ref * ref;
      }
    }
  const double rel = std::sqrt(num / den);
  std::printf("gpu fp8 product: %d rows of %d experts, N %d, K %d: activations quantised within %.3f, product within %.2e of double\n",
              R, E, N, K, q_rel, rel);
  // Hopper's FP8 tensor cores keep fewer bits than float in their sums (DeepSeek-V3's report:
  // about 14); a wrong fragment order or scale gives errors near 1.
  CHECK(rel < 1e-3);
}
