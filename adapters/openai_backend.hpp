// Any OpenAI-compatible HTTP upstream (hosted APIs, vLLM, SGLang), over libcurl on the worker's
// Asio loop.
#pragma once

#include "adapters/backend.hpp"
#include "config/config.hpp"

namespace tollgate::adapters {

class openai_backend final : public backend {
 public:
  explicit openai_backend(config::backend_config cfg);
  const std::string& name() const override { return cfg_.name; }
  std::unique_ptr<call> start(upstream_request request, io_refs refs) const override;

 private:
  config::backend_config cfg_;
  std::string authorization_;               // "Authorization: Bearer ..." or empty
  std::vector<std::string> extra_headers_;  // "Name: value"
};

}  // namespace tollgate::adapters
