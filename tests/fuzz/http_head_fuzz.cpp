// An HTTP request head as the gateway reads it: Beast's parser with the gateway's limits, then the
// Transfer-Encoding rule. Never crashes; a head it accepts with codings other than one chunked
// is one the gateway refuses.
#include <boost/beast/core/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "gateway/server/http_head.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace http = boost::beast::http;
  http::request_parser<http::string_body> parser;
  parser.header_limit(64 * 1024);
  parser.body_limit(1024 * 1024);
  parser.eager(true);
  boost::beast::error_code ec;
  parser.put(boost::asio::buffer(data, size), ec);
  if (!parser.is_header_done()) return 0;
  tollgate::gateway::transfer_codings codings;
  const auto& h = parser.get();
  const auto [first, last] = h.equal_range(http::field::transfer_encoding);
  for (auto it = first; it != last; ++it) codings.add(it->value());
  // Beast frames a body as chunked only when chunked comes last; the gateway accepts only that alone.
  if (codings.acceptable() && first != last && !parser.chunked()) std::abort();
  return 0;
}
