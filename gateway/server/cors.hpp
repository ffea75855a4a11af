// CORS for browser apps (server.cors.origins): which Origin an answer allows, and the headers of
// an answer to a preflight. Off when no origin is configured.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tollgate::gateway {

/// The Access-Control-Allow-Origin value for a request from `origin`: the origin itself when it
/// is listed (or "*" is), else empty (no CORS headers: the browser refuses the answer).
inline std::string cors_allowed_origin(const std::vector<std::string>& allowed, std::string_view origin) {
  if (origin.empty()) return {};
  for (const auto& a : allowed) {
    if (a == "*" || a == origin) return std::string(origin);
  }
  return {};
}

/// Response headers a browser may read from a cross-origin answer.
inline constexpr std::string_view cors_exposed_headers =
    "x-request-id, x-tollgate-backend, x-tollgate-upstream-model, retry-after, x-ratelimit-limit-requests, "
    "x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, "
    "x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens";

/// Request headers a preflight allows when it names none.
inline constexpr std::string_view cors_default_request_headers =
    "authorization, content-type, x-api-key, anthropic-version, anthropic-beta, x-request-id, x-stainless-os, "
    "x-stainless-lang, x-stainless-arch, x-stainless-runtime, x-stainless-runtime-version, x-stainless-package-version, "
    "x-stainless-retry-count, x-stainless-timeout, anthropic-dangerous-direct-browser-access";

}  // namespace tollgate::gateway
