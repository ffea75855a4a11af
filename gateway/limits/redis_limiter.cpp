#include "gateway/limits/redis_limiter.hpp"

#include <hiredis/hiredis.h>
#include <openssl/rand.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <functional>
#include <iostream>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "gateway/accounting/money.hpp"
#include "gateway/keys/store.hpp"

namespace tollgate::gateway {

namespace {

// Refills the buckets to Redis's clock; rpm or tpm 0: that bucket is not kept.
constexpr const char* refill_lua = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'r', 't', 'ts')
local r, tk, ts = tonumber(b[1]), tonumber(b[2]), tonumber(b[3])
local el = 0
if ts then el = math.max(0, now - ts) / 60000 end
if r == nil then r = rpm end
if tk == nil then tk = tpm end
r = math.min(rpm, r + el * rpm)
tk = math.min(tpm, tk + el * tpm)
)lua";

// TAKE: KEYS bucket, slots, replicas; ARGV rpm, tpm, need_r, need_t, want_r, want_t, max_conc,
// replica, live_after_ms. Returns {ok, which, wait_ms, granted_r, granted_t}.
const std::string take_lua = std::string(refill_lua) + R"lua(
local need_r, need_t = tonumber(ARGV[3]), tonumber(ARGV[4])
local want_r, want_t = tonumber(ARGV[5]), tonumber(ARGV[6])
local maxc, rep, live_after = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local function save()
  redis.call('HSET', KEYS[1], 'r', tostring(r), 't', tostring(tk), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[1], 120000)
end
if rpm > 0 and r < need_r then
  save()
  return {0, 'rpm', tostring(math.ceil((need_r - r) * 60000 / rpm)), '0', '0'}
end
if tpm > 0 and tk < need_t then
  save()
  return {0, 'tpm', tostring(math.ceil((need_t - tk) * 60000 / tpm)), '0', '0'}
end
if maxc > 0 then
  local held = redis.call('HGETALL', KEYS[2])
  local sum = 0
  for i = 1, #held, 2 do
    local seen = redis.call('ZSCORE', KEYS[3], held[i])
    if held[i] ~= rep and (not seen or tonumber(seen) < live_after) then
      redis.call('HDEL', KEYS[2], held[i])
    else
      sum = sum + tonumber(held[i + 1])
    end
  end
  if sum >= maxc then
    save()
    return {0, 'conc', '1000', '0', '0'}
  end
  redis.call('HINCRBY', KEYS[2], rep, 1)
  redis.call('PEXPIRE', KEYS[2], 3600000)
end
local gr, gt = 0, 0
if rpm > 0 then gr = math.max(need_r, math.min(want_r, math.floor(r))) end
if tpm > 0 then gt = math.max(need_t, math.min(want_t, tk)) end
r = r - gr
tk = tk - gt
save()
return {1, '', '0', tostring(gr), tostring(gt)}
)lua";

// GIVE: KEYS bucket; ARGV rpm, tpm, r, t: a lease (or a settled difference, negative for a debt)
// back into the buckets.
const std::string give_lua = std::string(refill_lua) + R"lua(
r = math.min(rpm, r + tonumber(ARGV[3]))
tk = math.min(tpm, tk + tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'r', tostring(r), 't', tostring(tk), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 120000)
return 1
)lua";

// SPEND: KEYS total; ARGV seed (the ledger's spend when the total is new), add, ttl_ms.
constexpr const char* spend_lua = R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[1]) end
local v = redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return v
)lua";

constexpr const char* replicas_key = "tollgate:replicas";
// A concurrency slot a finished request left is kept this long for the next one (no round trip),
// then given back to Redis for the other replicas.
constexpr auto held_slot_idle = std::chrono::milliseconds(50);
constexpr const char* ejections_channel = "tollgate:ejections";

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// Keys of one API key share a hash tag, so a Redis Cluster keeps them on one node.
std::string bucket_key(const std::string& name) { return "tollgate:{" + name + "}:bucket"; }
std::string slots_key(const std::string& name) { return "tollgate:{" + name + "}:slots"; }
std::string spend_key(const std::string& name, std::int64_t period_start) {
  return "tollgate:{" + name + "}:spend:" + std::to_string(period_start);
}

struct reply_deleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using reply_ptr = std::unique_ptr<redisReply, reply_deleter>;
struct context_deleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using context_ptr = std::unique_ptr<redisContext, context_deleter>;

std::string reply_text(const redisReply* r) {
  if (r == nullptr) return "";
  if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) return std::string(r->str, r->len);
  if (r->type == REDIS_REPLY_INTEGER) return std::to_string(r->integer);
  return "";
}

}  // namespace

class redis_link {
 public:
  redis_link(const std::string& url, ejection_handler on_ejection) : url_(url), on_ejection_(std::move(on_ejection)) {
    // redis://[user:password@]host[:port][/db]
    std::string rest = url.substr(std::string("redis://").size());
    if (auto at = rest.rfind('@'); at != std::string::npos) {
      std::string cred = rest.substr(0, at);
      rest = rest.substr(at + 1);
      auto colon = cred.find(':');
      password_ = colon == std::string::npos ? cred : cred.substr(colon + 1);
      user_ = colon == std::string::npos ? "" : cred.substr(0, colon);
    }
    if (auto slash = rest.find('/'); slash != std::string::npos) {
      db_ = rest.substr(slash + 1);
      rest = rest.substr(0, slash);
    }
    host_ = rest;
    if (auto colon = rest.rfind(':'); colon != std::string::npos) {
      host_ = rest.substr(0, colon);
      port_ = std::atoi(rest.substr(colon + 1).c_str());
    }
    unsigned char raw[6];
    RAND_bytes(raw, sizeof raw);
    char host[64] = {};
    ::gethostname(host, sizeof host - 1);
    replica_ = std::string(host) + "-" + to_hex(std::string(reinterpret_cast<char*>(raw), sizeof raw));
    if (auto c = connect()) {
      up_ = true;
      heartbeat(*c);
      give_back(std::move(c));
    } else {
      std::cerr << "tollgate: limits: Redis at " << host_ << ":" << port_ << " does not answer; limits are "
                << "enforced as limits.on_redis_down says until it does" << std::endl;
    }
    thread_ = std::thread([this] { run(); });
    listener_ = std::thread([this] { listen(); });
  }

  ~redis_link() {
    {
      std::lock_guard lock(ops_mutex_);
      stop_ = true;
    }
    stopping_ = true;
    wake_.notify_one();
    thread_.join();
    listener_.join();
  }

  void announce(const std::string& backend, std::chrono::milliseconds cooldown) {
    post({"PUBLISH", ejections_channel, replica_ + " " + std::to_string(cooldown.count()) + " " + backend});
  }

  bool up() const { return up_.load(); }
  std::int64_t replicas() const { return replicas_.load(); }
  const std::string& replica() const { return replica_; }

  /// One command on a pooled connection, or nullptr (and Redis marked down) when it failed.
  reply_ptr call(const std::vector<std::string>& argv) {
    if (!up_) return nullptr;
    context_ptr c = take();
    if (!c) {
      mark_down("cannot connect");
      return nullptr;
    }
    round_trips_.fetch_add(1, std::memory_order_relaxed);
    reply_ptr r = command(*c, argv);
    if (!r) {
      mark_down(c->errstr);
      return nullptr;
    }
    give_back(std::move(c));
    return r;
  }

  /// A command for the background thread (settling, releasing, spending); done in order.
  void post(std::vector<std::string> argv, std::function<void(const redisReply*)> done = {}) {
    std::lock_guard lock(ops_mutex_);
    // Past a bound (a long outage), the oldest are dropped: the limits heal from the buckets'
    // refill and the spend from the ledger at the next period.
    if (ops_.size() >= 100000) ops_.pop_front();
    ops_.push_back({std::move(argv), std::move(done)});
    wake_.notify_one();
  }

  /// Remembers a key this replica holds state for (leases, slots, spend) so the background
  /// thread can give back idle leases and read the other replicas' spend.
  void track(const config::key_config& key, key_state& st) {
    std::lock_guard lock(track_mutex_);
    auto& t = tracked_[key.name];
    t.state = &st;
    t.key = key;
  }

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

  context_ptr connect() {
    // Generous for loopback, so a busy machine's scheduling delay is not taken for an outage.
    const timeval tv{1, 0};
    context_ptr c(redisConnectWithTimeout(host_.c_str(), port_, tv));
    if (!c || c->err) return nullptr;
    redisSetTimeout(c.get(), tv);
    if (!password_.empty()) {
      reply_ptr r = user_.empty() ? command(*c, {"AUTH", password_}) : command(*c, {"AUTH", user_, password_});
      if (!r || r->type == REDIS_REPLY_ERROR) return nullptr;
    }
    if (!db_.empty() && db_ != "0") {
      reply_ptr r = command(*c, {"SELECT", db_});
      if (!r || r->type == REDIS_REPLY_ERROR) return nullptr;
    }
    return c;
  }

  static reply_ptr command(redisContext& c, const std::vector<std::string>& argv) {
    std::vector<const char*> args;
    std::vector<size_t> lens;
    for (const auto& a : argv) {
      args.push_back(a.data());
      lens.push_back(a.size());
    }
    return reply_ptr(static_cast<redisReply*>(
        redisCommandArgv(&c, static_cast<int>(args.size()), args.data(), lens.data())));
  }

  context_ptr take() {
    {
      std::lock_guard lock(pool_mutex_);
      if (!pool_.empty()) {
        context_ptr c = std::move(pool_.back());
        pool_.pop_back();
        return c;
      }
    }
    return connect();
  }
  void give_back(context_ptr c) {
    std::lock_guard lock(pool_mutex_);
    if (pool_.size() < 64) pool_.push_back(std::move(c));
  }

  void mark_down(const std::string& why) {
    errors_.fetch_add(1, std::memory_order_relaxed);
    if (up_.exchange(false)) {
      std::cerr << "tollgate: limits: Redis at " << host_ << ":" << port_ << " stopped answering (" << why
                << "); limits follow limits.on_redis_down until it is back" << std::endl;
      std::lock_guard lock(pool_mutex_);
      pool_.clear();
    }
  }

  void heartbeat(redisContext& c) {
    const auto now = unix_ms();
    command(c, {"ZADD", replicas_key, std::to_string(now), replica_});
    command(c, {"ZREMRANGEBYSCORE", replicas_key, "-inf", std::to_string(now - 60000)});
    if (reply_ptr n = command(c, {"ZCOUNT", replicas_key, std::to_string(now - 3000), "+inf"});
        n && n->type == REDIS_REPLY_INTEGER) {
      replicas_ = std::max<long long>(n->integer, 1);
    }
  }

  void run() {
    context_ptr c;
    auto last_beat = std::chrono::steady_clock::now() - std::chrono::hours(1);
    auto last_spend = last_beat;
    for (;;) {
      {
        std::unique_lock lock(ops_mutex_);
        wake_.wait_for(lock, std::chrono::milliseconds(50), [&] { return stop_ || !ops_.empty(); });
        if (stop_) return;
      }
      if (!c) c = connect();
      if (!c) {
        mark_down("cannot connect");
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        continue;
      }
      const auto now = std::chrono::steady_clock::now();
      bool ok = true;
      if (now - last_beat >= std::chrono::milliseconds(500) || !up_) {
        reply_ptr pong = command(*c, {"PING"});
        ok = pong != nullptr;
        if (ok) {
          heartbeat(*c);
          last_beat = now;
          if (!up_.exchange(true)) {
            std::cerr << "tollgate: limits: Redis at " << host_ << ":" << port_ << " answers again; limits are shared"
                      << std::endl;
          }
        }
      }
      if (ok) ok = drain(*c);
      if (ok) ok = give_back_idle_leases(*c);
      if (ok && now - last_spend >= std::chrono::milliseconds(100)) {
        ok = read_spend(*c);
        last_spend = now;
      }
      if (!ok) {
        mark_down(c->errstr);
        c.reset();
      }
    }
  }

  /// Subscribes to the ejections channel (again after each failure) and hands other replicas'
  /// ejections to on_ejection_.
  void listen() {
    while (!stopping_) {
      context_ptr c = connect();
      reply_ptr ok = c ? command(*c, {"SUBSCRIBE", ejections_channel}) : nullptr;
      if (!ok) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        continue;
      }
      while (!stopping_) {
        void* raw = nullptr;
        if (redisGetReplyFromReader(c.get(), &raw) != REDIS_OK) break;
        if (raw == nullptr) {
          pollfd p{c->fd, POLLIN, 0};
          const int n = ::poll(&p, 1, 200);
          if (n < 0 && errno != EINTR) break;
          if (n > 0 && redisBufferRead(c.get()) != REDIS_OK) break;
          continue;
        }
        reply_ptr r(static_cast<redisReply*>(raw));
        // ["message", channel, "replica cooldown_ms backend"]
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || reply_text(r->element[0]) != "message") continue;
        const std::string text = reply_text(r->element[2]);
        const auto a = text.find(' '), b = a == std::string::npos ? a : text.find(' ', a + 1);
        if (b == std::string::npos || text.substr(0, a) == replica_) continue;
        const auto cooldown = std::chrono::milliseconds(std::atoll(text.substr(a + 1, b - a - 1).c_str()));
        const std::string backend = text.substr(b + 1);
        if (cooldown.count() <= 0 || backend.empty()) continue;
        std::cerr << "tollgate: backend " << backend << " ejected for " << cooldown.count()
                  << " ms, as another replica decided" << std::endl;
        heard_ejections_.fetch_add(1, std::memory_order_relaxed);
        if (on_ejection_) on_ejection_(backend, cooldown);
      }
    }
  }

  /// Sends the queued commands in one pipeline; false when the connection failed (the rest wait).
  bool drain(redisContext& c) {
    std::deque<op> batch;
    {
      std::lock_guard lock(ops_mutex_);
      batch.swap(ops_);
    }
    if (batch.empty()) return true;
    for (const auto& o : batch) {
      std::vector<const char*> args;
      std::vector<size_t> lens;
      for (const auto& a : o.argv) {
        args.push_back(a.data());
        lens.push_back(a.size());
      }
      redisAppendCommandArgv(&c, static_cast<int>(args.size()), args.data(), lens.data());
    }
    std::size_t done = 0;
    for (; done < batch.size(); ++done) {
      void* raw = nullptr;
      if (redisGetReply(&c, &raw) != REDIS_OK) break;
      reply_ptr r(static_cast<redisReply*>(raw));
      if (batch[done].done) batch[done].done(r.get());
    }
    if (done == batch.size()) return true;
    // Not answered: sent again on the next connection. A command that ran but whose answer was
    // lost runs twice; each is a small correction that the buckets' refill absorbs.
    std::lock_guard lock(ops_mutex_);
    for (std::size_t i = batch.size(); i-- > done;) ops_.push_front(std::move(batch[i]));
    return false;
  }

  bool give_back_idle_leases(redisContext& c) {
    const auto now = std::chrono::steady_clock::now();
    std::vector<std::pair<tracked_key, std::pair<double, double>>> returns;
    std::vector<std::pair<std::string, std::int64_t>> slots, held;
    {
      std::lock_guard lock(track_mutex_);
      for (auto& [name, t] : tracked_) {
        std::lock_guard state_lock(t.state->mutex);
        if ((t.state->lease_requests != 0 || t.state->lease_tokens != 0) &&
            now - t.state->lease_used >= std::chrono::seconds(1)) {
          returns.push_back({t, {t.state->lease_requests, t.state->lease_tokens}});
          t.state->lease_requests = 0;
          t.state->lease_tokens = 0;
        }
        if (t.key.max_concurrency != 0) {
          if (t.state->held_slots > 0 && now - t.state->held_used >= held_slot_idle) {
            held.push_back({name, t.state->held_slots});
            t.state->held_slots = 0;
          }
          slots.push_back({name, t.state->redis_slots + t.state->held_slots});
        }
      }
    }
    for (const auto& [name, n] : held) {
      if (!command(c, {"HINCRBY", slots_key(name), replica_, std::to_string(-n)})) return false;
    }
    for (const auto& [t, lease] : returns) {
      if (!command(c, {"EVAL", give_lua, "1", bucket_key(t.key.name), std::to_string(t.key.rpm),
                       std::to_string(t.key.tpm), num(lease.first), num(lease.second)})) {
        return false;
      }
    }
    // This replica's slot counts, set whole each time: a count left wrong by an outage heals.
    static thread_local auto last_slots = std::chrono::steady_clock::now();
    if (now - last_slots >= std::chrono::seconds(1)) {
      last_slots = now;
      for (const auto& [name, n] : slots) {
        if (!command(c, {"HSET", slots_key(name), replica_, std::to_string(std::max<std::int64_t>(n, 0))})) return false;
      }
    }
    return true;
  }

  /// The period's spend of every tracked key with a budget, as all replicas added it.
  bool read_spend(redisContext& c) {
    std::vector<tracked_key> keys;
    {
      std::lock_guard lock(track_mutex_);
      for (auto& [name, t] : tracked_) {
        if (t.key.budget > 0) keys.push_back(t);
      }
    }
    for (const auto& t : keys) {
      std::int64_t period = 0;
      {
        std::lock_guard lock(t.state->mutex);
        period = t.state->period_start_ms;
      }
      reply_ptr r = command(c, {"GET", spend_key(t.key.name, period)});
      if (!r) return false;
      if (r->type != REDIS_REPLY_STRING) continue;
      const double total = std::atof(reply_text(r.get()).c_str());
      std::lock_guard lock(t.state->mutex);
      if (t.state->period_start_ms == period) t.state->spent = std::max(t.state->spent, total);
    }
    return true;
  }

  std::string url_, host_ = "127.0.0.1", user_, password_, db_;
  ejection_handler on_ejection_;
  std::atomic<bool> stopping_{false};
  std::thread listener_;
  int port_ = 6379;
  std::string replica_;
  std::atomic<bool> up_{false};
  std::atomic<std::int64_t> replicas_{1};
  std::mutex pool_mutex_;
  std::vector<context_ptr> pool_;
  std::mutex ops_mutex_;
  std::condition_variable wake_;
  std::deque<op> ops_;
  bool stop_ = false;
  std::mutex track_mutex_;
  std::unordered_map<std::string, tracked_key> tracked_;
  std::thread thread_;
};

std::shared_ptr<redis_link> make_redis_link(const std::string& url, ejection_handler on_ejection) {
  return std::make_shared<redis_link>(url, std::move(on_ejection));
}

void announce_ejection(redis_link& link, const std::string& backend, std::chrono::milliseconds cooldown) {
  link.announce(backend, cooldown);
}

redis_limiter::redis_limiter(std::shared_ptr<redis_link> link, config::limits_config cfg)
    : link_(std::move(link)), cfg_(std::move(cfg)) {}

config::key_config redis_limiter::local_share(const config::key_config& key) const {
  const auto n = static_cast<unsigned>(cfg_.replicas != 0 ? cfg_.replicas : std::max<std::int64_t>(link_->replicas(), 1));
  auto share = [&](unsigned v) { return v == 0 ? 0u : std::max(1u, (v + n - 1) / n); };
  config::key_config k = key;
  k.rpm = share(key.rpm);
  k.tpm = share(key.tpm);
  k.max_concurrency = share(key.max_concurrency);
  // The budget is a total, counted as spend; each replica keeps counting its own part of it.
  return k;
}

admission redis_limiter::admit(const config::key_config& key, key_state& st, std::int64_t tokens, steady_time now) {
  const bool limited = key.rpm != 0 || key.tpm != 0 || key.max_concurrency != 0 || key.budget > 0;
  if (!limited) return {};
  if (!link_->up()) {
    if (cfg_.on_redis_down == "reject") {
      link_->rejected_.fetch_add(1, std::memory_order_relaxed);
      return {false, "limits_unavailable",
              "This key's limits are shared through Redis, which does not answer; try again shortly.",
              std::chrono::seconds(1), 503};
    }
    const auto share = local_share(key);
    admission a = fallback_.admit(share, st, tokens, now);
    if (a.admitted) {
      link_->fallback_admits_.fetch_add(1, std::memory_order_relaxed);
      std::lock_guard lock(st.mutex);
      ++st.fallback_in_flight;
    }
    return a;
  }
  bool first = false;
  {
    std::lock_guard lock(st.mutex);
    first = !st.redis_tracked;
    st.redis_tracked = true;
  }
  if (first) link_->track(key, st);  // the background thread's list: lease give-back, spend
  if (auto left = budget_left(key, st, unix_ms()); left && *left <= 0) {
    std::int64_t end = 0;
    double spent = 0;
    {
      std::lock_guard lock(st.mutex);
      end = st.period_end_ms;
      spent = st.spent;
    }
    const auto wait = std::chrono::seconds((end - unix_ms() + 999) / 1000);
    return {false, "insufficient_quota",
            "You exceeded this key's budget of " + format_amount(key.budget) + " per " + key.budget_period +
                " (spent " + format_money(spent) + "). It renews at the start of the next " + key.budget_period +
                " (UTC).",
            std::max(wait, std::chrono::seconds(1))};
  }
  if (key.rpm == 0 && key.tpm == 0 && key.max_concurrency == 0) {  // a budget alone: checked above
    st.in_flight.fetch_add(1);
    link_->local_admits_.fetch_add(1, std::memory_order_relaxed);
    return {};
  }
  const double need_tokens = std::min<double>(static_cast<double>(tokens), key.tpm);
  {
    // The lease covers it (and, with max_concurrency, a slot an earlier request left): admitted
    // here, no round trip.
    std::lock_guard lock(st.mutex);
    const bool rpm_ok = key.rpm == 0 || st.lease_requests >= 1;
    const bool tpm_ok = key.tpm == 0 || st.lease_tokens >= need_tokens;
    const bool slot_ok = key.max_concurrency == 0 || st.held_slots > 0;
    if (rpm_ok && tpm_ok && slot_ok && (key.rpm != 0 || key.tpm != 0 || key.max_concurrency != 0)) {
      if (key.rpm != 0) st.lease_requests -= 1;
      if (key.tpm != 0) st.lease_tokens -= need_tokens;
      if (key.max_concurrency != 0) {
        --st.held_slots;
        ++st.redis_slots;
      }
      st.lease_used = now;
      st.in_flight.fetch_add(1);
      link_->local_admits_.fetch_add(1, std::memory_order_relaxed);
      return {};
    }
  }
  double need_r = 0, need_t = 0;
  {
    std::lock_guard lock(st.mutex);
    need_r = key.rpm != 0 ? std::max(0.0, 1 - st.lease_requests) : 0;
    need_t = key.tpm != 0 ? std::max(0.0, need_tokens - st.lease_tokens) : 0;
  }
  need_r = std::ceil(need_r);
  // A lease of about a second's refill: at most that much is ever stranded on one replica.
  const double want_r = std::max(need_r, std::floor(key.rpm / 60.0));
  const double want_t = std::max(need_t, key.tpm / 60.0);
  link_->track(key, st);  // its limits as this config has them
  const auto live_after = unix_ms() - 3000;
  reply_ptr r = link_->call({"EVAL", take_lua, "3", bucket_key(key.name), slots_key(key.name), replicas_key,
                             std::to_string(key.rpm), std::to_string(key.tpm), num(need_r), num(need_t), num(want_r),
                             num(want_t), std::to_string(key.max_concurrency), link_->replica(),
                             std::to_string(live_after)});
  if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 5) {
    if (r && r->type == REDIS_REPLY_ERROR) {
      std::cerr << "tollgate: limits: Redis refused the script: " << std::string(r->str, r->len) << std::endl;
    }
    return admit(key, st, tokens, now);  // Redis is marked down now: on_redis_down decides
  }
  const bool ok = r->element[0]->integer == 1;
  if (!ok) {
    const std::string which = reply_text(r->element[1]);
    const auto wait_ms = std::atoll(reply_text(r->element[2]).c_str());
    const auto wait = std::max(std::chrono::seconds((wait_ms + 999) / 1000), std::chrono::seconds(1));
    if (which == "conc") {
      return {false, "rate_limit_exceeded",
              "Too many concurrent requests for this key (max_concurrency " + std::to_string(key.max_concurrency) + ").",
              wait};
    }
    if (which == "rpm") {
      return {false, "rate_limit_exceeded",
              "Rate limit reached for requests per minute (rpm " + std::to_string(key.rpm) + ").", wait};
    }
    return {false, "rate_limit_exceeded",
            "Rate limit reached for tokens per minute (tpm " + std::to_string(key.tpm) + ").", wait};
  }
  std::lock_guard lock(st.mutex);
  st.lease_requests += std::atof(reply_text(r->element[3]).c_str());
  st.lease_tokens += std::atof(reply_text(r->element[4]).c_str());
  if (key.rpm != 0) st.lease_requests -= 1;
  if (key.tpm != 0) st.lease_tokens -= need_tokens;
  st.lease_used = now;
  if (key.max_concurrency != 0) ++st.redis_slots;
  st.in_flight.fetch_add(1);
  return {};
}

void redis_limiter::finish(const config::key_config& key, key_state& st, std::int64_t estimated, std::int64_t actual,
                           double cost) {
  const bool limited = key.rpm != 0 || key.tpm != 0 || key.max_concurrency != 0 || key.budget > 0;
  if (!limited) return;
  bool fallback = false;
  bool release = false;
  std::int64_t period = 0;
  double seed = 0;
  {
    std::lock_guard lock(st.mutex);
    if (st.fallback_in_flight > 0) {
      --st.fallback_in_flight;
      fallback = true;
    } else {
      if (key.tpm != 0 && actual >= 0) {
        // The difference from the estimate comes out of (or back into) the lease; a lease in
        // debt is paid from the next one, or by the give-back.
        st.lease_tokens -= static_cast<double>(actual) - std::min<double>(static_cast<double>(estimated), key.tpm);
      }
      if (key.max_concurrency != 0 && st.redis_slots > 0) {
        --st.redis_slots;
        // Kept for the next request, up to this replica's fair share of the key's slots (so that
        // a busy replica never keeps the others out); past it, given back now.
        const std::int64_t share =
            static_cast<std::int64_t>(key.max_concurrency) / std::max<std::int64_t>(link_->replicas(), 1);
        if (st.held_slots < share) {
          ++st.held_slots;
          st.held_used = std::chrono::steady_clock::now();
        } else {
          release = true;
        }
      }
    }
    period = st.period_start_ms;
    seed = st.spent;
  }
  if (fallback) {
    fallback_.finish(local_share(key), st, estimated, actual, cost);
  } else {
    st.in_flight.fetch_sub(1);
    if (key.budget > 0 && cost > 0) {
      std::lock_guard lock(st.mutex);
      st.spent += cost;
    }
  }
  if (release) link_->post({"HINCRBY", slots_key(key.name), link_->replica(), "-1"});
  if (key.budget > 0 && cost > 0 && period != 0) {
    // The period's total, seeded with what the ledger held when this replica started it.
    const auto [start, end] = budget_period_bounds(key.budget_period, period);
    key_state* state = &st;
    link_->post({"EVAL", spend_lua, "1", spend_key(key.name, period), num(seed), num(cost),
                 std::to_string(end - unix_ms() + 86'400'000)},
                [state, period](const redisReply* r) {
                  if (r == nullptr || r->type != REDIS_REPLY_STRING) return;
                  const double total = std::atof(std::string(r->str, r->len).c_str());
                  std::lock_guard lock(state->mutex);
                  if (state->period_start_ms == period) state->spent = std::max(state->spent, total);
                });
    (void)start;
  }
}

std::optional<limiter::shared_status> redis_limiter::shared() const {
  return shared_status{link_->up(), cfg_.on_redis_down, link_->replicas()};
}

void redis_limiter::append_metrics(std::string& out) const {
  out += "# HELP tollgate_limits_redis_up Whether Redis, where per-key limits are shared, answers (1) or not (0).\n";
  out += "# TYPE tollgate_limits_redis_up gauge\n";
  out += "tollgate_limits_redis_up " + std::string(link_->up() ? "1" : "0") + "\n";
  out += "# HELP tollgate_limits_replicas Replicas seen sharing the limits in Redis.\n";
  out += "# TYPE tollgate_limits_replicas gauge\n";
  out += "tollgate_limits_replicas " + std::to_string(link_->replicas()) + "\n";
  out += "# HELP tollgate_limits_admissions_total Admissions of limited keys, by how they were decided.\n";
  out += "# TYPE tollgate_limits_admissions_total counter\n";
  out += "tollgate_limits_admissions_total{via=\"lease\"} " + std::to_string(link_->local_admits_.load()) + "\n";
  out += "tollgate_limits_admissions_total{via=\"local_share\"} " + std::to_string(link_->fallback_admits_.load()) + "\n";
  out += "# HELP tollgate_limits_redis_round_trips_total Requests that asked Redis while being admitted.\n";
  out += "# TYPE tollgate_limits_redis_round_trips_total counter\n";
  out += "tollgate_limits_redis_round_trips_total " + std::to_string(link_->round_trips_.load()) + "\n";
  out += "# HELP tollgate_limits_redis_rejected_total Requests answered 503 because Redis did not answer.\n";
  out += "# TYPE tollgate_limits_redis_rejected_total counter\n";
  out += "tollgate_limits_redis_rejected_total " + std::to_string(link_->rejected_.load()) + "\n";
  out += "# HELP tollgate_shared_ejections_heard_total Backend ejections heard from other replicas.\n";
  out += "# TYPE tollgate_shared_ejections_heard_total counter\n";
  out += "tollgate_shared_ejections_heard_total " + std::to_string(link_->heard_ejections_.load()) + "\n";
}

}  // namespace tollgate::gateway
