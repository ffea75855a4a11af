// `tollgate bench`: a load generator for OpenAI- and Anthropic-style endpoints.
#pragma once

#include <string_view>
#include <vector>

namespace tollgate::bench {

/// Runs `tollgate bench ARGS...` (args after the word "bench"); returns the exit status.
int bench_command(const std::vector<std::string_view>& args);

}  // namespace tollgate::bench
