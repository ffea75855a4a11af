// The attempts of one proxied request: which target to try, when to try again, when to send a
// second attempt (hedging), and when to give up. The runner sees the route, the backends' call
// interface and a clock, nothing else: no socket, no config snapshot, no client. What it needs of
// the world comes through attempt_env (time, waits, starting a call, the client watch); what it
// hands to the client goes through attempt_sink. Tests drive it with scripted calls and a fake
// clock (tests/gateway/attempt_runner_test.cpp).
#pragma once

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "adapters/backend.hpp"
#include "routing/route_table.hpp"

namespace tollgate::gateway {

using steady_clock = std::chrono::steady_clock;

/// An upstream answer read whole, kept until we know whether the client gets it.
struct buffered_response {
  int status = 0;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;  ///< the ones relayed to clients
  std::string body;
  std::optional<std::chrono::milliseconds> retry_after;
  /// When set, what goes out in place of body's bytes [splice_at, splice_at + splice_size) (the
  /// model renamed): the body is written around it, not moved to make room. The text must
  /// outlive the write.
  std::optional<std::size_t> splice_at;
  std::size_t splice_size = 0;
  std::string_view splice;
};

/// Upstream response headers worth passing on; hop-by-hop and framing headers are ours to set.
bool relayed_header(std::string_view name);

/// Retry-After in seconds (the form API providers send); an HTTP date is not honoured.
std::optional<std::chrono::milliseconds> parse_retry_after(std::string_view v);

/// Whether an upstream status moves the request to its next attempt.
bool retryable_status(int status);

/// Lets a waiting request notice that its client closed the connection while a call runs. The
/// session arms it (attempt_env::watch); the runner only reads gone.
struct client_watch : std::enable_shared_from_this<client_watch> {
  adapters::call* active = nullptr;  ///< cancelled when the client leaves
  bool armed = false;                ///< a wait on the client is pending
  bool done = false;                 ///< unwatched: a late completion does nothing
  bool gone = false;                 ///< the client left while watched
};

/// A backend concurrency slot (target_health::try_begin_request), freed by release() or, on any
/// other way out of its scope, by its destructor: no exit path can leak it.
class slot_guard {
 public:
  slot_guard() = default;
  explicit slot_guard(routing::target_health* h) : health_(h) {}
  slot_guard(slot_guard&& o) noexcept : health_(std::exchange(o.health_, nullptr)) {}
  slot_guard& operator=(slot_guard&& o) noexcept {
    if (this != &o) {
      release();
      health_ = std::exchange(o.health_, nullptr);
    }
    return *this;
  }
  slot_guard(const slot_guard&) = delete;
  slot_guard& operator=(const slot_guard&) = delete;
  ~slot_guard() { release(); }
  void release() {
    if (health_ != nullptr) std::exchange(health_, nullptr)->end_request();
  }
  bool held() const { return health_ != nullptr; }

 private:
  routing::target_health* health_ = nullptr;
};

/// What the runner needs of the world. The gateway's implementation is the exchange (the worker's
/// loop, its timers and random numbers, the session's client watch); tests script it.
class attempt_env {
 public:
  virtual ~attempt_env() = default;
  virtual steady_clock::time_point now() = 0;
  virtual std::uint64_t random() = 0;
  /// The order to try r's targets in for this request (the route table's plan on this worker).
  virtual void plan(const routing::route& r, steady_clock::time_point now, std::vector<std::size_t>& out) = 0;
  /// Starts a call to t's backend with this request. Never throws: a backend that throws gives a
  /// call that fails at once (a failed attempt, so retries and failover apply).
  virtual std::unique_ptr<adapters::call> start(const routing::target& t) = 0;
  /// Waits d (the backoff before an attempt).
  virtual boost::asio::awaitable<void> sleep(steady_clock::duration d) = 0;
  /// Waits until a (or b, when given) has an event, for at most timeout. true: one is ready.
  virtual boost::asio::awaitable<bool> wait_ready(adapters::call& a, adapters::call* b,
                                                  steady_clock::duration timeout) = 0;
  /// Waits in t's bounded queue until a slot frees, up to its queue_timeout. true: the slot is
  /// taken (the caller owns it).
  virtual boost::asio::awaitable<bool> wait_for_slot(const routing::target& t) = 0;
  /// Starts watching the client while call runs; stream: at once (else lazily).
  virtual std::shared_ptr<client_watch> watch(adapters::call& call, bool stream) = 0;
  /// Ends a watch (idempotent through watch->done).
  virtual void unwatch(const std::shared_ptr<client_watch>& w) = 0;
};

/// How a relayed answer ended.
struct delivery {
  bool reached = true;     ///< false: the client went away while it was written
  bool keep_alive = false;
  bool broke = false;      ///< the upstream broke the stream mid-way (the client got an error event)
};

/// Where answers go: the client. Only what reaches it is final.
class attempt_sink {
 public:
  virtual ~attempt_sink() = default;
  /// The attempt whose answer is about to be read (after hedging chose it).
  virtual void on_attempt(const routing::target& t) = 0;
  /// Relays a successful event stream from call, head already read.
  virtual boost::asio::awaitable<delivery> deliver_stream(adapters::call& call, const adapters::response_head& head) = 0;
  /// Sends a whole answer (a success or a final, non-retryable error): at once, without a
  /// coroutine, when the client's socket takes it all (the usual case), returning true with keep
  /// (whether the connection stays open). false: deliver_whole_rest() writes the rest, and res
  /// outlives it.
  virtual bool deliver_whole(buffered_response& res, bool& keep) = 0;
  virtual boost::asio::awaitable<bool> deliver_whole_rest() = 0;
  /// One attempt ended; outcome: "ok", "failed", "error_status" or "cancelled" (metric labels).
  virtual void on_attempt_end(const routing::target& t, const char* outcome, double first_byte_seconds) = 0;
};

/// One attempt that did not answer the client.
struct attempt_failure {
  std::string backend;
  adapters::failure error = adapters::failure::none;  ///< none: it answered with status
  int status = 0;                                       ///< the answer's status, when it answered
  std::string message;
};

/// The end of a request's attempts.
struct attempts_result {
  enum class end {
    answered,     ///< an answer reached the client (or was cut off while written)
    client_gone,  ///< the client left; nothing more is to be sent
    exhausted,    ///< every attempt failed: the caller answers with the error below
  };
  end how = end::exhausted;
  bool keep_alive = false;                           ///< with answered
  bool shed = false;                                 ///< the last try found every target full with a full queue
  // Held apart: this result lives in the proxy handler's coroutine frame, which stays small.
  std::unique_ptr<buffered_response> last_response;    ///< the last attempt answered with an error
  std::unique_ptr<adapters::call_event> last_failure;  ///< the last attempt broke or timed out
  std::vector<attempt_failure> failures;             ///< every attempt that failed, in order
  unsigned attempts = 0;                             ///< started, over every route tried
  const routing::target* target = nullptr;           ///< the last attempt relayed
  double first_byte = -1;       ///< seconds to the relayed attempt's response head; -1: none
  double upstream_seconds = -1; ///< the relayed attempt, from its start to its end; -1: none
};

/// Runs the attempts of one request over route, then its fallbacks (and a route's context
/// fallbacks after a context_length_exceeded answer). Not thread-safe; one per request.
class attempt_runner {
 public:
  /// order: scratch space for a route's plan, kept by the caller across requests.
  attempt_runner(attempt_env& env, attempt_sink& sink, std::vector<std::size_t>& order)
      : env_(env), sink_(sink), order_(order) {}

  /// started: when the request arrived (the retry budget, route.deadline, counts from it).
  /// stream: the client asked for a stream. out is filled as the attempts go, so that what
  /// happened is known even if a step throws.
  boost::asio::awaitable<void> run(const routing::route& route, steady_clock::time_point started, bool stream,
                                   attempts_result& out);

  /// The longest a whole upstream answer may be; longer ones fail the attempt.
  static constexpr std::size_t max_upstream_body = 64 * 1024 * 1024;

 private:
  enum class route_end { answered, exhausted, context_exceeded };
  enum class relay_kind { answered, failed, retryable_status, context_exceeded, gone };
  /// The failure (failed) or the answer (retryable_status, context_exceeded) is in the
  /// attempts_result: an outcome is small, as it is moved on its way out of relay.
  struct relay_outcome {
    relay_kind kind = relay_kind::failed;
    bool keep_alive = false;  ///< with answered
    bool broke = false;       ///< with answered
  };

  boost::asio::awaitable<route_end> try_route(const routing::route& r, bool stream, attempts_result& st);
  boost::asio::awaitable<bool> back_off(const config::retry_config& retry, const attempts_result& st);
  /// attempt_started: when the attempt began (its first byte's time is counted from it).
  boost::asio::awaitable<relay_outcome> relay(adapters::call& call, const routing::target& t, bool stream,
                                              attempts_result& st, steady_clock::time_point attempt_started);
  /// The outcome of a failed attempt, its failure kept as the last one.
  static relay_outcome fail(attempts_result& st, adapters::call_event&& failure);
  /// The outcome of an answer that is not relayed (kind), kept as the last one.
  static relay_outcome not_relayed(attempts_result& st, relay_kind kind, buffered_response&& res);
  bool take_slot(const routing::target& t, steady_clock::time_point now);
  static const char* outcome_label(const relay_outcome& o, bool client_gone);

  attempt_env& env_;
  attempt_sink& sink_;
  std::vector<std::size_t>& order_;
  steady_clock::time_point deadline_;
};

}  // namespace tollgate::gateway
