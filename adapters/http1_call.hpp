// The built-in HTTP/1.1 client for plain-http upstreams (self-hosted vLLM or SGLang, a sidecar):
// pooled keep-alive connections on the worker's loop, one write per request, responses parsed in
// place. Backends on https:// (or with transport: curl) go through libcurl instead.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "adapters/backend.hpp"
#include "config/config.hpp"

namespace tollgate::adapters {

/// The header fields every request to a backend sends, whatever the transport: Content-Type,
/// Accept (text/event-stream for a stream), User-Agent, Authorization from api_key, then the
/// backend's own `headers`, which replace a default of the same name (case-insensitive).
std::vector<std::pair<std::string, std::string>> upstream_headers(const config::backend_config& cfg, bool stream);

/// Where a backend is and what every request to it sends; built once per backend, shared by all
/// threads, read-only.
struct http1_origin {
  std::string host;       ///< a name or an address (IPv6 without brackets)
  std::uint16_t port = 80;
  std::string pool_key;   ///< "host:port": connections are shared by backends with the same one
  std::string base_path;  ///< the base URL's path, e.g. "/v1"; may be empty
  std::string stream_headers;  ///< header lines for a streamed request, each ending in CRLF
  std::string plain_headers;   ///< the same, for a whole answer
  config::timeouts_config timeouts;

  /// Precondition: cfg is of a remote kind, and its base_url starts with http://.
  static http1_origin from(const config::backend_config& cfg);
};

/// A response head read in one pass by read_response_head().
struct fast_response {
  std::size_t head_length = 0;       ///< bytes of head, blank line included
  std::uint64_t content_length = 0;  ///< the body's
  bool keep_alive = false;           ///< the connection stays open after it
  bool chunked = false;              ///< the body is chunked (content_length is then 0)
};

/// Reads the complete head at the start of buffered into out when it has the usual shape
/// (protocol/http1_head.hpp) and a Content-Length or (HTTP/1.1) a chunked body: the status, and
/// the fields in order with their names lower-cased, as the client's Beast parser would give them.
/// nullopt leaves the head to that parser (not complete yet, other codings, both framings, to the
/// connection's end, 1xx, malformed); out is then unspecified.
std::optional<fast_response> read_response_head(std::string_view buffered, response_head& out);

/// Starts the request at once on refs' thread. The origin must outlive the call (it belongs to
/// the backend, which the request's runtime snapshot keeps alive). The call takes the request's
/// body and parts; the rest of it is read here only.
std::unique_ptr<call> start_http1_call(const http1_origin& origin, upstream_request&& request, io_refs refs);

}  // namespace tollgate::adapters
