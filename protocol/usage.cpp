#include "protocol/usage.hpp"

#include <algorithm>
#include <array>
#include <charconv>

#include "protocol/json_body.hpp"

namespace tollgate::protocol {

namespace {

/// A token count: absent or null is 0; otherwise a JSON integer in [0, max_reported_tokens], or
/// nullopt.
std::optional<std::int64_t> count(std::string_view value) {
  if (value.empty() || value == "null") return 0;
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (ec != std::errc() || end != value.data() + value.size() || v < 0 || v > max_reported_tokens) return std::nullopt;
  return v;
}

/// The members `keys` of the object text `object` (empty views when it is not an object).
/// Precondition: object is a value that top_level_values() gave, or one of its values, so that
/// its bytes were checked with the whole text's and are not scanned again.
template <std::size_t N>
std::array<std::string_view, N> members(std::string_view object, const std::array<std::string_view, N>& keys) {
  std::array<std::string_view, N> values{};
  if (!object.empty() && object.front() == '{') checked_object_values(object, keys, values);
  return values;
}

bool empty_array(std::string_view v) {
  if (v.empty() || v.front() != '[') return false;
  const auto next = v.find_first_not_of(" \t\r\n", 1);
  return next != std::string_view::npos && v[next] == ']';
}

}  // namespace

// The text is scanned, never parsed into a tree: a whole answer is read on every request, and
// only a handful of numbers are wanted from it. The whole text is checked once (an answer that is
// not JSON has no usage to trust); the usage object inside it is then only walked.
std::optional<usage> usage_from_json(std::string_view json_text, bool* no_choices, bool* refused, bool look_first) {
  if (refused != nullptr) *refused = false;
  // Most stream chunks carry no usage: skip them without scanning.
  if (look_first && find_quoted(json_text, "\"usage\"") == std::string_view::npos) return std::nullopt;
  static constexpr std::array<std::string_view, 2> top_keys{"usage", "choices"};
  std::array<std::string_view, 2> top{};
  if (!top_level_values(json_text, top_keys, top)) return std::nullopt;
  if (top[0].empty() || top[0].front() != '{') return std::nullopt;
  if (no_choices != nullptr) *no_choices = empty_array(top[1]);

  static constexpr std::array<std::string_view, 11> usage_keys{
      "prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details",
      "prompt_cache_hit_tokens", "cache_creation_input_tokens", "input_tokens", "output_tokens",
      "input_tokens_details", "output_tokens_details", "cache_read_input_tokens"};
  auto u = members(top[0], usage_keys);
  // Anthropic's and the Responses API's names: input_tokens is the prompt less Anthropic's cache
  // reads and writes (a Responses API usage has neither, and counts its cached tokens in it).
  const bool input_named = u[0].empty() && !u[6].empty();
  if (input_named) {
    u[0] = u[6];
    u[1] = u[7];
    u[2] = u[8];
    u[3] = u[9];
  }
  const auto cache_read = count(u[10]);
  const auto prompt = count(u[0]);
  const auto completion = count(u[1]);
  const auto cached = count(members(u[2], std::array<std::string_view, 1>{"cached_tokens"})[0]);
  const auto cache_hit = count(u[4]);
  const auto reasoning = count(members(u[3], std::array<std::string_view, 1>{"reasoning_tokens"})[0]);
  const auto cache_write = count(u[5]);
  if (!prompt || !completion || !cached || !cache_hit || !reasoning || !cache_write || !cache_read) {
    if (refused != nullptr) *refused = true;
    return std::nullopt;
  }
  usage out;
  out.prompt = *prompt + (input_named ? *cache_read + *cache_write : 0);
  out.completion = *completion;
  out.cached = *cached != 0 ? *cached : *cache_hit != 0 ? *cache_hit : *cache_read;
  out.reasoning = std::min(*reasoning, out.completion);
  out.cached = std::min(out.cached, out.prompt);
  out.cache_write = std::min(*cache_write, out.prompt - out.cached);
  return out;
}

void messages_stream_usage::take(std::string_view data) {
  if (find_quoted(data, "\"usage\"") == std::string_view::npos) return;
  static constexpr std::array<std::string_view, 3> top_keys{"type", "message", "usage"};
  std::array<std::string_view, 3> top{};
  if (!top_level_values(data, top_keys, top)) return;
  std::string_view object;
  if (top[0] == "\"message_start\"") object = members(top[1], std::array<std::string_view, 1>{"usage"})[0];
  else if (top[0] == "\"message_delta\"") object = top[2];
  if (object.empty() || object.front() != '{') return;
  static constexpr std::array<std::string_view, 4> keys{"input_tokens", "cache_read_input_tokens",
                                                        "cache_creation_input_tokens", "output_tokens"};
  const auto v = members(object, keys);
  std::int64_t* const fields[4] = {&input_, &cache_read_, &cache_write_, &output_};
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (v[i].empty()) continue;  // not named: the count before stands
    const auto n = count(v[i]);
    if (!n) refused_ = true;
    else *fields[i] = *n;
  }
  seen_ = true;
}

std::optional<usage> messages_stream_usage::get() const {
  if (!seen_ || refused_) return std::nullopt;
  usage out;
  out.prompt = input_ + cache_read_ + cache_write_;
  out.cached = cache_read_;
  out.cache_write = cache_write_;
  out.completion = output_;
  return out;
}

std::optional<usage> responses_event_usage(std::string_view data, bool* refused) {
  if (refused != nullptr) *refused = false;
  if (find_quoted(data, "\"usage\"") == std::string_view::npos) return std::nullopt;
  static constexpr std::array<std::string_view, 2> top_keys{"type", "response"};
  std::array<std::string_view, 2> top{};
  if (!top_level_values(data, top_keys, top)) return std::nullopt;
  if (top[0] != "\"response.completed\"" && top[0] != "\"response.incomplete\"" && top[0] != "\"response.failed\"") {
    return std::nullopt;
  }
  if (top[1].empty() || top[1].front() != '{') return std::nullopt;
  return usage_from_json(top[1], nullptr, refused);
}

double cost_of(const usage& u, const config::price_config& price) {
  const double uncached = static_cast<double>(u.prompt - u.cached - u.cache_write);
  return (uncached * price.input + static_cast<double>(u.cached) * price.cached_input +
          static_cast<double>(u.cache_write) * price.cache_write + static_cast<double>(u.completion) * price.output) /
         1e6;
}

}  // namespace tollgate::protocol
