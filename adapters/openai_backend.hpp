// Any OpenAI-compatible HTTP upstream (hosted APIs, vLLM, SGLang), over libcurl on the worker's
// Asio loop.
#pragma once

#include <curl/curl.h>

#include "adapters/backend.hpp"
#include "config/config.hpp"

namespace tollgate::adapters {

class openai_backend final : public backend {
 public:
  explicit openai_backend(config::backend_config cfg);
  ~openai_backend() override;
  openai_backend(const openai_backend&) = delete;
  openai_backend& operator=(const openai_backend&) = delete;
  const std::string& name() const override { return cfg_.name; }
  std::unique_ptr<call> start(upstream_request request, io_refs refs) const override;

 private:
  config::backend_config cfg_;
  // The headers every request to this backend sends, built once. curl only reads the list, so
  // all threads share it; a call links its own request-id node in front of it.
  curl_slist* stream_headers_ = nullptr;
  curl_slist* plain_headers_ = nullptr;
};

}  // namespace tollgate::adapters
