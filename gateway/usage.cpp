#include "gateway/usage.hpp"

#include <nlohmann/json.hpp>

namespace tollgate::gateway {

namespace {
std::int64_t count(const nlohmann::json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_number_integer()) return 0;
  return std::max<std::int64_t>(0, it->get<std::int64_t>());
}
}  // namespace

std::optional<usage> usage_from_json(std::string_view json_text, bool* no_choices) {
  // Most stream chunks carry no usage: skip them without parsing.
  if (json_text.find("\"usage\"") == std::string_view::npos) return std::nullopt;
  const auto doc = nlohmann::json::parse(json_text, nullptr, false);
  if (!doc.is_object()) return std::nullopt;
  auto it = doc.find("usage");
  if (it == doc.end() || !it->is_object()) return std::nullopt;
  if (no_choices != nullptr) {
    auto choices = doc.find("choices");
    *no_choices = choices != doc.end() && choices->is_array() && choices->empty();
  }
  const auto& u = *it;
  usage out;
  out.prompt = count(u, "prompt_tokens");
  out.completion = count(u, "completion_tokens");
  if (auto d = u.find("prompt_tokens_details"); d != u.end() && d->is_object()) out.cached = count(*d, "cached_tokens");
  if (out.cached == 0) out.cached = count(u, "prompt_cache_hit_tokens");
  if (auto d = u.find("completion_tokens_details"); d != u.end() && d->is_object()) {
    out.reasoning = count(*d, "reasoning_tokens");
  }
  out.cached = std::min(out.cached, out.prompt);
  return out;
}

double cost_of(const usage& u, const config::price_config& price) {
  const double uncached = static_cast<double>(u.prompt - u.cached);
  return (uncached * price.input + static_cast<double>(u.cached) * price.cached_input +
          static_cast<double>(u.completion) * price.output) /
         1e6;
}

}  // namespace tollgate::gateway
