// The request-body scanner: never crashes, agrees with nlohmann on what is JSON, and an edit of a
// body it accepted is still a JSON object. Long strings taken out of any body (string_spans) come
// back byte for byte.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

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
  if (!parsed.fields) return 0;
  if (!nlohmann::json::accept(body)) std::abort();  // the scanner passed what nlohmann refuses
  const std::string edited = tollgate::protocol::edit_body(body, *parsed.fields, std::string_view("\"renamed\""),
                                                          std::string_view("{\"include_usage\":true}"));
  const auto again = tollgate::protocol::parse_request_body(edited);
  if (!again.fields || again.fields->model != "renamed" || !again.fields->include_usage) std::abort();
  return 0;
}
