#include "gateway/accounting/money.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace tollgate::gateway {

namespace {

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

/// Drops trailing zeros after the point, keeping at least `keep` decimals.
std::string trim_zeros(std::string s, std::size_t keep) {
  const auto dot = s.find('.');
  if (dot == std::string::npos) return s;
  while (s.size() > dot + 1 + keep && s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s;
}

}  // namespace

std::string format_money(double amount) {
  if (!std::isfinite(amount)) return fixed(amount, 2);
  const double magnitude = std::fabs(amount);
  if (magnitude >= 0.995 || magnitude < 5e-11) {  // rounds to at least 1.00, or to nothing
    std::string s = fixed(amount, 2);
    return s == "-0.00" ? "0.00" : s;
  }
  // Two significant digits: the first one sits at decimal place -floor(log10(magnitude)).
  const int first = -static_cast<int>(std::floor(std::log10(magnitude)));
  const int decimals = std::clamp(first + 1, 2, 10);
  return trim_zeros(fixed(amount, decimals), 2);
}

std::string format_amount(double amount) {
  if (!std::isfinite(amount)) return fixed(amount, 2);
  std::string s = trim_zeros(fixed(amount, 10), 0);
  return s == "-0" ? "0" : s;
}

}  // namespace tollgate::gateway
