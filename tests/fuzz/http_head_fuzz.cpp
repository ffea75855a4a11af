// An HTTP request head as the gateway reads it: Beast's parser with the gateway's limits, then the
// Transfer-Encoding rule. Never crashes; a head it accepts with codings other than one chunked
// is one the gateway refuses. The one-pass reader (read_request_head) takes a head only when
// Beast takes it too, and reads it the same way.
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "gateway/server/http_head.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace http = boost::beast::http;
  http::request_parser<http::string_body> parser;
  parser.header_limit(64 * 1024);
  parser.body_limit(1024 * 1024);
  parser.eager(true);
  boost::beast::error_code ec;
  const std::size_t used = parser.put(boost::asio::buffer(data, size), ec);
  tollgate::gateway::client_request fast;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (const auto head = tollgate::gateway::read_request_head(bytes, 1024 * 1024, fast)) {
    // Taken by the fast reader: Beast read the same head (eager, it went on into the body).
    if (!parser.is_header_done() || (ec && ec != http::error::need_more) || used < head->head_length) std::abort();
    const auto& b = parser.get();
    if (fast.method_string() != b.method_string() || fast.target() != b.target() || fast.version() != b.version() ||
        fast.keep_alive() != b.keep_alive() || parser.chunked() ||
        head->content_length != parser.content_length().value_or(0)) {
      std::abort();
    }
    // Beast keeps the fields of one name together (a repeat goes after the last field of its
    // name); the request keeps them in the order they came. Grouped the same way, they match.
    const auto same_name = [](std::string_view x, std::string_view y) {
      return boost::beast::iequals(boost::beast::string_view(x.data(), x.size()), boost::beast::string_view(y.data(), y.size()));
    };
    std::vector<const tollgate::gateway::client_request::field*> grouped;
    for (const auto& f : fast) {
      auto at = grouped.end();
      for (auto it = grouped.begin(); it != grouped.end(); ++it) {
        if (same_name((*it)->name_string(), f.name_string())) at = it + 1;
      }
      grouped.insert(at, &f);
    }
    auto f = grouped.begin();
    for (const auto& field : b) {
      const auto name = field.name_string();
      const auto value = field.value();
      if (f == grouped.end() || (*f)->name() != field.name() ||
          (*f)->name_string() != std::string_view(name.data(), name.size()) ||
          (*f)->value() != std::string_view(value.data(), value.size())) {
        std::abort();
      }
      ++f;
    }
    if (f != grouped.end()) std::abort();
  }
  if (!parser.is_header_done()) return 0;
  tollgate::gateway::transfer_codings codings;
  const auto& h = parser.get();
  const auto [first, last] = h.equal_range(http::field::transfer_encoding);
  for (auto it = first; it != last; ++it) codings.add(it->value());
  // Beast frames a body as chunked only when chunked comes last; the gateway accepts only that alone.
  if (codings.acceptable() && first != last && !parser.chunked()) std::abort();
  return 0;
}
