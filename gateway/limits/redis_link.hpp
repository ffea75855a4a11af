// The connection to Redis (or Valkey) that the shared limits use, and what it keeps across config
// reloads: a pool of connections for the request path's round trips, a background thread that
// sends queued commands in pipelines (settling, releasing, spending), gives back idle leases and
// reads the other replicas' spend, a heartbeat that counts the live replicas, and a listener on
// the ejections channel. Private to the limits: redis_limiter.cpp and this pair include it; the
// rest of the gateway sees only make_redis_link and announce_ejection (redis_limiter.hpp).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "gateway/limits/limiter.hpp"
#include "gateway/limits/redis_limiter.hpp"

struct redisContext;
struct redisReply;

namespace tollgate::gateway {

namespace redis {

struct reply_deleter {
  void operator()(redisReply* r) const;
};
using reply_ptr = std::unique_ptr<redisReply, reply_deleter>;
struct context_deleter {
  void operator()(redisContext* c) const;
};
using context_ptr = std::unique_ptr<redisContext, context_deleter>;

// TAKE: KEYS bucket, slots, replicas; ARGV rpm, tpm, need_r, need_t, want_r, want_t, max_conc,
// replica, live_window_ms. Returns {ok, which, wait_ms, granted_r, granted_t}.
extern const std::string take_lua;
// BEAT: KEYS replicas; ARGV replica, live_window_ms. Marks the replica seen now and returns how
// many were seen within the window.
extern const char* const beat_lua;
// GIVE: KEYS bucket; ARGV rpm, tpm, r, t: a lease (or a settled difference, negative for a debt)
// back into the buckets.
extern const std::string give_lua;
// SPEND: KEYS total; ARGV seed (the ledger's spend when the total is new), add, ttl_ms.
extern const char* const spend_lua;

inline constexpr const char* replicas_key = "tollgate:replicas";
// A replica that has not beaten for this long (by Redis's clock, not the replicas': theirs may
// differ, or step) is taken for gone, and its concurrency slots for free. It beats every 500 ms.
inline constexpr std::int64_t live_window_ms = 3000;

// Keys of one API key share a hash tag, so a Redis Cluster keeps them on one node.
std::string bucket_key(const std::string& name);
std::string slots_key(const std::string& name);
std::string spend_key(const std::string& name, std::int64_t period_start);

std::int64_t unix_ms();
/// A number as a script argument, exactly.
std::string num(double v);
/// A string, status or integer reply as text; "" for anything else or none.
std::string reply_text(const redisReply* r);

}  // namespace redis

/// One per Redis URL; shared by the limiters of successive config snapshots. Thread-safe.
class redis_link {
 public:
  redis_link(const std::string& url, ejection_handler on_ejection);
  ~redis_link();
  redis_link(const redis_link&) = delete;
  redis_link& operator=(const redis_link&) = delete;

  /// Publishes this replica's ejection of backend (sent by the background thread).
  void announce(const std::string& backend, std::chrono::milliseconds cooldown);

  bool up() const { return up_.load(); }
  std::int64_t replicas() const { return replicas_.load(); }
  const std::string& replica() const { return replica_; }

  /// One command on a pooled connection, or nullptr (and Redis marked down) when it failed.
  redis::reply_ptr call(const std::vector<std::string>& argv);

  /// A command for the background thread (settling, releasing, spending); done in order.
  void post(std::vector<std::string> argv, std::function<void(const redisReply*)> done = {});

  /// Remembers a key this replica holds state for (leases, slots, spend) so the background
  /// thread can give back idle leases and read the other replicas' spend.
  void track(const config::key_config& key, key_state& st);

  std::atomic<std::uint64_t> round_trips_{0}, local_admits_{0}, fallback_admits_{0}, rejected_{0}, errors_{0},
      heard_ejections_{0};

 private:
  struct op {
    std::vector<std::string> argv;
    std::function<void(const redisReply*)> done;
  };
  struct tracked_key {
    key_state* state = nullptr;  // lives in the lasting registry, which outlives this link
    config::key_config key;
  };

  redis::context_ptr connect();
  static redis::reply_ptr command(redisContext& c, const std::vector<std::string>& argv);
  redis::context_ptr take();
  void give_back(redis::context_ptr c);
  void mark_down(const std::string& why);
  void heartbeat(redisContext& c);
  /// The background thread: queued commands, heartbeat, idle leases, the others' spend.
  void run();
  /// Subscribes to the ejections channel (again after each failure) and hands other replicas'
  /// ejections to on_ejection_.
  void listen();
  /// Sends the queued commands in one pipeline; false when the connection failed (the rest wait).
  bool drain(redisContext& c);
  bool give_back_idle_leases(redisContext& c);
  /// The period's spend of every tracked key with a budget, as all replicas added it.
  bool read_spend(redisContext& c);

  std::string url_, host_ = "127.0.0.1", user_, password_, db_;
  ejection_handler on_ejection_;
  std::atomic<bool> stopping_{false};
  std::thread listener_;
  int port_ = 6379;
  std::string replica_;
  std::atomic<bool> up_{false};
  std::atomic<std::int64_t> replicas_{1};
  std::mutex pool_mutex_;
  std::vector<redis::context_ptr> pool_;
  std::mutex ops_mutex_;
  std::condition_variable wake_;
  std::deque<op> ops_;
  bool stop_ = false;
  std::mutex track_mutex_;
  std::unordered_map<std::string, tracked_key> tracked_;
  std::thread thread_;
};

}  // namespace tollgate::gateway
