#include "bench/dist.hpp"

#include <charconv>
#include <cmath>

namespace tollgate::bench {

namespace {

std::optional<double> number(std::string_view s) {
  double v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::string trimmed(double v) {
  std::string s = std::to_string(v);
  while (!s.empty() && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

}  // namespace

std::optional<dist> dist::parse(std::string_view text) {
  dist d;
  if (text.starts_with("normal:")) {
    text.remove_prefix(7);
    const auto comma = text.find(',');
    if (comma == std::string_view::npos) return std::nullopt;
    const auto mean = number(text.substr(0, comma));
    const auto sd = number(text.substr(comma + 1));
    if (!mean || !sd || *mean < 1 || *sd < 0) return std::nullopt;
    d.type = kind::normal;
    d.a = *mean;
    d.b = *sd;
    return d;
  }
  if (const auto dash = text.find('-'); dash != std::string_view::npos && dash > 0) {
    const auto lo = number(text.substr(0, dash));
    const auto hi = number(text.substr(dash + 1));
    if (!lo || !hi || *lo < 1 || *hi < *lo || std::floor(*lo) != *lo || std::floor(*hi) != *hi) return std::nullopt;
    d.type = kind::uniform;
    d.a = *lo;
    d.b = *hi;
    return d;
  }
  const auto v = number(text);
  if (!v || *v < 1 || std::floor(*v) != *v) return std::nullopt;
  d.a = *v;
  return d;
}

std::int64_t dist::sample(std::mt19937_64& rng) const {
  switch (type) {
    case kind::fixed:
      return static_cast<std::int64_t>(a);
    case kind::uniform:
      return std::uniform_int_distribution<std::int64_t>(static_cast<std::int64_t>(a), static_cast<std::int64_t>(b))(rng);
    case kind::normal: {
      const double v = std::normal_distribution<double>(a, b)(rng);
      return std::max<std::int64_t>(1, std::llround(v));
    }
  }
  return 1;
}

std::string dist::to_string() const {
  switch (type) {
    case kind::fixed:
      return trimmed(a);
    case kind::uniform:
      return trimmed(a) + "-" + trimmed(b);
    case kind::normal:
      return "normal:" + trimmed(a) + "," + trimmed(b);
  }
  return "";
}

}  // namespace tollgate::bench
