#include "gateway/limits/redis_link.hpp"

#include <hiredis/hiredis.h>
#include <openssl/rand.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "gateway/keys/store.hpp"

namespace tollgate::gateway {

namespace redis {

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

}  // namespace

const std::string take_lua = std::string(refill_lua) + R"lua(
local need_r, need_t = tonumber(ARGV[3]), tonumber(ARGV[4])
local want_r, want_t = tonumber(ARGV[5]), tonumber(ARGV[6])
local maxc, rep, live_after = tonumber(ARGV[7]), ARGV[8], now - tonumber(ARGV[9])
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

const std::string give_lua = std::string(refill_lua) + R"lua(
r = math.min(rpm, r + tonumber(ARGV[3]))
tk = math.min(tpm, tk + tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'r', tostring(r), 't', tostring(tk), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 120000)
return 1
)lua";

const char* const beat_lua = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[2]), '+inf')
)lua";

const char* const spend_lua = R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[1]) end
local v = redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return v
)lua";

void reply_deleter::operator()(redisReply* r) const { freeReplyObject(r); }
void context_deleter::operator()(redisContext* c) const { redisFree(c); }

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::string bucket_key(const std::string& name) { return "tollgate:{" + name + "}:bucket"; }
std::string slots_key(const std::string& name) { return "tollgate:{" + name + "}:slots"; }
std::string spend_key(const std::string& name, std::int64_t period_start) {
  return "tollgate:{" + name + "}:spend:" + std::to_string(period_start);
}

std::string reply_text(const redisReply* r) {
  if (r == nullptr) return "";
  if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) return std::string(r->str, r->len);
  if (r->type == REDIS_REPLY_INTEGER) return std::to_string(r->integer);
  return "";
}

}  // namespace redis

namespace {

// A concurrency slot a finished request left is kept this long for the next one (no round trip),
// then given back to Redis for the other replicas.
constexpr auto held_slot_idle = std::chrono::milliseconds(50);
constexpr const char* ejections_channel = "tollgate:ejections";

}  // namespace

using redis::beat_lua;
using redis::bucket_key;
using redis::context_ptr;
using redis::give_lua;
using redis::live_window_ms;
using redis::num;
using redis::replicas_key;
using redis::reply_ptr;
using redis::reply_text;
using redis::slots_key;
using redis::spend_key;
using redis::unix_ms;

redis_link::redis_link(const std::string& url, ejection_handler on_ejection) : url_(url), on_ejection_(std::move(on_ejection)) {
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

redis_link::~redis_link() {
  {
    std::lock_guard lock(ops_mutex_);
    stop_ = true;
  }
  stopping_ = true;
  wake_.notify_one();
  thread_.join();
  listener_.join();
}

void redis_link::announce(const std::string& backend, std::chrono::milliseconds cooldown) {
  post({"PUBLISH", ejections_channel, replica_ + " " + std::to_string(cooldown.count()) + " " + backend});
}

redis::reply_ptr redis_link::call(const std::vector<std::string>& argv) {
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

void redis_link::post(std::vector<std::string> argv, std::function<void(const redisReply*)> done) {
  std::lock_guard lock(ops_mutex_);
  // Past a bound (a long outage), the oldest are dropped: the limits heal from the buckets'
  // refill and the spend from the ledger at the next period.
  if (ops_.size() >= 100000) ops_.pop_front();
  ops_.push_back({std::move(argv), std::move(done)});
  wake_.notify_one();
}

void redis_link::track(const config::key_config& key, key_state& st) {
  std::lock_guard lock(track_mutex_);
  auto& t = tracked_[key.name];
  t.state = &st;
  t.key = key;
}

redis::context_ptr redis_link::connect() {
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

redis::reply_ptr redis_link::command(redisContext& c, const std::vector<std::string>& argv) {
  std::vector<const char*> args;
  std::vector<size_t> lens;
  for (const auto& a : argv) {
    args.push_back(a.data());
    lens.push_back(a.size());
  }
  return reply_ptr(static_cast<redisReply*>(
      redisCommandArgv(&c, static_cast<int>(args.size()), args.data(), lens.data())));
}

redis::context_ptr redis_link::take() {
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

void redis_link::give_back(redis::context_ptr c) {
  std::lock_guard lock(pool_mutex_);
  if (pool_.size() < 64) pool_.push_back(std::move(c));
}

void redis_link::mark_down(const std::string& why) {
  errors_.fetch_add(1, std::memory_order_relaxed);
  if (up_.exchange(false)) {
    std::cerr << "tollgate: limits: Redis at " << host_ << ":" << port_ << " stopped answering (" << why
              << "); limits follow limits.on_redis_down until it is back" << std::endl;
    std::lock_guard lock(pool_mutex_);
    pool_.clear();
  }
}

void redis_link::heartbeat(redisContext& c) {
  if (reply_ptr n = command(c, {"EVAL", beat_lua, "1", replicas_key, replica_, std::to_string(live_window_ms)});
      n && n->type == REDIS_REPLY_INTEGER) {
    replicas_ = std::max<long long>(n->integer, 1);
  }
}

void redis_link::run() {
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

void redis_link::listen() {
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

bool redis_link::drain(redisContext& c) {
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

bool redis_link::give_back_idle_leases(redisContext& c) {
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

bool redis_link::read_spend(redisContext& c) {
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

std::shared_ptr<redis_link> make_redis_link(const std::string& url, ejection_handler on_ejection) {
  return std::make_shared<redis_link>(url, std::move(on_ejection));
}

void announce_ejection(redis_link& link, const std::string& backend, std::chrono::milliseconds cooldown) {
  link.announce(backend, cooldown);
}

}  // namespace tollgate::gateway
