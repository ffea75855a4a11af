// HTTP/1.1 response heads written as text in one buffer: what the gateway sends on every request
// is a status line and a handful of fields, and building them directly is much cheaper than a
// general message serializer.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace tollgate::gateway {

class response_head_text {
 public:
  explicit response_head_text(int status);

  /// Adds "name: value". Names and values come from the gateway or from a parsed upstream head,
  /// so they hold no line breaks.
  response_head_text& field(std::string_view name, std::string_view value);

  /// Ends the head: Content-Length when a length is given, else chunked transfer; and
  /// "Connection: close" unless the connection stays open. Returns the finished text.
  const std::string& finish(std::optional<std::size_t> content_length, bool keep_alive);

 private:
  std::string text_;
};

}  // namespace tollgate::gateway
