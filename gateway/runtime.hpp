// Everything a request needs from the configuration, built once per config and then only read.
// Workers hold it through a shared_ptr, so a request keeps the snapshot it started with.
#pragma once

#include <memory>
#include <vector>

#include "adapters/backend.hpp"
#include "config/config.hpp"
#include "gateway/key_table.hpp"
#include "routing/route_table.hpp"

namespace tollgate::gateway {

struct runtime {
  explicit runtime(config::config c);

  config::config cfg;
  routing::route_table routes;
  key_table keys;
  std::vector<std::unique_ptr<adapters::backend>> backends;  ///< same order as cfg.backends
};

}  // namespace tollgate::gateway
