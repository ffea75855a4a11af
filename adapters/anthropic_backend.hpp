// Upstreams that speak Anthropic's Messages API (kind anthropic: Anthropic itself, and the
// Anthropic-style endpoints of providers such as Qiniu and HolySheep). The chat completions call
// a backend takes is translated to POST {base_url}/messages with x-api-key and
// anthropic-version, and the answer, stream or whole, errors included, back to chat completions,
// so routing, retries, metering and every client dialect work unchanged. A Messages request
// (path /messages) is sent as it is, and its answer relayed untouched.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "adapters/backend.hpp"
#include "config/config.hpp"

namespace tollgate::adapters {

class openai_backend;

/// The Anthropic API version sent when neither the client nor the backend's headers name one.
inline constexpr const char* anthropic_version = "2023-06-01";

/// What an Anthropic upstream is sent as anthropic-version and anthropic-beta for one request:
/// the client's anthropic-version when it sent one, else the backend's (its `headers`), else
/// anthropic_version; anthropic-beta as the backend's names, then the client's not among them
/// (comma-separated, empty ones left out), absent when both are empty.
std::vector<std::pair<std::string, std::string>> anthropic_request_headers(std::string_view backend_version,
                                                                           std::string_view backend_beta,
                                                                           std::string_view client_version,
                                                                           std::string_view client_beta);

class anthropic_backend final : public backend {
 public:
  /// Precondition: cfg is of a remote kind (cfg.remote() is set).
  explicit anthropic_backend(config::backend_config cfg);
  ~anthropic_backend() override;
  anthropic_backend(const anthropic_backend&) = delete;
  anthropic_backend& operator=(const anthropic_backend&) = delete;
  const std::string& name() const override { return cfg_.name; }
  /// Serves request.path "/chat/completions", translated, and "/messages" (a Messages request
  /// relayed as it is), whose answer is the upstream's own; other paths, and chat fields Messages
  /// cannot express, are answered 400 at once (without a call upstream) naming what is refused.
  /// The client's anthropic-version and anthropic-beta (request.anthropic_*) are sent as
  /// anthropic_request_headers() says.
  std::unique_ptr<call> start(upstream_request request, io_refs refs) const override;

 private:
  config::backend_config cfg_;
  std::string version_;  // the backend's anthropic-version (its headers), else the default
  std::string beta_;     // the backend's anthropic-beta; may be empty
  std::unique_ptr<openai_backend> transport_;  // the HTTP client, sending Anthropic's headers
};

/// The headers an Anthropic upstream authenticates with, as a backend config's `headers`:
/// x-api-key from api_key and anthropic-version, unless headers already name them. Health
/// checks send the same.
std::map<std::string, std::string> anthropic_headers(const config::backend_config& cfg);

}  // namespace tollgate::adapters
