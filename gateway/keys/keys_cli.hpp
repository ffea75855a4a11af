// `tollgate keys create|list|revoke`: manages the store's keys from the command line.
#pragma once

#include <string_view>
#include <vector>

namespace tollgate::gateway {

/// args: what follows `keys`. Returns the exit code (0 done, 1 refused, 2 bad usage).
int keys_command(const std::vector<std::string_view>& args);

}  // namespace tollgate::gateway
