// Test helper: SSE text as a list of (event name, parsed data) pairs.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "protocol/wire.hpp"

namespace tollgate::test {

struct sse_item {
  std::string name;
  nlohmann::json data;  // null for "[DONE]"
  bool done = false;
};

inline std::vector<sse_item> split_sse(const std::string& text) {
  std::vector<sse_item> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const auto end = text.find("\n\n", pos);
    const std::string ev = text.substr(pos, end == std::string::npos ? std::string::npos : end - pos + 2);
    pos = end == std::string::npos ? text.size() : end + 2;
    const auto f = protocol::parse_sse_event(ev);
    if (!f.data) continue;
    sse_item item{f.name, nullptr, *f.data == "[DONE]"};
    if (!item.done) item.data = nlohmann::json::parse(*f.data);
    out.push_back(std::move(item));
  }
  return out;
}

/// An OpenAI chat chunk as one SSE event.
inline std::string chat_chunk(const nlohmann::json& delta, const nlohmann::json& finish = nullptr) {
  nlohmann::json c = {{"id", "c1"}, {"object", "chat.completion.chunk"}, {"created", 1}, {"model", "up"},
                      {"choices", nlohmann::json::array({{{"index", 0}, {"delta", delta}, {"finish_reason", finish}}})}};
  return "data: " + c.dump() + "\n\n";
}

inline std::string usage_chunk(int prompt, int completion, int cached = 0) {
  nlohmann::json c = {{"id", "c1"}, {"object", "chat.completion.chunk"}, {"created", 1}, {"model", "up"},
                      {"choices", nlohmann::json::array()},
                      {"usage", {{"prompt_tokens", prompt}, {"completion_tokens", completion},
                                 {"total_tokens", prompt + completion},
                                 {"prompt_tokens_details", {{"cached_tokens", cached}}}}}};
  return "data: " + c.dump() + "\n\n";
}

}  // namespace tollgate::test
