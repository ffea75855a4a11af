// A lone token's expert products (cuda/moe.cu, expert_gate_up_silu and expert_down_with_shared with
// lone_token): read in whole lines (whole_lines: expert_lone_kernel) and in the tensor-core
// fragments of a batch's kernel, on fresh random inputs, each near
// a double product of the same bf16 values, and near each other. Each launch's time is printed for
// both (not asserted).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "local_engine/cuda/moe.cuh"
#include "tests/engine/gpu/gpu_support.hpp"

namespace cu = tollgate::engine::cuda;
using tollgate::engine::test::bf16_bits;
using tollgate::engine::test::bf16_value;
using tollgate::engine::test::device_array;

namespace {

struct lone_shape {
  int hidden, inter, parts, top, experts;
};

struct lone_outputs {
  std::vector<uint16_t> act, shared_act;
  std::vector<float> rows, shared_out;
};

/// The two products of one lone token routed to `ids` (sorted, distinct), with `parts` shared
/// experts inside them, as the decode step launches them.
struct lone_moe {
  lone_shape s;
  std::vector<uint16_t> w_gu, w_down, sh_gu, sh_down, x;
  std::vector<int32_t> ids;
  device_array<uint16_t> d_w_gu, d_w_down, d_sh_gu, d_sh_down, d_x;
  device_array<uint16_t> d_act, d_sact;
  device_array<float> d_rows, d_sout;
  device_array<int32_t> d_x_rows, d_offsets, d_active;

  static std::vector<uint16_t> random_bf16(size_t n, std::mt19937& gen, float scale) {
    std::uniform_real_distribution<float> u(-scale, scale);
    std::vector<uint16_t> v(n);
    for (auto& b : v) b = bf16_bits(u(gen));
    return v;
  }
  static std::vector<int32_t> offsets_of(const lone_shape& s, const std::vector<int32_t>& ids) {
    std::vector<int32_t> off(static_cast<size_t>(s.experts) + 1, 0);
    for (int e = 0; e < s.experts; ++e)
      off[static_cast<size_t>(e) + 1] = off[static_cast<size_t>(e)] + (std::count(ids.begin(), ids.end(), e) ? 1 : 0);
    return off;
  }
  static std::vector<int32_t> active_of(const std::vector<int32_t>& ids) {
    std::vector<int32_t> a{static_cast<int32_t>(ids.size())};
    a.insert(a.end(), ids.begin(), ids.end());
    return a;
  }

  lone_moe(const lone_shape& shape, std::vector<int32_t> chosen, std::mt19937& gen)
      : s(shape),
        w_gu(random_bf16(static_cast<size_t>(s.experts) * 2 * s.inter * s.hidden, gen, 0.05f)),
        w_down(random_bf16(static_cast<size_t>(s.experts) * s.hidden * s.inter, gen, 0.05f)),
        sh_gu(random_bf16(static_cast<size_t>(2) * s.parts * s.inter * s.hidden, gen, 0.05f)),
        sh_down(random_bf16(static_cast<size_t>(s.hidden) * s.parts * s.inter, gen, 0.05f)),
        x(random_bf16(static_cast<size_t>(s.hidden), gen, 1.0f)),
        ids(std::move(chosen)),
        d_w_gu(w_gu), d_w_down(w_down), d_sh_gu(sh_gu), d_sh_down(sh_down), d_x(x),
        d_act(std::vector<uint16_t>(static_cast<size_t>(s.top) * s.inter)),
        d_sact(std::vector<uint16_t>(static_cast<size_t>(s.parts) * s.inter)),
        d_rows(std::vector<float>(static_cast<size_t>(s.top) * s.hidden)),
        d_sout(std::vector<float>(static_cast<size_t>(s.hidden))),
        d_x_rows(std::vector<int32_t>(static_cast<size_t>(s.top), 0)),
        d_offsets(offsets_of(s, ids)),
        d_active(active_of(ids)) {}

  cu::shared_experts shared() const {
    cu::shared_experts sh;
    sh.act = reinterpret_cast<cu::bf16*>(d_sact.p);
    sh.out = d_sout.p;
    sh.w = reinterpret_cast<const cu::bf16*>(d_sh_down.p);
    sh.inter = s.inter, sh.parts = s.parts, sh.hidden = s.hidden, sh.rows = 1;
    sh.gate_up = reinterpret_cast<const cu::bf16*>(d_sh_gu.p);
    return sh;
  }
  /// The two products, with expert weights `gu` and `down` (this one's or another's of the same
  /// shape).
  void launch(const uint16_t* gu, const uint16_t* down, bool lines) const {
    const auto sh = shared();
    cu::expert_gate_up_silu(reinterpret_cast<const cu::bf16*>(gu), reinterpret_cast<const cu::bf16*>(d_x.p),
                            d_x_rows.p, d_offsets.p, d_active.p, s.top, s.inter, s.hidden,
                            reinterpret_cast<cu::bf16*>(d_act.p), nullptr, sh, true, lines);
    cu::expert_down_with_shared(reinterpret_cast<const cu::bf16*>(down), reinterpret_cast<const cu::bf16*>(d_act.p),
                                d_offsets.p, d_active.p, s.top, s.hidden, s.inter, d_rows.p, sh,
                                nullptr, true, lines);
  }
  lone_outputs run(bool lines) {
    // Outputs set to values no product gives, so that one left unwritten shows.
    REQUIRE(cudaMemset(d_act.p, 0xff, d_act.n * sizeof(uint16_t)) == cudaSuccess);
    REQUIRE(cudaMemset(d_sact.p, 0xff, d_sact.n * sizeof(uint16_t)) == cudaSuccess);
    REQUIRE(cudaMemset(d_rows.p, 0xff, d_rows.n * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMemset(d_sout.p, 0xff, d_sout.n * sizeof(float)) == cudaSuccess);
    launch(d_w_gu.p, d_w_down.p, lines);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    return {d_act.get(), d_sact.get(), d_rows.get(), d_sout.get()};
  }
};

double silu(double v) { return v / (1.0 + std::exp(-v)); }

/// Largest |got - want| over the largest |want|.
template <typename G>
double relative_error(const std::vector<G>& got, const std::vector<double>& want, float (*value)(G)) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, std::fabs(static_cast<double>(value(got[i])) - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  return scale > 0 ? worst / scale : worst;
}

float as_float(float v) { return v; }
float as_bf16(uint16_t b) { return bf16_value(b); }

template <typename U>
size_t bits_differ(const std::vector<U>& a, const std::vector<U>& b) {
  size_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += a[i] != b[i];
  return n;
}

/// The outputs' relative errors against a double product of the same bf16 values (the routed and
/// shared activations from x; the routed rows and shared sums from the activations `o` holds).
std::vector<double> errors_against_double(const lone_moe& m, const lone_outputs& o) {
  const int H = m.s.hidden, I = m.s.inter, P = m.s.parts;
  const auto bf = [](uint16_t b) { return static_cast<double>(bf16_value(b)); };
  const auto dot = [&](const uint16_t* w, const uint16_t* v, int n, size_t w_step = 1) {
    double acc = 0;
    for (int k = 0; k < n; ++k) acc += bf(w[static_cast<size_t>(k) * w_step]) * bf(v[k]);
    return acc;
  };
  std::vector<double> act_ref(static_cast<size_t>(m.s.top) * I), sact_ref(static_cast<size_t>(P) * I);
  for (int y = 0; y < m.s.top; ++y)
    for (int c = 0; c < I; ++c) {
      const uint16_t* wg = m.w_gu.data() + (static_cast<size_t>(m.ids[static_cast<size_t>(y)]) * 2 * I + c) * H;
      act_ref[static_cast<size_t>(y) * I + c] =
          silu(dot(wg, m.x.data(), H)) * dot(wg + static_cast<size_t>(I) * H, m.x.data(), H);
    }
  for (int p = 0; p < P; ++p)
    for (int c = 0; c < I; ++c) {
      const uint16_t* wg = m.sh_gu.data() + (static_cast<size_t>(p) * I + c) * H;
      const uint16_t* wu = m.sh_gu.data() + (static_cast<size_t>(P + p) * I + c) * H;
      sact_ref[static_cast<size_t>(p) * I + c] = silu(dot(wg, m.x.data(), H)) * dot(wu, m.x.data(), H);
    }
  std::vector<double> rows_ref(static_cast<size_t>(m.s.top) * H), sout_ref(static_cast<size_t>(H), 0.0);
  for (int y = 0; y < m.s.top; ++y)
    for (int n = 0; n < H; ++n)
      rows_ref[static_cast<size_t>(y) * H + n] =
          dot(m.w_down.data() + (static_cast<size_t>(m.ids[static_cast<size_t>(y)]) * H + n) * I,
              o.act.data() + static_cast<size_t>(y) * I, I);
  for (int n = 0; n < H; ++n)
    for (int p = 0; p < P; ++p)
      sout_ref[static_cast<size_t>(n)] += dot(m.sh_down.data() + static_cast<size_t>(n) * P * I + static_cast<size_t>(p) * I,
                                              o.shared_act.data() + static_cast<size_t>(p) * I, I);
  return {relative_error(o.act, act_ref, as_bf16), relative_error(o.shared_act, sact_ref, as_bf16),
          relative_error(o.rows, rows_ref, as_float), relative_error(o.shared_out, sout_ref, as_float)};
}

}  // namespace

TEST_CASE("gpu: a lone token's expert products read in whole lines follow a double product and the fragments' kernel",
          "[gpu][bf16][experts]") {
  std::mt19937 gen(std::random_device{}());
  // V2-Lite's shapes (K 2,048 and 1,408), and one with ragged windows (K 1,056: 132 units; inter
  // 96: 12 units, less than one window; hidden 1,056: a last down item of 32 rows).
  for (const lone_shape shape : {lone_shape{2048, 1408, 2, 6, 12}, lone_shape{1056, 96, 1, 4, 7}}) {
    std::vector<int32_t> all(static_cast<size_t>(shape.experts));
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), gen);
    std::vector<int32_t> ids(all.begin(), all.begin() + shape.top);
    std::sort(ids.begin(), ids.end());
    lone_moe m(shape, ids, gen);
    const lone_outputs plain = m.run(false), lines = m.run(true), again = m.run(true);
    // The same bits run after run (the sums' order is fixed).
    const size_t total = lines.act.size() + lines.shared_act.size() + lines.rows.size() + lines.shared_out.size();
    const size_t differ = bits_differ(lines.act, again.act) + bits_differ(lines.shared_act, again.shared_act) +
                          bits_differ(lines.rows, again.rows) + bits_differ(lines.shared_out, again.shared_out);
    std::printf("gpu lone experts, hidden %d inter %d: %zu of %zu values differ between two runs in whole lines\n",
                shape.hidden, shape.inter, differ, total);
    CHECK(differ == 0);
    // Other sums than the fragments' (a row's four quarters), so the same values to float rounding,
    // and the same activations but where their bf16 rounding falls the other way.
    for (const auto* o : {&plain, &lines}) {
      const auto err = errors_against_double(m, *o);
      std::printf("gpu lone experts, hidden %d inter %d, %s, against double: act %.2e, shared act %.2e, rows %.2e, "
                  "shared sums %.2e\n",
                  shape.hidden, shape.inter, o == &plain ? "fragments" : "whole lines", err[0], err[1], err[2], err[3]);
      CHECK(err[0] < 1e-2);  // the bf16 rounding of the stored activations
      CHECK(err[1] < 1e-2);
      CHECK(err[2] < 1e-5);
      CHECK(err[3] < 1e-5);
    }
    size_t act_far = 0;
    for (size_t i = 0; i < plain.act.size(); ++i)
      act_far += std::fabs(bf16_value(plain.act[i]) - bf16_value(lines.act[i])) > 1e-2f * std::fabs(bf16_value(plain.act[i])) + 1e-6f;
    std::printf("gpu lone experts, hidden %d inter %d: %zu of %zu activations more than a bf16 step from the "
                "fragments' (%zu differ in their bits)\n",
                shape.hidden, shape.inter, act_far, plain.act.size(), bits_differ(plain.act, lines.act));
    CHECK(act_far == 0);

    if (shape.hidden != 2048) continue;
    // Each launch's time (CUDA events, 20 launches after 3), two copies of the experts taken in
    // turn so that the 50 MB L2 does not hold the last launch's weights.
    lone_moe other(shape, ids, gen);
    const struct {
      bool lines;
      const char* name;
    } kinds[] = {{false, "fragments"}, {true, "whole lines"}};
    for (int round = 0; round < 2; ++round)
      for (const auto& k : kinds) {
        cudaEvent_t a, b;
        cudaEventCreate(&a), cudaEventCreate(&b);
        for (int i = 0; i < 3; ++i) m.launch(i % 2 ? other.d_w_gu.p : m.d_w_gu.p, i % 2 ? other.d_w_down.p : m.d_w_down.p, k.lines);
        cudaEventRecord(a);
        for (int i = 0; i < 20; ++i) m.launch(i % 2 ? other.d_w_gu.p : m.d_w_gu.p, i % 2 ? other.d_w_down.p : m.d_w_down.p, k.lines);
        cudaEventRecord(b);
        REQUIRE(cudaEventSynchronize(b) == cudaSuccess);
        float ms = 0;
        cudaEventElapsedTime(&ms, a, b);
        const double bytes = 2.0 * (3.0 * (shape.top + shape.parts) * shape.inter * shape.hidden);
        std::printf("gpu lone experts, V2-Lite shapes, %s: %.2f us a token's two products (%.1f MB, %.2f TB/s)\n", k.name,
                    1e3 * ms / 20, bytes / 1e6, bytes / (1e-3 * ms / 20) / 1e12);
        cudaEventDestroy(a), cudaEventDestroy(b);
      }
  }
}
