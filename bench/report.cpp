#include "bench/report.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <sstream>

namespace tollgate::bench {

double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.size() == 1) return sorted[0];
  const double rank = q * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(rank));
  const auto hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - static_cast<double>(lo));
}

spread spread_of(std::vector<double> v) {
  spread s;
  s.count = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / static_cast<double>(v.size());
  s.p50 = percentile(v, 0.50);
  s.p90 = percentile(v, 0.90);
  s.p99 = percentile(v, 0.99);
  s.max = v.back();
  return s;
}

summary summarize(const run_result& r, const std::optional<price>& p) {
  summary s;
  s.model = r.model;
  s.open_loop = r.open_loop;
  s.level = r.level;
  s.requests = r.samples.size();
  s.duration_s = r.wall_s;
  s.client_cpu_s = r.cpu_s;
  std::vector<double> ttft, tpot, e2e;
  for (const auto& x : r.samples) {
    if (!x.ok) {
      ++s.errors[x.error];
      continue;
    }
    ++s.succeeded;
    s.prompt_tokens += x.prompt_tokens;
    s.output_tokens += x.output_tokens;
    e2e.push_back(x.e2e * 1000);
    if (x.ttft >= 0) ttft.push_back(x.ttft * 1000);
    const std::int64_t n = x.output_tokens > 1 ? x.output_tokens : x.token_events;
    if (x.ttft >= 0 && n > 1 && x.token_events > 1) tpot.push_back((x.last_token - x.ttft) * 1000 / static_cast<double>(n - 1));
  }
  if (s.duration_s > 0) {
    s.requests_per_s = static_cast<double>(s.succeeded) / s.duration_s;
    s.output_tokens_per_s = static_cast<double>(s.output_tokens) / s.duration_s;
  }
  s.ttft = spread_of(std::move(ttft));
  s.tpot = spread_of(std::move(tpot));
  s.e2e = spread_of(std::move(e2e));
  s.unit_price = p;
  if (p) s.cost = (static_cast<double>(s.prompt_tokens) * p->input + static_cast<double>(s.output_tokens) * p->output) / 1e6;
  return s;
}

namespace {

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string level_text(const summary& s) { return s.open_loop ? fixed(s.level, s.level < 10 ? 2 : 1) + "/s" : fixed(s.level, 0); }

std::string errors_text(const summary& s) {
  std::string out;
  for (const auto& [kind, n] : s.errors) out += (out.empty() ? "" : ", ") + kind + " x" + std::to_string(n);
  return out.empty() ? "-" : out;
}

std::string ms3(const spread& sp) {
  if (sp.count == 0) return "-";
  return fixed(sp.p50, 0) + "/" + fixed(sp.p90, 0) + "/" + fixed(sp.p99, 0);
}

nlohmann::json spread_json(const spread& sp, bool p90) {
  if (sp.count == 0) return nullptr;
  nlohmann::json j = {{"count", sp.count}, {"mean", sp.mean}, {"p50", sp.p50}, {"p99", sp.p99}, {"max", sp.max}};
  if (p90) j["p90"] = sp.p90;
  return j;
}

}  // namespace

void write_table(std::ostream& out, const std::vector<summary>& rows, bool stream) {
  std::vector<std::vector<std::string>> t;
  const bool any_open = std::any_of(rows.begin(), rows.end(), [](const summary& s) { return s.open_loop; });
  const bool any_cost = std::any_of(rows.begin(), rows.end(), [](const summary& s) { return s.unit_price.has_value(); });
  std::vector<std::string> head = {"model", any_open ? "rate" : "conc", "ok", "errors", "req/s", "out tok/s"};
  if (stream) {
    head.push_back("TTFT ms p50/p90/p99");
    head.push_back("TPOT ms p50/p99");
  }
  head.push_back("E2E ms p50/p90/p99");
  if (any_cost) head.push_back("cost");
  t.push_back(head);
  for (const auto& s : rows) {
    std::vector<std::string> r = {s.model, level_text(s),
                                  std::to_string(s.succeeded) + "/" + std::to_string(s.requests) + " (" +
                                      fixed(100 * s.success_rate(), 1) + "%)",
                                  errors_text(s), fixed(s.requests_per_s, 1), fixed(s.output_tokens_per_s, 1)};
    if (stream) {
      r.push_back(ms3(s.ttft));
      r.push_back(s.tpot.count == 0 ? "-" : fixed(s.tpot.p50, 1) + "/" + fixed(s.tpot.p99, 1));
    }
    r.push_back(ms3(s.e2e));
    if (any_cost) r.push_back(s.unit_price ? fixed(s.cost, 4) + " " + s.unit_price->currency : "-");
    t.push_back(r);
  }
  std::vector<std::size_t> width(head.size(), 0);
  for (const auto& r : t)
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  for (const auto& r : t) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      // Text columns to the left, figures to the right.
      const bool left = i == 0 || i == 3;
      const std::string pad(width[i] - r[i].size(), ' ');
      line += left ? r[i] + pad : pad + r[i];
      if (i + 1 < r.size()) line += "  ";
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << "\n";
  }
}

void write_json(std::ostream& out, const bench_options& o, const std::vector<summary>& rows) {
  nlohmann::json opts = {
      {"base_url", o.base_url},
      {"api", o.api == api_kind::anthropic ? "anthropic" : "openai"},
      {"models", o.models},
      {"stream", o.stream},
      {"prompt_tokens", o.dataset.empty() ? nlohmann::json(o.prompt_tokens.to_string()) : nlohmann::json(nullptr)},
      {"max_tokens", o.max_tokens ? nlohmann::json(o.max_tokens->to_string()) : nlohmann::json(nullptr)},
      {"dataset", o.dataset.empty() ? nlohmann::json(nullptr) : nlohmann::json(o.dataset)},
      {"seed", o.seed},
  };
  if (o.rates.empty()) opts["concurrency"] = o.concurrency;
  else opts["rates"] = o.rates;
  if (o.requests) opts["requests"] = *o.requests;
  if (o.duration_s) opts["duration_s"] = *o.duration_s;
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& s : rows) {
    nlohmann::json j = {
        {"model", s.model},
        {"requests", s.requests},
        {"succeeded", s.succeeded},
        {"success_rate", s.success_rate()},
        {"errors", s.errors},
        {"duration_s", s.duration_s},
        {"client_cpu_s", s.client_cpu_s},
        {"requests_per_s", s.requests_per_s},
        {"output_tokens_per_s", s.output_tokens_per_s},
        {"prompt_tokens", s.prompt_tokens},
        {"output_tokens", s.output_tokens},
        {"ttft_ms", spread_json(s.ttft, true)},
        {"tpot_ms", spread_json(s.tpot, false)},
        {"e2e_ms", spread_json(s.e2e, true)},
    };
    if (s.open_loop) j["rate"] = s.level;
    else j["concurrency"] = static_cast<unsigned>(s.level);
    if (s.unit_price) {
      j["cost"] = {{"total", s.cost},
                   {"per_request", s.succeeded ? s.cost / static_cast<double>(s.succeeded) : 0},
                   {"currency", s.unit_price->currency},
                   {"price_in", s.unit_price->input},
                   {"price_out", s.unit_price->output},
                   {"price_source", s.unit_price->source}};
    } else {
      j["cost"] = nullptr;
    }
    runs.push_back(std::move(j));
  }
  out << nlohmann::json{{"options", opts}, {"runs", runs}}.dump(2) << "\n";
}

void write_csv(std::ostream& out, const std::vector<summary>& rows) {
  out << "model,mode,level,requests,succeeded,success_rate,errors,duration_s,requests_per_s,output_tokens_per_s,"
         "prompt_tokens,output_tokens,ttft_p50_ms,ttft_p90_ms,ttft_p99_ms,tpot_p50_ms,tpot_p99_ms,e2e_p50_ms,"
         "e2e_p90_ms,e2e_p99_ms,e2e_mean_ms,cost,currency\n";
  auto quote = [](const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  };
  auto num = [](double v, bool present) { return present ? fixed(v, 3) : std::string(); };
  for (const auto& s : rows) {
    std::string errors;
    for (const auto& [kind, n] : s.errors) errors += (errors.empty() ? "" : ";") + kind + "=" + std::to_string(n);
    out << quote(s.model) << "," << (s.open_loop ? "rate" : "concurrency") << "," << fixed(s.level, s.open_loop ? 3 : 0)
        << "," << s.requests << "," << s.succeeded << "," << fixed(s.success_rate(), 4) << "," << quote(errors) << ","
        << fixed(s.duration_s, 3) << "," << fixed(s.requests_per_s, 3) << "," << fixed(s.output_tokens_per_s, 3) << ","
        << s.prompt_tokens << "," << s.output_tokens << "," << num(s.ttft.p50, s.ttft.count) << ","
        << num(s.ttft.p90, s.ttft.count) << "," << num(s.ttft.p99, s.ttft.count) << "," << num(s.tpot.p50, s.tpot.count)
        << "," << num(s.tpot.p99, s.tpot.count) << "," << num(s.e2e.p50, s.e2e.count) << ","
        << num(s.e2e.p90, s.e2e.count) << "," << num(s.e2e.p99, s.e2e.count) << "," << num(s.e2e.mean, s.e2e.count)
        << "," << (s.unit_price ? fixed(s.cost, 6) : "") << "," << (s.unit_price ? quote(s.unit_price->currency) : "")
        << "\n";
  }
}

}  // namespace tollgate::bench
