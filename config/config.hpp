// Typed configuration: YAML is turned into these plain structs once, checked, and then only read.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace tollgate::config {

using duration = std::chrono::milliseconds;

struct server_config {
  std::string listen_host = "127.0.0.1";
  std::uint16_t listen_port = 8080;
  unsigned threads = 0;  ///< worker threads; 0 means one per core
  std::size_t max_body_bytes = 10 * 1024 * 1024;
  /// The longest one SSE event of an upstream stream may grow before it is complete; past it the
  /// stream ends with an error event (an upstream that never ends an event is not buffered forever).
  std::size_t max_event_bytes = 8 * 1024 * 1024;
  duration shutdown_timeout{std::chrono::seconds(30)};  ///< how long in-flight requests may finish
  duration idle_timeout{std::chrono::seconds(60)};      ///< keep-alive connection with no request
  std::string access_log = "stdout";                    ///< "stdout", "stderr", "off", or a file path
  std::vector<std::string> access_log_skip;  ///< paths whose 2xx requests are not logged (probes, scrapes)
  std::string admin_key;  ///< opens /admin/; empty: /admin/ is off
  /// Browser origins allowed to call the API (CORS), e.g. "https://app.example.com"; "*" allows
  /// any. Empty (the default): no CORS headers and no preflight answers.
  std::vector<std::string> cors_origins;
  /// Ids of responses stored by `responses: native` backends that the gateway remembers (which
  /// backend, which key), so GET/DELETE /v1/responses/{id} and the like find them; least
  /// recently used forgotten first. 0: none (those calls answer 404).
  std::size_t remembered_responses = 100000;
};

struct key_config {
  std::string name;
  std::string key;
  std::vector<std::string> models;  ///< patterns this key may use ('*' wildcards); empty: all
  unsigned rpm = 0;                 ///< requests per minute; 0: no limit
  unsigned tpm = 0;                 ///< tokens per minute (prompt + completion); 0: no limit
  unsigned max_concurrency = 0;     ///< requests in flight at once; 0: no limit
  double budget = 0;                ///< spend allowed per budget_period, in the currency; 0: no budget
  std::string budget_period;        ///< "day" or "month" (UTC); empty when there is no budget
  std::int64_t expires_unix = 0;    ///< seconds since the epoch after which the key is refused; 0: never
  /// Where its requests wait (a backend's max_concurrency queue), the larger first: low 0,
  /// normal 1, high 2, or a number up to max_priority. A request may lower its own
  /// (x-tollgate-priority), never raise it.
  int priority = 1;
  std::string digest;               ///< raw SHA-256 of the key; keys from the store carry only this
};

inline constexpr int max_priority = 9;
/// "low" -> 0, "normal" -> 1, "high" -> 2, "0".."9" -> that number; nullopt otherwise.
std::optional<int> parse_priority(std::string_view text);
/// The name of a priority for lists: "low", "normal", "high", else its number.
std::string priority_name(int priority);

/// "100/day", "2500.5/month" -> amount and period. nullopt when malformed.
std::optional<std::pair<double, std::string>> parse_budget(std::string_view text);
/// "2027-01-31" (end of that day, UTC) or "2027-01-31T12:00:00Z" -> seconds since the epoch.
std::optional<std::int64_t> parse_expiry(std::string_view text);

struct timeouts_config {
  duration connect{std::chrono::seconds(10)};
  duration first_token{std::chrono::seconds(60)};  ///< until the upstream's response headers
  duration idle{std::chrono::seconds(60)};         ///< between two chunks of a response body
  duration total{std::chrono::minutes(10)};        ///< the whole upstream call
};

/// Passive outlier ejection: failures seen on real traffic take a backend out of rotation.
struct ejection_config {
  unsigned after_failures = 5;  ///< consecutive failures that eject; 0 turns ejection off
  duration cooldown{std::chrono::seconds(10)};       ///< first ejection; doubles while it keeps failing
  duration max_cooldown{std::chrono::minutes(5)};
};

/// Active health checks: a GET on base_url + path every interval.
struct health_check_config {
  bool enabled = false;
  std::string path = "/models";
  duration interval{std::chrono::seconds(10)};
  duration timeout{std::chrono::seconds(2)};
  unsigned unhealthy_after = 3;  ///< consecutive failed probes that mark it down
  unsigned healthy_after = 2;    ///< consecutive good probes that bring it back
};

/// The fields that the kinds calling a remote HTTP API (openai, anthropic) share.
struct remote_backend_config {
  std::string base_url;  ///< without trailing slash, e.g. https://api.deepseek.com/v1
  std::string api_key;   ///< may be empty (a self-hosted server without auth)
  std::map<std::string, std::string> headers;  ///< extra headers sent upstream
  /// How the backend is called: "native" (the built-in HTTP/1.1 client, plain http:// only) or
  /// "curl" (libcurl: TLS, HTTP/2, proxies from the environment). "auto", the default, is
  /// resolved at load time: native for http://, curl for https://.
  std::string transport = "auto";
  health_check_config health_check;
};

/// kind openai: an OpenAI-compatible API (a provider, vLLM, SGLang).
struct openai_backend_config : remote_backend_config {
  static constexpr std::string_view kind = "openai";
  /// `responses: native`: the upstream serves POST /responses itself, so Responses API requests
  /// routed only to such backends are relayed to it as they are (the model renamed) instead of
  /// being translated to chat completions. `translate`, the default, is false.
  bool native_responses = false;
};

/// kind anthropic: a Messages API upstream; chat completions requests are translated to it, and
/// Anthropic Messages requests routed only to such backends are relayed to it as they are.
struct anthropic_backend_config : remote_backend_config {
  static constexpr std::string_view kind = "anthropic";
};

/// kind local_engine: the bundled engine over a checkpoint folder.
struct local_engine_config {
  static constexpr std::string_view kind = "local_engine";
  std::string checkpoint;        ///< a Hugging Face checkpoint folder
  std::string device = "cpu";    ///< "cpu" or "cuda:N"
  std::string dtype;             ///< "float32" or "bfloat16"; empty: the device's default
  /// The KV pool: bytes when > 1, a fraction (of free GPU memory, or of the CPU default of
  /// 256 MiB) when in (0, 1], 0 for the device's default.
  double kv_cache_memory = 0;
  unsigned max_batch = 8;        ///< sequences decoded together (the scheduler's running limit)
  unsigned max_batch_tokens = 2048;  ///< tokens in one engine forward: decode tokens plus prefill chunks
  bool prefix_caching = true;    ///< reuse the KV blocks of cached prompt prefixes
  /// An FP8 checkpoint's routed experts on a GPU: "tensor_cores" (kept in FP8, FP8 products),
  /// "dequantise_on_read" (kept in FP8, the dequantised model's bits) or "dequantise_at_load".
  std::string fp8_experts = "tensor_cores";
};

/// A backend's kind with the fields of that kind only. The config loader reads each kind's keys
/// (config.cpp's kind table); the adapters build and probe it (adapters/backend_kinds.cpp).
using backend_kind_config = std::variant<openai_backend_config, anthropic_backend_config, local_engine_config>;

struct backend_config {
  std::string name;
  backend_kind_config settings;  ///< the kind, and its own fields
  timeouts_config timeouts;
  ejection_config ejection;
  unsigned max_concurrency = 0;  ///< requests in flight at once, over all workers; 0: no limit
  unsigned max_queue = 100;      ///< requests that may wait for a slot; beyond: 503
  duration queue_timeout{std::chrono::seconds(5)};  ///< longest wait for a slot
  /// queue_timeout was written in the config. A local engine's own queue has a longest wait only
  /// then (its sequences are otherwise bounded by timeouts.first_token).
  bool queue_timeout_set = false;
  /// Aging in the queue: a waiter ranks one priority higher for each queue_aging it has waited,
  /// so that low priority is served under steady high-priority load. 0: queue_timeout / 4. For a
  /// local engine, the same in its scheduler (from a sequence's submission).
  duration queue_aging{0};

  /// The kind's name as the YAML writes it: "openai", "anthropic", "local_engine".
  std::string_view kind() const {
    return std::visit([](const auto& k) { return k.kind; }, settings);
  }
  /// The fields of a remote kind; nullptr for a local engine.
  const remote_backend_config* remote() const {
    return std::visit([](const auto& k) -> const remote_backend_config* {
      if constexpr (std::is_base_of_v<remote_backend_config, std::decay_t<decltype(k)>>) return &k;
      else return nullptr;
    }, settings);
  }
  remote_backend_config* remote() {
    return const_cast<remote_backend_config*>(std::as_const(*this).remote());
  }
  /// The fields of a local engine; nullptr for a remote kind.
  const local_engine_config* local_engine() const { return std::get_if<local_engine_config>(&settings); }
  local_engine_config* local_engine() { return std::get_if<local_engine_config>(&settings); }
};

/// Prices per million tokens, in the config's currency.
struct price_config {
  double input = 0;
  double cached_input = 0;
  double output = 0;
  double cache_write = 0;  ///< prompt tokens written to the provider's prompt cache (Anthropic: 1.25x input)
};

struct target_config {
  std::string backend;
  std::string model;  ///< the name this upstream expects; empty: the name the client sent
  unsigned weight = 1;  ///< for the weighted strategy
  price_config price;   ///< what this target charges; the cost strategy picks the cheapest
  /// Where price came from: "config", "catalogue" (config/prices.yaml, when the target names
  /// none), or empty: no price known, so its requests cost 0.
  std::string price_source;
};

struct retry_config {
  unsigned attempts = 0;  ///< attempts in all, first included; 0: one per target
  duration backoff{std::chrono::milliseconds(100)};  ///< base of the full-jitter backoff
  duration max_backoff{std::chrono::seconds(2)};
};

struct route_config {
  std::string model;                 ///< public name; may hold '*' wildcards
  std::vector<std::string> aliases;  ///< more public names for the same route
  std::vector<target_config> targets;
  std::string strategy = "priority";  ///< a name registered in routing/policy
  int strategy_line = 0;              ///< where strategy was set, for error messages
  retry_config retry;
  duration hedge_after{0};  ///< start a second attempt when no first byte came by then; 0: off
  std::vector<std::string> fallbacks;          ///< routes to try when every target failed
  std::vector<std::string> context_fallbacks;  ///< routes for context_length_exceeded
  /// Set when every target named a disabled backend (their targets are dropped): why requests
  /// to this route get 503.
  std::string unavailable;
};

/// A backend marked `optional: true` whose `${VAR}`s were not all set: left out of the config.
struct disabled_backend {
  std::string name;
  std::string reason;  ///< e.g. "environment variable QINIU_API_KEY is not set"
};

/// limits: where per-key limits and budgets are counted. redis_url empty: in this process only.
struct limits_config {
  std::string redis_url;  ///< limits.redis: redis://host:port[/db]
  /// limits.on_redis_down: "local" (each replica enforces its share of every limit alone) or
  /// "reject" (requests of limited keys are answered 503 until Redis is back).
  std::string on_redis_down = "local";
  /// limits.replicas: how many replicas share the limits, for the local share; 0: the number of
  /// replicas last seen in Redis.
  unsigned replicas = 0;
};

/// backends[].queue_aging as it applies: queue_timeout / 4 when not set.
inline duration queue_aging_of(const backend_config& b) {
  return b.queue_aging.count() > 0 ? b.queue_aging : b.queue_timeout / 4;
}

struct config {
  std::string source;  ///< file the config came from ("<embedded>" for built-in)
  std::string currency = "CNY";  ///< of every price, and of the cost metrics
  std::string sqlite_path;       ///< store.sqlite: keys and the usage ledger; empty: no store
  /// store.postgres: a libpq connection URL (postgresql://...) for keys and the ledger shared by
  /// several replicas; set instead of sqlite_path.
  std::string postgres_url;
  /// store.spool: a local folder where ledger records wait while PostgreSQL is unreachable.
  std::string spool_dir = "tollgate-spool";
  limits_config limits;
  /// store.flush_interval: how often the ledger's writer commits what workers appended; 0 ("sync"):
  /// each record is committed by its worker as its request ends.
  duration ledger_flush_interval{std::chrono::milliseconds(200)};
  std::string tokenizer_path;    ///< metering.tokenizer: counts tokens when an upstream reports none
  /// metering.max_count_bytes: the most bytes of one text (a prompt, a completion) that are
  /// tokenized; past it the first max_count_bytes are counted and the rest estimated at their rate,
  /// and the ledger's usage_source says "estimated".
  std::size_t max_count_bytes = 2 * 1024 * 1024;
  /// metering.count_threads: threads that count tokens, apart from the workers (restart to change).
  unsigned count_threads = 1;
  /// metering.count_queue: counts that may wait for a counting thread; past it an answer's tokens
  /// are estimated from its bytes at once (restart to change).
  unsigned count_queue = 256;
  server_config server;
  std::vector<key_config> keys;
  std::vector<backend_config> backends;
  std::vector<route_config> routes;
  std::vector<disabled_backend> disabled_backends;  ///< optional backends left out, in config order
};

/// One problem found while loading; line and column are 1-based (0 when unknown).
struct problem {
  std::string file;
  int line = 0;
  int column = 0;
  std::string key;  ///< dotted path, e.g. "routes[0].targets[1].backend"
  std::string message;
  /// "file:line:column: key: message"
  std::string to_string() const;
};

struct load_result {
  std::optional<config> value;  ///< set only when problems is empty
  std::vector<problem> problems;
  std::vector<problem> warnings;  ///< the config loads, but the user should know (a disabled backend)
  /// Targets on a provider (kind openai) with no price in the config or the catalogue: their
  /// requests cost 0. check-config prints these; serve does not (demos and self-hosted servers).
  std::vector<problem> unpriced;
};

/// Looks up an environment variable; nullopt when unset.
using env_lookup = std::function<std::optional<std::string>(const std::string&)>;
/// Reads the process environment.
std::optional<std::string> process_env(const std::string& name);

/// Parses and checks a config. Every problem is collected; none is thrown.
load_result load_string(std::string_view yaml, const std::string& file_name,
                        const env_lookup& env = process_env);
load_result load_file(const std::string& path, const env_lookup& env = process_env);

/// The date of the built-in price catalogue's list prices (config/prices.yaml).
std::string price_catalogue_date();

/// The catalogue's list price of `model` at the provider whose base URL is `base_url` (matched by
/// host), in `currency`; nullopt when the catalogue lists none.
std::optional<price_config> catalogue_price(std::string_view base_url, const std::string& model,
                                            const std::string& currency);

/// Parses "250ms", "2s", "10m", "1h" (a bare number is seconds).
std::optional<duration> parse_duration(std::string_view text);

}  // namespace tollgate::config
