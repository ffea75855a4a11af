// The skinny dense product (cuda/dense.cu) against a double-precision product of the same bf16
// values on the host, on fresh random inputs: every row count it takes, shapes that split K and
// shapes that do not, float and bf16 outputs; and a row's bits do not depend on the batch around it.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "local_engine/cuda/dense.cuh"
#include "tests/engine/gpu/gpu_support.hpp"

namespace cu = tollgate::engine::cuda;
using tollgate::engine::test::bf16_bits;
using tollgate::engine::test::bf16_value;

namespace {

struct device_buffer {
  void* p = nullptr;
  explicit device_buffer(size_t bytes) { REQUIRE(cudaMalloc(&p, bytes) == cudaSuccess); }
  ~device_buffer() { cudaFree(p); }
  template <typename U>
  U* as() const {
    return static_cast<U*>(p);
  }
};

struct problem {
  int M, N, K;
  std::vector<uint16_t> x, w;  // bf16 bits
  std::vector<double> ref;     // [M, N]
};

problem make_problem(int M, int N, int K, std::mt19937& gen) {
  problem p{M, N, K, {}, {}, {}};
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  p.x.resize(static_cast<size_t>(M) * K);
  p.w.resize(static_cast<size_t>(N) * K);
  for (auto& v : p.x) v = bf16_bits(d(gen));
  for (auto& v : p.w) v = bf16_bits(d(gen) * 0.05f);
  p.ref.assign(static_cast<size_t>(M) * N, 0.0);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double s = 0;
      for (int k = 0; k < K; ++k)
        s += static_cast<double>(bf16_value(p.x[static_cast<size_t>(m) * K + k])) *
             bf16_value(p.w[static_cast<size_t>(n) * K + k]);
      p.ref[static_cast<size_t>(m) * N + n] = s;
    }
  return p;
}

int multiprocessors() {
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  return sms;
}

/// The first `count` values of y as floats (converted from bf16 when !y_float).
std::vector<float> output(const device_buffer& y, size_t count, bool y_float) {
  std::vector<float> out(count);
  if (y_float) {
    REQUIRE(cudaMemcpy(out.data(), y.p, out.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
  } else {
    std::vector<uint16_t> b(out.size());
    REQUIRE(cudaMemcpy(b.data(), y.p, b.size() * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
    for (size_t i = 0; i < b.size(); ++i) out[i] = bf16_value(b[i]);
  }
  return out;
}

/// Runs the product on the GPU; returns y as floats (converted from bf16 when !y_float).
std::vector<float> run(const problem& p, int rows, bool y_float, const cu::skinny_plan& plan, size_t row0 = 0) {
  device_buffer x(static_cast<size_t>(rows) * p.K * 2), w(p.w.size() * 2);
  device_buffer y(static_cast<size_t>(rows) * p.N * 4);
  cu::skinny_scratch ws(cu::skinny_partial_floats(plan, cu::skinny_max_rows, p.N));
  REQUIRE(cudaMemcpy(x.p, p.x.data() + row0 * p.K, static_cast<size_t>(rows) * p.K * 2, cudaMemcpyHostToDevice) ==
          cudaSuccess);
  REQUIRE(cudaMemcpy(w.p, p.w.data(), p.w.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  cu::skinny_gemm(x.as<cu::bf16>(), rows, w.as<cu::bf16>(), p.N, p.K, y.p, y_float, plan, ws, nullptr);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  return output(y, static_cast<size_t>(rows) * p.N, y_float);
}

double relative_error(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST_CASE("gpu: skinny dense products equal a double product of the same bf16 values", "[gpu][dense]") {
  std::mt19937 gen(std::random_device{}());
  const int sms = multiprocessors();
  // (N, K): one column block split 16 ways; K not a multiple of the 128-value chunk; a wide
  // weight that is not split; DeepSeek-V2-Lite's kv_a shape.
  const int shapes[][2] = {{64, 4096}, {200, 416}, {8192, 256}, {576, 2048}};
  for (const auto& s : shapes) {
    const int N = s[0], K = s[1];
    const auto plan = cu::skinny_split(N, K, sms, size_t{4} << 20);
    for (int M : {1, 7, 16, 33, 64}) {
      const problem p = make_problem(M, N, K, gen);
      const double ef = relative_error(run(p, M, true, plan), p.ref);
      const double eb = relative_error(run(p, M, false, plan), p.ref);
      std::printf("gpu skinny M=%-2d N=%-5d K=%-5d splits %-2d float max rel err %.2e, bf16 %.2e\n", M, N, K,
                  plan.splits, ef, eb);
      INFO("M " << M << " N " << N << " K " << K << " splits " << plan.splits);
      CHECK(ef < 1e-5);  // fp32 accumulation of exact bf16 products
      CHECK(eb < 8e-3);  // one bf16 rounding of each output
    }
  }
  // Lead column blocks cut finer (a router's columns before the shared experts'): V2-Lite's
  // router-and-shared shape, 128 leading columns (two lead blocks), and a small K.
  const int lead_shapes[][3] = {{64 + 2 * 2816, 2048, 64}, {128 + 2 * 2816, 2048, 128}, {200, 416, 64}};
  for (const auto& s : lead_shapes) {
    const int N = s[0], K = s[1];
    for (int chunks : {1, 3}) {
      const auto plan = cu::skinny_split(N, K, sms, size_t{4} << 20, s[2], chunks);
      REQUIRE(plan.lead_blocks == (s[2] + 63) / 64);
      REQUIRE(plan.lead_splits > plan.splits / 2);
      for (int M : {1, 16, 64}) {
        const problem p = make_problem(M, N, K, gen);
        const double ef = relative_error(run(p, M, true, plan), p.ref);
        std::printf("gpu skinny M=%-2d N=%-5d K=%-5d splits %-2d, %d lead blocks of %d slices: float max rel err %.2e\n",
                    M, N, K, plan.splits, plan.lead_blocks, plan.lead_splits, ef);
        INFO("M " << M << " N " << N << " K " << K << " lead chunks " << chunks);
        CHECK(ef < 1e-5);
      }
    }
  }
  CHECK(cu::skinny_split(64 + 2 * 2816, 2048, sms, size_t{4} << 20, 64, 0).lead_blocks == 0);
  CHECK(cu::skinny_split(8192, 256, sms, size_t{4} << 20, 64, 1).lead_blocks == 0);  // K is not split
  CHECK(cu::skinny_split(64, 4096, sms, size_t{4} << 20).splits == 16);
  CHECK(cu::skinny_split(8192, 256, sms, size_t{4} << 20).splits == 1);
  CHECK(cu::skinny_split(102400, 2048, sms, size_t{4} << 20).splits == 1);
  // The workspace bounds the split: 64 rows x 2,048 columns x 2 slices fit 262,144 floats.
  CHECK(cu::skinny_split(2048, 4096, sms, 262144).splits == 2);
  CHECK_FALSE(cu::skinny_fits(100, 64));
  CHECK_FALSE(cu::skinny_fits(64, 48));
  const cu::skinny_scratch none(0);
  CHECK_THROWS(cu::skinny_gemm(nullptr, 65, nullptr, 64, 64, nullptr, true, {}, none, nullptr));
}

TEST_CASE("gpu: a row's product with its weights staged in shared memory equals a double product", "[gpu][dense]") {
  std::mt19937 gen(std::random_device{}());
  const int sms = multiprocessors();
  // (N, K): V2-Lite's o_proj, q/latent and shared experts' down shapes; columns that do not
  // divide by the multiprocessors and a K whose units do not divide by 32; a weight smaller than
  // one column a block.
  const int shapes[][2] = {{2048, 2048}, {3648, 2048}, {2048, 2816}, {1000, 520}, {7, 64}};
  for (const auto& s : shapes) {
    const int N = s[0], K = s[1];
    REQUIRE(cu::staged_row_fits(N, K, sms));
    const problem p = make_problem(1, N, K, gen);
    device_buffer x(static_cast<size_t>(K) * 2), w(p.w.size() * 2), y(static_cast<size_t>(N) * 4);
    REQUIRE(cudaMemcpy(x.p, p.x.data(), static_cast<size_t>(K) * 2, cudaMemcpyHostToDevice) == cudaSuccess);
    REQUIRE(cudaMemcpy(w.p, p.w.data(), p.w.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
    for (const bool y_float : {true, false}) {
      REQUIRE(cudaMemset(y.p, 0xff, static_cast<size_t>(N) * 4) == cudaSuccess);  // NaN wherever nothing is written
      cu::staged_row_gemm(x.as<cu::bf16>(), w.as<cu::bf16>(), N, K, y.p, y_float, sms, nullptr);
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      const double e = relative_error(output(y, static_cast<size_t>(N), y_float), p.ref);
      std::printf("gpu staged row N=%-5d K=%-5d %s rel err %.2e\n", N, K, y_float ? "float" : "bf16 ", e);
      INFO("N " << N << " K " << K << (y_float ? " float" : " bf16"));
      CHECK(e < (y_float ? 1e-5 : 8e-3));
    }
  }
  // A block's share of the rows must fit its shared memory, and x's units a warp's registers.
  CHECK_FALSE(cu::staged_row_fits(102400, 2048, sms));  // the LM head
  CHECK_FALSE(cu::staged_row_fits(2048, 10944, sms));   // a dense MLP's down product
  CHECK_FALSE(cu::staged_row_fits(2048, 2044, sms));    // K % 8 != 0
  CHECK_THROWS(cu::staged_row_gemm(nullptr, nullptr, 102400, 2048, nullptr, true, sms, nullptr));
}

TEST_CASE("gpu: K slices added in one block give the bits of slices added through the scratch", "[gpu][dense]") {
  // Up to 16 rows of a product cut in 2 to 8 slices take skinny_slices_kernel (the slices are a
  // block's warp groups, added in shared memory) unless the plan says otherwise: the same bits as
  // the partial sums through the scratch, float and bf16 out. DeepSeek-V2-Lite's kv_a, q/latent and
  // o_proj shapes (8 slices, one column warp a block), its first layer's gate-up (2 slices, four
  // column warps), a small K with a ragged last column warp.
  std::mt19937 gen(std::random_device{}());
  const int sms = multiprocessors();
  const int shapes[][2] = {{576, 2048}, {3648, 2048}, {2048, 2048}, {2 * 10944, 2048}, {200, 416}, {136, 1024}};
  for (const auto& sh : shapes) {
    const int N = sh[0], K = sh[1];
    auto in_block = cu::skinny_split(N, K, sms, size_t{4} << 20);
    REQUIRE(in_block.splits >= 2);
    REQUIRE(in_block.splits <= cu::skinny_block_slices);
    in_block.slices_in_block = true;
    auto through_scratch = in_block;
    through_scratch.slices_in_block = false;
    for (int M : {1, 5, 16}) {
      const problem p = make_problem(M, N, K, gen);
      INFO("M " << M << " N " << N << " K " << K << " splits " << in_block.splits);
      for (bool y_float : {true, false}) {
        const auto a = run(p, M, y_float, in_block), b = run(p, M, y_float, through_scratch);
        CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
        if (y_float) CHECK(relative_error(a, p.ref) < 1e-5);
      }
    }
    std::printf("gpu skinny N=%-5d K=%-5d splits %d: slices in one block, the scratch's bits\n", N, K, in_block.splits);
  }
}

TEST_CASE("gpu: a row of a skinny product has the same bits alone and in a batch of 64", "[gpu][dense]") {
  // With the tensor-core fragments for a lone row too (a lone row is read in whole lines by
  // default: the next case).
  std::mt19937 gen(std::random_device{}());
  const int sms = multiprocessors();
  for (const auto& s : {std::pair{576, 2048}, std::pair{3072, 2048}, std::pair{64 + 2 * 2816, 2048}}) {
    const problem p = make_problem(64, s.first, s.second, gen);
    auto plan = cu::skinny_split(p.N, p.K, sms, size_t{4} << 20, s.first == 576 ? 0 : 64, 1);
    plan.whole_lines = false;
    const auto all = run(p, 64, true, plan);
    for (size_t row : {size_t{0}, size_t{17}, size_t{63}}) {
      const auto alone = run(p, 1, true, plan, row);
      INFO("N " << p.N << " row " << row);
      CHECK(std::memcmp(alone.data(), all.data() + row * p.N, alone.size() * 4) == 0);
    }
  }
}

TEST_CASE("gpu: a lone row of a skinny product read in whole lines follows the fragments' sums", "[gpu][dense]") {
  // One row reads each weight row 256 bytes a load (skinny_plan::whole_lines, the default) and sums
  // each row in four quarters: near a double product, and near the fragments' sums. DeepSeek-V2-
  // Lite's LM head (one slice), its first layer's gate-up (two slices in one block) and down (K
  // 10,944 in slices through the scratch), the router's product with lead blocks, and a small K
  // with a ragged window (416: 52 units) and a ragged last column warp (N 200).
  std::mt19937 gen(std::random_device{}());
  const int sms = multiprocessors();
  struct shape {
    int N, K, lead;
  };
  for (const shape sh : {shape{102400, 2048, 0}, shape{2 * 10944, 2048, 0}, shape{2048, 10944, 0}, shape{64, 2048, 64},
                         shape{200, 416, 0}}) {
    const problem p = make_problem(1, sh.N, sh.K, gen);
    auto lines = cu::skinny_split(sh.N, sh.K, sms, size_t{8} << 20, sh.lead, sh.lead ? 1 : 0);
    REQUIRE(lines.whole_lines);
    auto frags = lines;
    frags.whole_lines = false;
    for (bool y_float : {true, false}) {
      const auto a = run(p, 1, y_float, lines), b = run(p, 1, y_float, frags), again = run(p, 1, y_float, lines);
      const double ea = relative_error(a, p.ref), eb = relative_error(b, p.ref);
      // The largest difference from the fragments' sums over the largest value.
      double worst = 0, scale = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
      }
      worst /= scale;
      std::printf("gpu skinny lone row N=%-6d K=%-5d splits %-2d %s: whole lines rel err %.2e, fragments %.2e, "
                  "apart %.2e\n",
                  sh.N, sh.K, lines.splits, y_float ? "float" : "bf16 ", ea, eb, worst);
      INFO("N " << sh.N << " K " << sh.K << (y_float ? " float" : " bf16"));
      CHECK(std::memcmp(a.data(), again.data(), a.size() * sizeof(float)) == 0);  // the same bits run after run
      CHECK(ea < (y_float ? 1e-5 : 8e-3));
      CHECK(eb < (y_float ? 1e-5 : 8e-3));
      CHECK(worst < (y_float ? 1e-5 : 1e-2));
    }
  }
}

namespace {

/// A device copy of n values of U.
template <typename U>
std::vector<U> to_host(const void* p, size_t n) {
  std::vector<U> out(n);
  REQUIRE(cudaMemcpy(out.data(), p, n * sizeof(U), cudaMemcpyDeviceToHost) == cudaSuccess);
  return out;
}

template <typename U>
bool same_bits(const std::vector<U>& a, const std::vector<U>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(U)) == 0;
}

}  // namespace

TEST_CASE("gpu: the router's product routes a lone token with the router kernel's bits", "[gpu][dense]") {
  // The router-and-shared product of one token (router logits, then shared gate and up columns),
  // once routing in its last block (skinny_route) and once plain, followed by the router's own
  // kernel: the same logits, ids, weights and grouping, bit for bit. DeepSeek-V2-Lite's router
  // (64 experts, top 6, softmax) and V3-style ones (sigmoid with a correction bias, group-limited,
  // normalised and scaled): 16 experts, and 128 (two column blocks of logits, so the last of two
  // blocks routes). Twice each in the same scratch (its counters are left at 0).
  std::mt19937 gen(std::random_device{}());
  const int sms = multiprocessors();
  struct router_case {
    const char* name;
    cu::router_config c;
  };
  std::vector<router_case> cases;
  {
    cu::router_config c;
    c.experts = 64, c.top_k = 6, c.scaling = 1.0f;
    cases.push_back({"V2-Lite", c});
    c.experts = 16, c.top_k = 4, c.groups = 4, c.top_groups = 2, c.sigmoid = c.grouped = c.group_by_top2 = true;
    c.normalise = true, c.scaling = 2.5f;
    cases.push_back({"V3-style 16", c});
    c.experts = 128, c.top_k = 8, c.groups = 8, c.top_groups = 4;
    cases.push_back({"V3-style 128", c});
  }
  // Each with the router's columns cut as the rest, and cut finer (lead blocks of 1 and 2 chunks).
  for (int lead_chunks : {0, 1, 2})
  for (auto [name, c] : cases) {
    const int K = 2048, N = c.experts + 2 * 2816, E = c.experts, R = c.top_k;
    std::vector<uint16_t> x(K), w(static_cast<size_t>(N) * K);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    for (auto& v : x) v = bf16_bits(d(gen));
    for (auto& v : w) v = bf16_bits(d(gen) * 0.05f);
    std::vector<float> bias(static_cast<size_t>(E));
    for (auto& v : bias) v = d(gen) * 0.1f;
    const auto plan = cu::skinny_split(N, K, sms, size_t{4} << 20, lead_chunks > 0 ? E : 0, lead_chunks);
    REQUIRE(plan.lead_blocks == (lead_chunks > 0 ? (E + 63) / 64 : 0));
    c.stride = N;
    INFO(name << " splits " << plan.splits << " lead splits " << plan.lead_splits);
    REQUIRE(cu::skinny_route_fits(plan, 1, N, c));
    CHECK_FALSE(cu::skinny_route_fits(plan, 2, N, c));
    device_buffer dx(x.size() * 2), dw(w.size() * 2), db(bias.size() * 4), y(static_cast<size_t>(N) * 4);
    REQUIRE(cudaMemcpy(dx.p, x.data(), x.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
    REQUIRE(cudaMemcpy(dw.p, w.data(), w.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
    REQUIRE(cudaMemcpy(db.p, bias.data(), bias.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess);
    const float* b = c.sigmoid ? db.as<float>() : nullptr;
    cu::skinny_scratch ws(size_t{4} << 20);
    device_buffer arrivals(4);
    REQUIRE(cudaMemset(arrivals.p, 0, 4) == cudaSuccess);
    // ids, weights, then offsets [E + 1], active [E + 1], row_token [R], slot_row [R].
    struct outputs {
      std::vector<float> y, wts;
      std::vector<int32_t> ids, groups;
    };
    const auto once = [&](bool in_product) {
      device_buffer ids(static_cast<size_t>(R) * 4), wts(static_cast<size_t>(R) * 4);
      device_buffer grouping((2 * static_cast<size_t>(E) + 2 + 2 * static_cast<size_t>(R)) * 4);
      REQUIRE(cudaMemset(grouping.p, 0xff, (2 * static_cast<size_t>(E) + 2 + 2 * static_cast<size_t>(R)) * 4) ==
              cudaSuccess);
      auto* g = grouping.as<int32_t>();
      const cu::expert_groups groups{g, g + E + 1, g + 2 * E + 2, g + 2 * E + 2 + R};
      const cu::skinny_route route{c, b, ids.as<int32_t>(), wts.as<float>(), groups};
      cu::skinny_gemm(dx.as<cu::bf16>(), 1, dw.as<cu::bf16>(), N, K, y.p, true, plan, ws, nullptr,
                      in_product ? &route : nullptr);
      if (!in_product)
        cu::route_and_group(y.as<float>(), b, c, 1, ids.as<int32_t>(), wts.as<float>(), groups,
                            arrivals.as<unsigned>(), nullptr);
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      return outputs{to_host<float>(y.p, static_cast<size_t>(N)), to_host<float>(wts.p, static_cast<size_t>(R)),
                     to_host<int32_t>(ids.p, static_cast<size_t>(R)),
                     to_host<int32_t>(grouping.p, 2 * static_cast<size_t>(E) + 2 + 2 * static_cast<size_t>(R))};
    };
    const outputs kernel = once(false);
    for (int round = 0; round < 2; ++round) {
      const outputs product = once(true);
      CHECK(same_bits(product.y, kernel.y));
      CHECK(same_bits(product.ids, kernel.ids));
      CHECK(same_bits(product.wts, kernel.wts));
      CHECK(same_bits(product.groups, kernel.groups));
    }
    // The routing is a real one: distinct experts in range, each grouped at its rank.
    std::vector<int32_t> sorted = kernel.ids;
    std::sort(sorted.begin(), sorted.end());
    CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
    CHECK(sorted.front() >= 0);
    CHECK(sorted.back() < E);
    CHECK(kernel.groups[static_cast<size_t>(E) + 1] == R);  // active[0]
    std::printf("gpu router in its product, %s (splits %d, the router's %d): ids %d %d .. weights %.4f %.4f ..: the "
                "router kernel's bits\n",
                name, plan.splits, plan.lead_blocks ? plan.lead_splits : plan.splits, kernel.ids[0], kernel.ids[1],
                kernel.wts[0], kernel.wts[1]);
  }
}
