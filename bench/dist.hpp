// A distribution of token counts for `tollgate bench`: prompt lengths and max_tokens.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>

namespace tollgate::bench {

/// "500" (always 500), "200-1000" (uniform over the integers 200..1000, both included) or
/// "normal:500,100" (mean 500, standard deviation 100, rounded, never below 1).
struct dist {
  enum class kind { fixed, uniform, normal };
  kind type = kind::fixed;
  double a = 0;  ///< the value, the low end, or the mean
  double b = 0;  ///< the high end, or the standard deviation

  /// nullopt when text is none of the forms above or names a count below 1.
  static std::optional<dist> parse(std::string_view text);
  std::int64_t sample(std::mt19937_64& rng) const;
  double mean() const { return type == kind::uniform ? (a + b) / 2 : a; }
  std::string to_string() const;
};

}  // namespace tollgate::bench
