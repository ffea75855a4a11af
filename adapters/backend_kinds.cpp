#include "adapters/backend_kinds.hpp"

#include <iostream>
#include <variant>

#include "adapters/anthropic_backend.hpp"
#include "adapters/local_engine_backend.hpp"
#include "adapters/openai_backend.hpp"

namespace tollgate::adapters {

namespace {

std::unique_ptr<backend> make_openai(const config::backend_config& b, engine_cache&) {
  return std::make_unique<openai_backend>(b);
}

std::map<std::string, std::string> bearer_probe_headers(const config::backend_config& b) {
  std::map<std::string, std::string> headers;
  if (!b.remote()->api_key.empty()) headers["Authorization"] = "Bearer " + b.remote()->api_key;
  return headers;
}

std::unique_ptr<backend> make_anthropic(const config::backend_config& b, engine_cache&) {
  return std::make_unique<anthropic_backend>(b);
}

/// A local-engine backend over its checkpoint, loaded once per checkpoint, device and engine
/// settings (dtype, KV pool, batch limits are fixed at load). One that fails to load answers 503
/// with the reason, and the gateway keeps serving the other backends.
std::unique_ptr<backend> make_local_engine(const config::backend_config& b, engine_cache& cache) {
  const config::local_engine_config& l = *b.local_engine();
  const std::string key = l.checkpoint + "|" + l.device + "|" + l.dtype + "|" + std::to_string(l.kv_cache_memory) + "|" +
                          std::to_string(l.max_batch) + "|" + std::to_string(l.max_batch_tokens) + "|" +
                          (l.prefix_caching ? "cache" : "nocache") + "|" + l.fp8_experts + "|" +
                          std::to_string(config::queue_aging_of(b).count());
  std::shared_ptr<const engine_port> engine;
  std::string error;
  {
    std::lock_guard lock(cache.mutex);
    if (auto it = cache.engines.find(key); it != cache.engines.end()) engine = it->second;
  }
  if (!engine) {
    try {
      engine = load_engine(b);
      std::lock_guard lock(cache.mutex);
      cache.engines[key] = engine;
    } catch (const std::exception& e) {
      error = e.what();
      std::cerr << "tollgate: backend " << b.name << ": " << error << std::endl;
    }
  }
  return std::make_unique<local_engine_backend>(b, engine, error);
}

// One line per kind, in the order of config::backend_kind_config's alternatives.
constexpr backend_kind registry[] = {
    {config::openai_backend_config::kind, &make_openai, &bearer_probe_headers},
    {config::anthropic_backend_config::kind, &make_anthropic, &anthropic_headers},
    {config::local_engine_config::kind, &make_local_engine, nullptr},
};

template <std::size_t... I>
constexpr bool registry_matches_config(std::index_sequence<I...>) {
  return ((registry[I].name == std::variant_alternative_t<I, config::backend_kind_config>::kind) && ...);
}
static_assert(std::size(registry) == std::variant_size_v<config::backend_kind_config>,
              "every backend kind of the config has its line in the registry");
static_assert(registry_matches_config(std::make_index_sequence<std::size(registry)>()),
              "the registry's lines follow config::backend_kind_config's alternatives");

}  // namespace

const backend_kind& kind_of(const config::backend_config& b) { return registry[b.settings.index()]; }

std::unique_ptr<backend> make_backend(const config::backend_config& b, engine_cache& engines) {
  return kind_of(b).make(b, engines);
}

}  // namespace tollgate::adapters
