// Any OpenAI-compatible HTTP upstream (hosted APIs, vLLM, SGLang), on the worker's Asio loop:
// over libcurl (TLS, HTTP/2) or the built-in HTTP/1.1 client, as the backend's transport says.
#pragma once

#include <curl/curl.h>

#include <optional>

#include "adapters/backend.hpp"
#include "adapters/http1_call.hpp"
#include "config/config.hpp"

namespace tollgate::adapters {

class openai_backend final : public backend {
 public:
  /// Precondition: cfg is of a remote kind (cfg.remote() is set).
  explicit openai_backend(config::backend_config cfg);
  ~openai_backend() override;
  openai_backend(const openai_backend&) = delete;
  openai_backend& operator=(const openai_backend&) = delete;
  const std::string& name() const override { return cfg_.name; }
  std::unique_ptr<call> start(upstream_request request, io_refs refs) const override;

 private:
  config::backend_config cfg_;
  std::optional<http1_origin> native_;  // set for transport: native
  // The headers every request to this backend sends, built once. curl only reads the list, so
  // all threads share it; a call links its own request-id node in front of it.
  curl_slist* stream_headers_ = nullptr;
  curl_slist* plain_headers_ = nullptr;
};

}  // namespace tollgate::adapters
