#include "gateway/runtime.hpp"

#include "adapters/openai_backend.hpp"

namespace tollgate::gateway {

runtime::runtime(config::config c) : cfg(std::move(c)), routes(cfg), keys(cfg.keys) {
  for (const auto& b : cfg.backends) {
    // Validation admits only known kinds; "openai" is the one there is today.
    backends.push_back(std::make_unique<adapters::openai_backend>(b));
  }
}

}  // namespace tollgate::gateway
