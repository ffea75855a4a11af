// The HTML report: one self-contained page with inline SVG charts (no script, no network).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <sstream>
#include <string_view>

#include "bench/report.hpp"

namespace tollgate::bench {

namespace {

constexpr const char* palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                   "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f3fbf"};

std::string esc(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string num(double v, int digits = 1) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

/// A short axis label: 1500 -> "1.5k".
std::string tick_text(double v) {
  const double a = std::fabs(v);
  if (a >= 1e6) return num(v / 1e6, a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e4) return num(v / 1e3, 0) + "k";
  if (a >= 1e3) return num(v / 1e3, 1) + "k";
  if (a >= 10 || v == std::round(v)) return num(v, 0);
  if (a >= 1) return num(v, 1);
  return num(v, 2);
}

std::vector<double> nice_ticks(double lo, double hi) {
  if (hi <= lo) hi = lo + 1;
  const double raw = (hi - lo) / 5;
  const double mag = std::pow(10, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * mag;
    if (step >= raw) break;
  }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) t.push_back(v);
  if (t.empty() || t.back() < hi - step * 1e-9) t.push_back((t.empty() ? std::ceil(lo / step) * step : t.back() + step));
  return t;
}

struct series {
  std::string name;
  std::vector<std::pair<double, double>> points;
  bool dashed = false;
  int color = 0;
};

struct chart_spec {
  std::string title, x_label, y_label;
  std::vector<series> lines;
  std::vector<double> x_ticks;  ///< when set: these ticks, on a log scale if they span 8x or more
  bool y_percent = false;       ///< y is 0..100
  bool markers = true;
};

std::string line_chart(const chart_spec& c, int clip_id) {
  constexpr double w = 560, h = 330, left = 64, right = 16, top = 34, bottom = 48;
  constexpr double pw = w - left - right, ph = h - top - bottom;
  double x_lo = INFINITY, x_hi = -INFINITY, y_hi = 0;
  for (const auto& s : c.lines)
    for (const auto& [x, y] : s.points) {
      x_lo = std::min(x_lo, x);
      x_hi = std::max(x_hi, x);
      y_hi = std::max(y_hi, y);
    }
  if (!std::isfinite(x_lo)) x_lo = 0, x_hi = 1;
  const bool log_x = !c.x_ticks.empty() && x_lo > 0 && x_hi / x_lo >= 8;
  if (c.x_ticks.empty()) x_lo = std::min(x_lo, 0.0);
  if (x_hi <= x_lo) {
    x_lo = x_lo > 0 ? x_lo * 0.5 : x_lo - 1;
    x_hi = x_hi * 1.5 + 1e-9;
  }
  if (c.y_percent) y_hi = 100;
  const std::vector<double> y_ticks = nice_ticks(0, c.y_percent ? 100 : y_hi > 0 ? y_hi * 1.05 : 1);
  y_hi = y_ticks.back();
  auto fx = [&](double x) {
    const double f = log_x ? (std::log(x) - std::log(x_lo)) / (std::log(x_hi) - std::log(x_lo)) : (x - x_lo) / (x_hi - x_lo);
    return left + f * pw;
  };
  auto fy = [&](double y) { return top + ph - (y / y_hi) * ph; };
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << w << "\" height=\"" << h << "\" viewBox=\"0 0 " << w << " "
    << h << "\" role=\"img\">";
  o << "<text x=\"" << w / 2 << "\" y=\"20\" text-anchor=\"middle\" class=\"title\">" << esc(c.title) << "</text>";
  o << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"#fff\" stroke=\"#bbb\"/>";
  for (double t : y_ticks) {
    o << "<line x1=\"" << left << "\" x2=\"" << left + pw << "\" y1=\"" << fy(t) << "\" y2=\"" << fy(t)
      << "\" stroke=\"#e6e6e6\"/><text x=\"" << left - 6 << "\" y=\"" << fy(t) + 4 << "\" text-anchor=\"end\">"
      << tick_text(t) << "</text>";
  }
  const std::vector<double> xt = c.x_ticks.empty() ? nice_ticks(x_lo, x_hi) : c.x_ticks;
  for (double t : xt) {
    if (t < x_lo - 1e-9 || t > x_hi + 1e-9) continue;
    o << "<line x1=\"" << fx(t) << "\" x2=\"" << fx(t) << "\" y1=\"" << top << "\" y2=\"" << top + ph
      << "\" stroke=\"#f0f0f0\"/><text x=\"" << fx(t) << "\" y=\"" << top + ph + 16 << "\" text-anchor=\"middle\">"
      << tick_text(t) << "</text>";
  }
  o << "<text x=\"" << left + pw / 2 << "\" y=\"" << h - 8 << "\" text-anchor=\"middle\">" << esc(c.x_label) << "</text>";
  o << "<text transform=\"translate(14 " << top + ph / 2 << ") rotate(-90)\" text-anchor=\"middle\">" << esc(c.y_label)
    << "</text>";
  // The lines, clipped to the plot; then the legend over them, on a white ground.
  o << "<clipPath id=\"plot-" << clip_id << "\"><rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw
    << "\" height=\"" << ph << "\"/></clipPath><g clip-path=\"url(#plot-" << clip_id << ")\">";
  for (const auto& s : c.lines) {
    const char* color = palette[s.color % std::size(palette)];
    o << "<g class=\"series\"><title>" << esc(s.name) << "</title><polyline fill=\"none\" stroke=\"" << color
      << "\" stroke-width=\"2.5\"" << (s.dashed ? " stroke-dasharray=\"6 4\"" : "") << " points=\"";
    for (const auto& [x, y] : s.points) o << num(fx(x), 2) << "," << num(fy(y), 2) << " ";
    o << "\"/>";
    if (c.markers)
      for (const auto& [x, y] : s.points)
        o << "<circle cx=\"" << num(fx(x), 2) << "\" cy=\"" << num(fy(y), 2) << "\" r=\"3.5\" fill=\"" << color
          << "\"><title>" << esc(s.name) << ": " << tick_text(x) << " → " << num(y, 1) << "</title></circle>";
    o << "</g>";
  }
  o << "</g>";
  if (!c.lines.empty()) {
    std::size_t longest = 0;
    for (const auto& s : c.lines) longest = std::max(longest, s.name.size());
    const double lw = 36 + 6.2 * static_cast<double>(longest);
    const double lx = left + pw - lw - 4;
    o << "<g class=\"legend\"><rect x=\"" << lx << "\" y=\"" << top + 4 << "\" width=\"" << lw << "\" height=\""
      << 15 * c.lines.size() + 6 << "\" fill=\"#fff\" fill-opacity=\"0.9\" stroke=\"#ddd\"/>";
    double ly = top + 17;
    for (const auto& s : c.lines) {
      const char* color = palette[s.color % std::size(palette)];
      o << "<line x1=\"" << lx + 6 << "\" x2=\"" << lx + 26 << "\" y1=\"" << ly - 4 << "\" y2=\"" << ly - 4 << "\" stroke=\""
        << color << "\" stroke-width=\"2.5\"" << (s.dashed ? " stroke-dasharray=\"6 4\"" : "") << "/><text x=\"" << lx + 31
        << "\" y=\"" << ly << "\">" << esc(s.name) << "</text>";
      ly += 15;
    }
    o << "</g>";
  }
  o << "</svg>";
  return o.str();
}

/// Up to 200 points of the distribution's CDF: (value in ms, percent of requests at or below).
std::vector<std::pair<double, double>> cdf(std::vector<double> v) {
  std::vector<std::pair<double, double>> out;
  if (v.empty()) return out;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  const std::size_t points = std::min<std::size_t>(n, 200);
  for (std::size_t k = 0; k < points; ++k) {
    const std::size_t i = points == 1 ? 0 : k * (n - 1) / (points - 1);
    out.emplace_back(v[i], 100.0 * static_cast<double>(i + 1) / static_cast<double>(n));
  }
  return out;
}

}  // namespace

void write_html(std::ostream& out, const bench_options& o, const std::vector<summary>& rows,
                const std::vector<run_result>& runs) {
  const bool open = !o.rates.empty();
  const std::string level_name = open ? "arrival rate (requests/s)" : "concurrency";
  std::vector<std::string> models;
  for (const auto& s : rows)
    if (std::find(models.begin(), models.end(), s.model) == models.end()) models.push_back(s.model);
  std::vector<double> levels;
  for (const auto& s : rows)
    if (std::find(levels.begin(), levels.end(), s.level) == levels.end()) levels.push_back(s.level);
  std::sort(levels.begin(), levels.end());

  auto per_model = [&](auto value, bool dashed, const std::string& suffix, int color_offset) {
    std::vector<series> out;
    for (std::size_t m = 0; m < models.size(); ++m) {
      series s{models[m] + suffix, {}, dashed, static_cast<int>(m) + color_offset};
      for (const auto& r : rows)
        if (r.model == models[m]) {
          const auto y = value(r);
          if (y) s.points.emplace_back(r.level, *y);
        }
      if (!s.points.empty()) out.push_back(std::move(s));
    }
    return out;
  };
  auto with = [](std::vector<series> a, std::vector<series> b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  using opt = std::optional<double>;
  std::vector<chart_spec> charts;
  charts.push_back({"Output tokens/s against " + level_name, level_name, "output tokens/s",
                    per_model([](const summary& s) -> opt { return s.output_tokens_per_s; }, false, "", 0), levels});
  charts.push_back({"Requests/s against " + level_name, level_name, "successful requests/s",
                    per_model([](const summary& s) -> opt { return s.requests_per_s; }, false, "", 0), levels});
  if (o.stream)
    charts.push_back(
        {"TTFT against " + level_name, level_name, "ms",
         with(per_model([](const summary& s) -> opt { return s.ttft.count ? opt(s.ttft.p50) : std::nullopt; }, false, " p50", 0),
              per_model([](const summary& s) -> opt { return s.ttft.count ? opt(s.ttft.p99) : std::nullopt; }, true, " p99", 0)),
         levels});
  charts.push_back(
      {"End-to-end latency against " + level_name, level_name, "ms",
       with(per_model([](const summary& s) -> opt { return s.e2e.count ? opt(s.e2e.p50) : std::nullopt; }, false, " p50", 0),
            per_model([](const summary& s) -> opt { return s.e2e.count ? opt(s.e2e.p99) : std::nullopt; }, true, " p99", 0)),
       levels});
  for (const auto& m : models) {
    for (int which = o.stream ? 0 : 1; which < 2; ++which) {
      chart_spec c{(which == 0 ? "TTFT distribution, " : "End-to-end latency distribution, ") + m, "ms",
                   "% of requests at or below", {}, {}, true, false};
      int color = 0;
      for (const auto& r : runs) {
        if (r.model != m) continue;
        std::vector<double> v;
        for (const auto& s : r.samples)
          if (s.ok && (which == 1 || s.ttft >= 0)) v.push_back((which == 0 ? s.ttft : s.e2e) * 1000);
        series s{(open ? "rate " + num(r.level, 1) : "concurrency " + num(r.level, 0)), cdf(std::move(v)), false, color++};
        if (!s.points.empty()) c.lines.push_back(std::move(s));
      }
      charts.push_back(std::move(c));
    }
  }

  out << "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>tollgate bench report</title>\n"
         "<style>body{font-family:system-ui,sans-serif;margin:20px;color:#222;background:#fafafa}"
         "table{border-collapse:collapse;margin:12px 0;background:#fff}th,td{border:1px solid #ccc;padding:4px 8px;"
         "text-align:right;font-size:13px}th{background:#eee}td.l{text-align:left}"
         ".charts{display:flex;flex-wrap:wrap;gap:12px}figure.chart{margin:0;background:#fff;border:1px solid #ddd}"
         "svg text{font-size:11px;fill:#333}svg text.title{font-size:13px;font-weight:600}"
         "dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:13px}dt{color:#666}dd{margin:0}"
         "</style></head><body>\n<h1>tollgate bench</h1>\n<dl>";
  auto item = [&](const std::string& k, const std::string& v) { out << "<dt>" << esc(k) << "</dt><dd>" << esc(v) << "</dd>"; };
  item("endpoint", o.base_url + (o.api == api_kind::anthropic ? " (Anthropic Messages)" : " (OpenAI chat completions)"));
  std::string ms;
  for (const auto& m : models) ms += (ms.empty() ? "" : ", ") + m;
  item("models", ms);
  std::string lv;
  for (double l : levels) lv += (lv.empty() ? "" : ", ") + (open ? num(l, 2) + "/s" : num(l, 0));
  item(open ? "arrival rates (Poisson)" : "concurrency (closed loop)", lv);
  item("per run", o.requests ? std::to_string(*o.requests) + " requests" : num(*o.duration_s, 1) + " s");
  item("prompts", o.dataset.empty() ? "synthetic, " + o.prompt_tokens.to_string() + " tokens" : o.dataset);
  item("max_tokens", o.max_tokens ? o.max_tokens->to_string() : (o.dataset.empty() ? "128" : "the dataset's answer lengths"));
  item("stream", o.stream ? "yes" : "no");
  out << "</dl>\n<table><tr><th>model</th><th>" << (open ? "rate/s" : "concurrency")
      << "</th><th>ok</th><th>errors</th><th>req/s</th><th>out tok/s</th>";
  if (o.stream) out << "<th>TTFT p50</th><th>TTFT p90</th><th>TTFT p99</th><th>TPOT p50</th><th>TPOT p99</th>";
  out << "<th>E2E p50</th><th>E2E p90</th><th>E2E p99</th><th>cost</th></tr>\n";
  auto cell = [&](const spread& s, double v) { out << "<td>" << (s.count ? num(v, 1) : "-") << "</td>"; };
  for (const auto& s : rows) {
    std::string errors;
    for (const auto& [k, n] : s.errors) errors += (errors.empty() ? "" : ", ") + k + " ×" + std::to_string(n);
    out << "<tr><td class=\"l\">" << esc(s.model) << "</td><td>" << num(s.level, open ? 2 : 0) << "</td><td>" << s.succeeded
        << "/" << s.requests << " (" << num(100 * s.success_rate(), 1) << "%)</td><td class=\"l\">"
        << esc(errors.empty() ? "-" : errors) << "</td><td>" << num(s.requests_per_s, 1) << "</td><td>"
        << num(s.output_tokens_per_s, 1) << "</td>";
    if (o.stream) {
      cell(s.ttft, s.ttft.p50);
      cell(s.ttft, s.ttft.p90);
      cell(s.ttft, s.ttft.p99);
      cell(s.tpot, s.tpot.p50);
      cell(s.tpot, s.tpot.p99);
    }
    cell(s.e2e, s.e2e.p50);
    cell(s.e2e, s.e2e.p90);
    cell(s.e2e, s.e2e.p99);
    out << "<td>" << (s.unit_price ? esc(num(s.cost, 4) + " " + s.unit_price->currency) : "-") << "</td></tr>\n";
  }
  out << "</table>\n<p style=\"font-size:12px;color:#666\">Latencies in ms. TTFT: until the first output token; TPOT: "
         "time per output token after the first; E2E: the whole request. Rates count successful requests over the run's "
         "wall time.</p>\n<div class=\"charts\">\n";
  int id = 0;
  for (const auto& c : charts) {
    out << "<figure class=\"chart\" id=\"chart-" << id << "\">" << line_chart(c, id) << "</figure>\n";
    ++id;
  }
  out << "</div>\n</body></html>\n";
}

}  // namespace tollgate::bench
