#include "gateway/ledger.hpp"

#include <sqlite3.h>

#include <chrono>
#include <iostream>
#include <stdexcept>

namespace tollgate::gateway {

namespace {

constexpr const char* schema_text = R"sql(
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS usage_ledger (
  request_id TEXT NOT NULL,
  unix_ms INTEGER NOT NULL,
  key TEXT NOT NULL,
  model TEXT NOT NULL,
  route TEXT NOT NULL,
  backend TEXT NOT NULL,
  upstream_model TEXT NOT NULL,
  prompt_tokens INTEGER,
  cached_tokens INTEGER,
  completion_tokens INTEGER,
  reasoning_tokens INTEGER,
  cost REAL,
  status INTEGER NOT NULL,
  latency_ms REAL NOT NULL,
  first_byte_ms REAL,
  stream INTEGER NOT NULL,
  usage_source TEXT,
  first_token_ms REAL
);
CREATE INDEX IF NOT EXISTS usage_ledger_time ON usage_ledger (unix_ms);
CREATE INDEX IF NOT EXISTS usage_ledger_key_time ON usage_ledger (key, unix_ms);
)sql";

}  // namespace

const char* ledger_schema_sql() { return schema_text; }

namespace {
const std::string source_upstream = "upstream";  // usage as the upstream reported it
const std::string source_counted = "counted";    // counted by the gateway's tokenizer
}  // namespace

namespace {

constexpr const char* insert_sql =
    "INSERT INTO usage_ledger (request_id, unix_ms, key, model, route, backend, upstream_model, prompt_tokens, "
    "cached_tokens, completion_tokens, reasoning_tokens, cost, status, latency_ms, first_byte_ms, stream, "
    "usage_source, first_token_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

}  // namespace

usage_ledger::usage_ledger(const std::string& path, std::size_t shards, std::chrono::milliseconds busy_timeout,
                           std::chrono::milliseconds flush_interval)
    : flush_interval_(flush_interval) {
  if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK) {
    const std::string why = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    throw std::runtime_error("cannot open " + path + ": " + why);
  }
  sqlite3_busy_timeout(db_, static_cast<int>(busy_timeout.count()));
  char* error = nullptr;
  if (sqlite3_exec(db_, schema_text, nullptr, nullptr, &error) != SQLITE_OK) {
    const std::string why = error != nullptr ? error : "unknown error";
    sqlite3_free(error);
    sqlite3_close(db_);
    throw std::runtime_error("cannot prepare the ledger in " + path + ": " + why);
  }
  // Ledgers written before these columns existed get them; "duplicate column" means it is done.
  for (const char* alter : {"ALTER TABLE usage_ledger ADD COLUMN usage_source TEXT",
                            "ALTER TABLE usage_ledger ADD COLUMN first_token_ms REAL"}) {
    sqlite3_exec(db_, alter, nullptr, nullptr, nullptr);
  }
  for (std::size_t i = 0; i < std::max<std::size_t>(shards, 1); ++i) shards_.push_back(std::make_unique<shard_buffer>());
  thread_ = std::thread([this] { run(); });
}

usage_ledger::~usage_ledger() {
  {
    std::lock_guard lock(wake_mutex_);
    stop_ = true;
  }
  wake_.notify_one();
  thread_.join();
  flush();
  sqlite3_close(db_);
}

void usage_ledger::append(std::size_t shard, ledger_record record) {
  auto& buffer = *shards_[shard % shards_.size()];
  {
    std::lock_guard lock(buffer.mutex);
    buffer.records.push_back(std::move(record));
  }
  if (flush_interval_.count() == 0) flush();
}

void usage_ledger::flush() {
  std::lock_guard writing(write_mutex_);
  // Records the database refused last time (busy past the timeout, disk full) go first, so none
  // is lost while the database recovers; past a bound the oldest are dropped, and said so.
  std::vector<ledger_record> batch = std::move(unwritten_);
  unwritten_.clear();
  for (auto& shard : shards_) {
    std::lock_guard lock(shard->mutex);
    for (auto& r : shard->records) batch.push_back(std::move(r));
    shard->records.clear();
  }
  if (batch.empty() || write(batch)) return;
  constexpr std::size_t max_unwritten = 1'000'000;
  if (batch.size() > max_unwritten) {
    const std::size_t dropped = batch.size() - max_unwritten;
    std::cerr << "tollgate: ledger: the database refused writes for too long; " << dropped
              << " oldest records dropped" << std::endl;
    batch.erase(batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(dropped));
  }
  unwritten_ = std::move(batch);
}

std::size_t usage_ledger::unwritten() const {
  std::lock_guard writing(write_mutex_);
  return unwritten_.size();
}

void usage_ledger::run() {
  std::unique_lock lock(wake_mutex_);
  while (!stop_) {
    // With synchronous appends the thread only retries what the database refused.
    wake_.wait_for(lock, flush_interval_.count() > 0 ? flush_interval_ : std::chrono::milliseconds(1000));
    lock.unlock();
    flush();
    lock.lock();
  }
}

bool usage_ledger::write(const std::vector<ledger_record>& batch) {
  sqlite3_stmt* insert = nullptr;
  if (sqlite3_prepare_v2(db_, insert_sql, -1, &insert, nullptr) != SQLITE_OK ||
      sqlite3_exec(db_, "BEGIN", nullptr, nullptr, nullptr) != SQLITE_OK) {
    std::cerr << "tollgate: ledger: " << sqlite3_errmsg(db_) << "; " << batch.size() << " records kept for the next try"
              << std::endl;
    sqlite3_finalize(insert);
    return false;
  }
  bool ok = true;
  for (const auto& r : batch) {
    int i = 0;
    auto text = [&](const std::string& v) { sqlite3_bind_text(insert, ++i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC); };
    text(r.request_id);
    sqlite3_bind_int64(insert, ++i, r.unix_ms);
    text(r.key);
    text(r.model);
    text(r.route);
    text(r.backend);
    text(r.upstream_model);
    for (std::int64_t v : {r.prompt_tokens, r.cached_tokens, r.completion_tokens, r.reasoning_tokens}) {
      if (r.has_usage) sqlite3_bind_int64(insert, ++i, v);
      else sqlite3_bind_null(insert, ++i);
    }
    if (r.has_usage) sqlite3_bind_double(insert, ++i, r.cost);
    else sqlite3_bind_null(insert, ++i);
    sqlite3_bind_int(insert, ++i, r.status);
    sqlite3_bind_double(insert, ++i, r.latency_ms);
    if (r.first_byte_ms >= 0) sqlite3_bind_double(insert, ++i, r.first_byte_ms);
    else sqlite3_bind_null(insert, ++i);
    sqlite3_bind_int(insert, ++i, r.stream ? 1 : 0);
    if (r.has_usage) text(r.counted ? source_counted : source_upstream);
    else sqlite3_bind_null(insert, ++i);
    if (r.first_token_ms >= 0) sqlite3_bind_double(insert, ++i, r.first_token_ms);
    else sqlite3_bind_null(insert, ++i);
    if (sqlite3_step(insert) != SQLITE_DONE) {
      ok = false;
      break;
    }
    sqlite3_reset(insert);
  }
  if (ok && sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) ok = false;
  if (!ok) {
    std::cerr << "tollgate: ledger: " << sqlite3_errmsg(db_) << "; " << batch.size() << " records kept for the next try"
              << std::endl;
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  sqlite3_finalize(insert);
  return ok;
}

}  // namespace tollgate::gateway
