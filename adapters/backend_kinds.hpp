// The registry of backend kinds: for each alternative of config::backend_kind_config, how the
// gateway builds its backend and how an active health check calls it. Adding a kind is a struct
// in config/config.hpp, its keys' reader in config.cpp's kind table, and one line here.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "adapters/backend.hpp"
#include "config/config.hpp"

namespace tollgate::adapters {

class engine_port;

/// Loaded local-engine models by checkpoint, device and engine settings. It outlives configs, so
/// that a reload keeps the weights. Thread-safe.
struct engine_cache {
  std::mutex mutex;
  std::map<std::string, std::shared_ptr<const engine_port>> engines;
};

/// One backend kind.
struct backend_kind {
  std::string_view name;  ///< as the YAML writes it
  /// The configured backend. Never throws for a bad backend: one that cannot serve (a checkpoint
  /// that fails to load) answers every request with the reason.
  std::unique_ptr<backend> (*make)(const config::backend_config& b, engine_cache& engines);
  /// The header fields an active health check (GET base_url + health_check.path) sends; nullptr
  /// for a kind without an HTTP endpoint to probe.
  std::map<std::string, std::string> (*probe_headers)(const config::backend_config& b);
};

/// The kind of a backend config (by its settings' alternative).
const backend_kind& kind_of(const config::backend_config& b);

/// kind_of(b).make(b, engines).
std::unique_ptr<backend> make_backend(const config::backend_config& b, engine_cache& engines);

}  // namespace tollgate::adapters
