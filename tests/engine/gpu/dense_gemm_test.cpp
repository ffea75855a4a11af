// The skinny dense product (cuda/dense.cu) against a double-precision product of the same bf16
// values on the host, on fresh random inputs: every row count it takes, shapes that split K and
// shapes that do not, float and bf16 outputs; and a row's bits do not depend on the batch around it.
#include <catch2/catch.hpp>

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

/// Runs the product on the GPU; returns y as floats (converted from bf16 when !y_float).
std::vector<float> run(const problem& p, int rows, bool y_float, const cu::skinny_plan& plan, size_t row0 = 0) {
  device_buffer x(static_cast<size_t>(rows) * p.K * 2), w(p.w.size() * 2);
  device_buffer y(static_cast<size_t>(rows) * p.N * 4);
  cu::skinny_scratch ws(static_cast<size_t>(plan.splits) * cu::skinny_max_rows * p.N);
  REQUIRE(cudaMemcpy(x.p, p.x.data() + row0 * p.K, static_cast<size_t>(rows) * p.K * 2, cudaMemcpyHostToDevice) ==
          cudaSuccess);
  REQUIRE(cudaMemcpy(w.p, p.w.data(), p.w.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  cu::skinny_gemm(x.as<cu::bf16>(), rows, w.as<cu::bf16>(), p.N, p.K, y.p, y_float, plan, ws, nullptr);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  std::vector<float> out(static_cast<size_t>(rows) * p.N);
  if (y_float) {
    REQUIRE(cudaMemcpy(out.data(), y.p, out.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
  } else {
    std::vector<uint16_t> b(out.size());
    REQUIRE(cudaMemcpy(b.data(), y.p, b.size() * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
    for (size_t i = 0; i < b.size(); ++i) out[i] = bf16_value(b[i]);
  }
  return out;
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

TEST_CASE("gpu: a row of a skinny product has the same bits alone and in a batch of 64", "[gpu][dense]") {
  std::mt19937 gen(std::random_device{}());
  const int sms = multiprocessors();
  for (const auto& s : {std::pair{576, 2048}, std::pair{3072, 2048}}) {
    const problem p = make_problem(64, s.first, s.second, gen);
    const auto plan = cu::skinny_split(p.N, p.K, sms, size_t{4} << 20);
    const auto all = run(p, 64, true, plan);
    for (size_t row : {size_t{0}, size_t{17}, size_t{63}}) {
      const auto alone = run(p, 1, true, plan, row);
      INFO("N " << p.N << " row " << row);
      CHECK(std::memcmp(alone.data(), all.data() + row * p.N, alone.size() * 4) == 0);
    }
  }
}
