// One request as the handlers see it (request_context), and what it leaves behind for accounting
// (request_result): built fresh for each request by the session, so nothing is reset by hand.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gateway/observability/access_log.hpp"
#include "gateway/server/client_request.hpp"
#include "gateway/keys/key_table.hpp"
#include "gateway/limits/limiter.hpp"
#include "protocol/client_dialect.hpp"
#include "protocol/usage.hpp"

namespace tollgate::gateway {

class worker;
class responder;
struct runtime;

using request = client_request;

/// A key's limiter admission (its concurrency slot and token estimate), settled once: by the
/// accounting consumer with the real usage, or, on any other way out, by the destructor with
/// the estimate.
class limiter_hold {
 public:
  limiter_hold() = default;
  limiter_hold(const limiter_hold&) = delete;
  limiter_hold& operator=(const limiter_hold&) = delete;
  /// Moved when a result waits for its tokens to be counted (accounting/result_consumers).
  limiter_hold(limiter_hold&& o) noexcept
      : limits_(std::exchange(o.limits_, nullptr)), key_(std::move(o.key_)), state_(std::move(o.state_)),
        estimate_(o.estimate_) {}
  limiter_hold& operator=(limiter_hold&&) = delete;
  ~limiter_hold() { settle(-1, 0); }
  /// Holds an admission limits granted (after settling any earlier one).
  void hold(limiter* limits, std::shared_ptr<const config::key_config> key, std::shared_ptr<key_state> state,
            std::int64_t estimate) {
    settle(-1, 0);
    limits_ = limits;
    key_ = std::move(key);
    state_ = std::move(state);
    estimate_ = estimate;
  }
  /// actual < 0 keeps the estimate.
  void settle(std::int64_t actual, double cost) {
    if (limits_ == nullptr) return;
    std::exchange(limits_, nullptr)->finish(*key_, *state_, estimate_, actual, cost);
  }

 private:
  limiter* limits_ = nullptr;
  std::shared_ptr<const config::key_config> key_;
  std::shared_ptr<key_state> state_;
  std::int64_t estimate_ = 0;
};

/// Bytes kept for counting an answer's completion when the upstream reports no usage: in pieces
/// that never move once filled, so that a long stream's bytes are each copied once (one growing
/// string would copy all it holds again at each doubling). A piece is reserved at the bytes kept
/// so far, up to 64 KB, and at least at what is appended: the first piece is just the first bytes
/// (a held stream keeps no more than it was sent). A large string that is mostly full is taken as
/// a piece as it is, with no copy: a stream's write of many events.
class kept_bytes {
 public:
  static constexpr std::size_t adopted_from = 4096;  ///< the least a string taken whole holds

  void append(std::string_view s) {
    if (s.empty()) return;
    if (pieces_.empty() || pieces_.back().capacity() - pieces_.back().size() < s.size()) {
      std::string piece;
      piece.reserve(std::max(s.size(), std::min<std::size_t>(size_, 64 * 1024)));
      pieces_.push_back(std::move(piece));
    }
    pieces_.back().append(s);
    size_ += s.size();
  }
  /// The same; s's own storage becomes a piece when s holds at least adopted_from bytes and fills
  /// half its capacity (what is kept stays within twice its bytes): a stream's chunk, whose
  /// storage grows by doubling as reads gather in it, is kept as it is. s is left empty.
  void append(std::string&& s) {
    if (s.size() < adopted_from || s.size() < s.capacity() / 2) {
      append(std::string_view(s));
      s.clear();
      return;
    }
    size_ += s.size();
    pieces_.push_back(std::move(s));
    s.clear();  // a moved-from string's state is unspecified
  }
  void clear() {
    pieces_.clear();
    size_ = 0;
  }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const std::vector<std::string>& pieces() const { return pieces_; }

 private:
  std::vector<std::string> pieces_;
  std::size_t size_ = 0;
};

/// What a request sent to the proxy path adds to its result.
struct proxy_result {
  const runtime* rt = nullptr;     ///< the snapshot it ran on (held by the session until publish)
  std::string_view endpoint;       ///< "/chat/completions", ...: points into the request's target
  const std::string* route = nullptr;  ///< the matched route as configured: a bounded metric label
  std::string upstream_model;      ///< the model name sent to the backend that answered last
  std::optional<protocol::usage> used;       ///< the last usage the upstream reported
  bool counted = false;            ///< used was counted here, not reported upstream
  bool estimated = false;          ///< counted in part, the rest estimated (metering.max_count_bytes)
  const config::price_config* price = nullptr;  ///< prices of the target that served it
  double first_byte = -1;          ///< seconds to the last attempt's response head; -1: none
  std::optional<std::chrono::steady_clock::time_point> first_token_at;  ///< first stream bytes to the client
  double upstream_seconds = -1;    ///< the answering attempt, from its start to its end
  bool single_attempt = false;
  limiter_hold hold;
  kept_bytes delivered;            ///< what reached the client, for counting the completion
  std::string delivered_text;      ///< the text taken out of delivered when it grew too long
  bool delivered_sse = false;
};

/// One request's result, handed once to the accounting consumers (accounting/result_consumers).
struct request_result {
  access_record& record;  ///< the connection's record, cleared for this request
  std::chrono::steady_clock::time_point started;
  std::optional<proxy_result> proxy;  ///< set when the request went to the proxy path
};

/// What a connection remembers between its requests: the key it proved last.
struct connection_state {
  std::shared_ptr<const key_table> known_table;  ///< the table that proved known_key
  std::string known_key;
  std::optional<principal> known_principal;
  std::vector<std::size_t> order;  ///< scratch for a route's attempt plan
  /// The model names of the last renamed answer, the upstream's and the client's, and both as
  /// JSON literals: a connection's requests mostly name one model, quoted once.
  struct quoted_models {
    std::string upstream, client, upstream_json, client_json;
  } quoted;
};

/// Everything a handler gets: the request, a way to answer, and where its result goes.
struct request_context {
  worker& w;
  request& req;
  std::string_view path;  ///< without the query and the /v1 prefix
  const runtime& rt;
  responder& out;
  connection_state& conn;
  request_result& result;
  std::optional<principal> who;  ///< set by authenticate()
  auth_result auth = auth_result::missing;
  /// The client speaks another API (Anthropic Messages, the Responses API): its request is proxied
  /// as chat completions, and the responder and the exchange turn what goes back into its
  /// dialect. Null: OpenAI's.
  std::unique_ptr<protocol::client_dialect> dialect;
  /// A backend the attempts try first when the route has it: the one that stored the response a
  /// relayed Responses API request continues (previous_response_id). Empty: the route's order.
  std::string preferred_backend;
};

}  // namespace tollgate::gateway
