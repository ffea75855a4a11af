// HTTP/1.1 response heads written as text in one buffer: what the gateway sends on every request
// is a status line and a handful of fields, and building them directly is much cheaper than a
// general message serializer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "gateway/server/client_request.hpp"

namespace tollgate::gateway {

class response_head_text {
 public:
  explicit response_head_text(int status) : response_head_text(status, own_) {}
  /// Written into storage (its bytes replaced): a connection that keeps one string for its
  /// answers' heads allocates none a request. It must outlive the text's write.
  response_head_text(int status, std::string& storage);
  response_head_text(const response_head_text&) = delete;
  response_head_text& operator=(const response_head_text&) = delete;

  /// Adds "name: value". Names and values come from the gateway or from a parsed upstream head,
  /// so they hold no line breaks.
  response_head_text& field(std::string_view name, std::string_view value);

  /// Ends the head: Content-Length when a length is given, else chunked transfer; and
  /// "Connection: close" unless the connection stays open. Returns the finished text.
  const std::string& finish(std::optional<std::size_t> content_length, bool keep_alive);

 private:
  std::string own_;
  std::string& text_;
};

/// The transfer codings of a request, over all its Transfer-Encoding fields. A body may be
/// delimited only when there are none, or exactly one and it is chunked (RFC 9112 6.3: anything
/// else, "xchunked", "chunked, identity", "gzip", is refused, as a request smuggling primitive).
class transfer_codings {
 public:
  /// Adds one Transfer-Encoding field value (a comma-separated list).
  void add(std::string_view field_value);
  /// No field at all, or one coding over all of them and it is chunked. A field that names no
  /// coding (an empty value) is refused too: the body's framing would be a guess.
  bool acceptable() const { return !seen_ || (codings_ == 1 && chunked_); }

 private:
  bool seen_ = false;
  std::size_t codings_ = 0;
  bool chunked_ = false;  // the last coding seen is chunked
};

/// A request head read by read_request_head().
struct fast_request {
  std::size_t head_length = 0;     ///< bytes of head, blank line included
  std::uint64_t content_length = 0;  ///< 0: no body
};

/// Reads the complete head at the start of buffered into req (cleared first) when it has the
/// usual shape (protocol/http1_head.hpp): the same method, target, version, fields (in order) and
/// keep-alive that Beast's parser would give it; req keeps a copy of the head. nullopt leaves it to Beast's parser: no complete head yet, a shape the
/// fast reader does not take (chunked, obs-fold, a Connection list), a malformed head (the parser
/// refuses it), or a Content-Length past body_limit (the parser's 413). req is then unspecified.
std::optional<fast_request> read_request_head(std::string_view buffered, std::uint64_t body_limit, client_request& req);

}  // namespace tollgate::gateway
