// The request-body scanner: never crashes, agrees with nlohmann on what is JSON, and an edit of a
// body it accepted is still a JSON object. Long strings taken out of any body (string_spans) come
// back byte for byte. A chat stream chunk read as text without a tree (read_chat_text_delta)
// holds the strings nlohmann reads there, and their literals write as nlohmann writes them.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>

#include "protocol/json_body.hpp"
#include "protocol/string_spans.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const auto parsed = tollgate::protocol::parse_request_body(body);
  tollgate::protocol::json_depth_within(body, tollgate::protocol::max_json_depth);
  tollgate::protocol::string_spans spans;
  if (spans.take_out(body, [](std::span<const tollgate::protocol::path_step>) { return true; })) {
    if (spans.put_back(spans.small()) != body) std::abort();  // the markers stand for exactly their literals
    if (!nlohmann::json::accept(body) && nlohmann::json::accept(spans.small())) std::abort();  // a refusal stays one
  }
  if (const auto d = tollgate::protocol::read_chat_text_delta(body)) {
    const auto tree = nlohmann::json::parse(body, nullptr, false);
    if (tree.is_discarded()) std::abort();
    const auto& delta = tree.at("choices").at(0).at("delta");
    for (const auto& [literal, key] : {std::pair{d->content, "content"}, std::pair{d->reasoning, "reasoning_content"}}) {
      if (literal.empty()) continue;
      const std::string text = tollgate::protocol::json_string_text(literal);
      if (delta.at(key).get<std::string>() != text) std::abort();
      std::string written;
      tollgate::protocol::append_literal_as_quoted(written, literal);
      if (written != nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)) std::abort();
    }
  }
  if (!parsed.fields) return 0;
  if (!nlohmann::json::accept(body)) std::abort();  // the scanner passed what nlohmann refuses
  const std::string edited = tollgate::protocol::edit_body(body, *parsed.fields, std::string_view("\"renamed\""),
                                                          std::string_view("{\"include_usage\":true}"));
  const auto again = tollgate::protocol::parse_request_body(edited);
  if (!again.fields || again.fields->model != "renamed" || !again.fields->include_usage) std::abort();
  return 0;
}
