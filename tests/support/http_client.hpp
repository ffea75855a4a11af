// A small blocking HTTP client for tests (libcurl easy): real sockets, one call per request.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace tollgate::test {

struct http_result {
  long status = 0;           ///< 0 when no response arrived
  std::string error;         ///< curl's message when the transfer failed
  std::map<std::string, std::string> headers;  ///< lower-cased names, last value wins
  std::string body;
  long new_connections = 0;  ///< connections opened for this call (0: one was reused)
};

struct http_options {
  std::vector<std::string> headers;  ///< "Name: value"
  long timeout_ms = 10000;
  std::string method;  ///< e.g. "OPTIONS"; empty: GET, or POST with a body
  /// Called with each piece of the body as it arrives; return false to abort the transfer.
  std::function<bool(const std::string&)> on_data;
};

/// One client with its own connection cache (keep-alive across calls). Not thread-safe.
class http_client {
 public:
  http_client();
  ~http_client();
  http_client(const http_client&) = delete;
  http_client& operator=(const http_client&) = delete;

  http_result get(const std::string& url, const http_options& options = {});
  http_result post(const std::string& url, const std::string& body, const http_options& options = {});

 private:
  http_result perform(const std::string& url, const std::string* body, const http_options& options);
  void* easy_;
};

}  // namespace tollgate::test
