// The fused prefill attention (cuda/mla_prefill.cu, flash_prefill) against a double-precision
// causal softmax attention of the same bf16 values on the host, on fresh random inputs: query
// counts that leave a partial block, a chunk after cached positions, strided and interleaved
// operands as the forward passes them, and no write past the last query's row.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "local_engine/cuda/mla_prefill.cuh"
#include "tests/engine/gpu/gpu_support.hpp"

namespace cu = tollgate::engine::cuda;
using tollgate::engine::test::bf16_bits;
using tollgate::engine::test::bf16_value;
using tollgate::engine::test::device_array;

namespace {

constexpr int nope = 128, rope = 64, vd = 128;
constexpr uint16_t sentinel = 0x7fc1;  // a NaN the kernel never writes

struct case_result {
  double rel = 0;
  size_t overwritten = 0;  // sentinel values changed outside the output rows' heads
};

// Layouts as dense_attention passes them: q's nope parts [n][heads][nope] with padded rows, its
// rope parts inside wider rows, keys' nope parts and values interleaved per head ([len][heads]
// [nope + vd]), one rope key a position, the output [n + 1][heads + 1][vd] (one spare head and
// one spare row that must stay untouched).
case_result run_case(int heads, int n, int start, float scale, std::mt19937& gen) {
  const int len = start + n;
  const int qn_ld = heads * nope + 16, qr_ld = heads * 80 + 8, qr_head = 80, kv_ld = heads * (nope + vd), kr_ld = 72;
  const int out_head = vd, out_ld = (heads + 1) * vd;
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  const auto fill = [&](size_t count) {
    std::vector<uint16_t> v(count);
    for (auto& x : v) x = bf16_bits(d(gen));
    return v;
  };
  const auto qn = fill(static_cast<size_t>(n) * qn_ld), qr = fill(static_cast<size_t>(n) * qr_ld);
  const auto kv = fill(static_cast<size_t>(len) * kv_ld), kr = fill(static_cast<size_t>(len) * kr_ld);
  std::vector<uint16_t> out(static_cast<size_t>(n + 1) * out_ld, sentinel);
  device_array<uint16_t> d_qn(qn), d_qr(qr), d_kv(kv), d_kr(kr), d_out(out);
  const auto bf = [](const device_array<uint16_t>& a) { return reinterpret_cast<const cu::bf16*>(a.p); };

  cu::flash_operands a{};
  a.q_nope = bf(d_qn), a.q_nope_ld = qn_ld, a.q_nope_head = nope;
  a.q_rope = bf(d_qr), a.q_rope_ld = qr_ld, a.q_rope_head = qr_head;
  a.k_nope = bf(d_kv), a.k_nope_ld = kv_ld, a.k_nope_head = nope + vd;
  a.k_rope = bf(d_kr), a.k_rope_ld = kr_ld;
  a.v = bf(d_kv) + nope, a.v_ld = kv_ld, a.v_head = nope + vd;
  a.out = reinterpret_cast<cu::bf16*>(d_out.p), a.out_ld = out_ld, a.out_head = out_head;
  a.nope = nope, a.rope = rope, a.v_dim = vd, a.heads = heads, a.n = n, a.start = start, a.scale = scale;
  REQUIRE(cu::flash_prefill_fits(a));
  cu::flash_prefill(a, nullptr);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto got = d_out.get();

  case_result r;
  double num = 0, den = 0;
  std::vector<double> s(len), o(vd);
  const auto val = [](const std::vector<uint16_t>& v, size_t i) { return static_cast<double>(bf16_value(v[i])); };
  for (int i = 0; i < n; ++i)
    for (int h = 0; h < heads; ++h) {
      const int pos = start + i;
      double m = -INFINITY;
      for (int j = 0; j <= pos; ++j) {
        double dot = 0;
        for (int c = 0; c < nope; ++c)
          dot += val(qn, static_cast<size_t>(i) * qn_ld + h * nope + c) *
                 val(kv, static_cast<size_t>(j) * kv_ld + h * (nope + vd) + c);
        for (int c = 0; c < rope; ++c)
          dot += val(qr, static_cast<size_t>(i) * qr_ld + h * qr_head + c) * val(kr, static_cast<size_t>(j) * kr_ld + c);
        s[j] = dot * scale;
        m = std::max(m, s[j]);
      }
      double sum = 0;
      for (int j = 0; j <= pos; ++j) sum += (s[j] = std::exp(s[j] - m));
      std::fill(o.begin(), o.end(), 0.0);
      for (int j = 0; j <= pos; ++j)
        for (int c = 0; c < vd; ++c) o[c] += s[j] / sum * val(kv, static_cast<size_t>(j) * kv_ld + h * (nope + vd) + nope + c);
      for (int c = 0; c < vd; ++c) {
        const double e = bf16_value(got[static_cast<size_t>(i) * out_ld + h * out_head + c]) - o[c];
        num += e * e, den += o[c] * o[c];
      }
    }
  r.rel = std::sqrt(num / den);
  for (int i = 0; i <= n; ++i)
    for (int c = 0; c < out_ld; ++c)
      if ((i == n || c >= heads * out_head) && got[static_cast<size_t>(i) * out_ld + c] != sentinel) ++r.overwritten;
  return r;
}

}  // namespace

TEST_CASE("gpu: fused prefill attention equals a double causal softmax attention of the same bf16 values",
          "[gpu][prefill]") {
  std::mt19937 gen(std::random_device{}());
  // (heads, queries, cached positions before them, scale): a partial last block; a chunk after a
  // cached prefix that is not a multiple of a tile; one block; many tiles; a sharp softmax.
  const struct {
    int heads, n, start;
    float scale;
  } cases[] = {{3, 200, 0, 0.072f}, {2, 150, 100, 0.072f}, {1, 64, 0, 0.2f}, {2, 700, 37, 0.1f}, {1, 300, 0, 0.5f}};
  for (const auto& c : cases) {
    const case_result r = run_case(c.heads, c.n, c.start, c.scale, gen);
    std::printf("gpu flash prefill heads %d queries %-4d after %-3d scale %.3f: relative error %.2e, %zu spare values "
                "written\n",
                c.heads, c.n, c.start, c.scale, r.rel, r.overwritten);
    INFO("heads " << c.heads << " n " << c.n << " start " << c.start);
    CHECK(r.rel < 8e-3);  // probabilities and outputs rounded to bf16
    CHECK(r.overwritten == 0);
  }
  cu::flash_operands odd{};
  odd.nope = 64, odd.rope = 64, odd.v_dim = 128;
  CHECK_FALSE(cu::flash_prefill_fits(odd));
}
