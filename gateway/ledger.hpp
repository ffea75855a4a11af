// The usage ledger: one record per proxied request, in SQLite (WAL). Workers append to their own
// shard; a writer thread of its own inserts them in batches, one transaction each, so no request
// waits on the disk. Everything appended before shutdown is written.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

struct sqlite3;

namespace tollgate::gateway {

struct ledger_record {
  std::string request_id;
  std::int64_t unix_ms = 0;
  std::string key;             ///< key name
  std::string model;           ///< the public name the client sent
  std::string route;           ///< the route as configured
  std::string backend;         ///< that served it ("" when none did)
  std::string upstream_model;  ///< the name sent to that backend
  std::int64_t prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0, reasoning_tokens = 0;
  bool has_usage = false;
  double cost = 0;
  int status = 0;
  double latency_ms = 0;
  double first_byte_ms = -1;  ///< of the attempt that answered; -1: none
  bool stream = false;
  bool counted = false;         ///< tokens counted by the gateway: the upstream reported none
  double first_token_ms = -1;   ///< first stream bytes to the client; -1: not a stream
};

/// The ledger's table and indexes (idempotent SQL), for anything that opens the same database.
const char* ledger_schema_sql();

class usage_ledger {
 public:
  /// Opens (creating) the database and its table. Throws std::runtime_error when it cannot.
  /// busy_timeout: how long a write waits for another process's lock before it is put off.
  /// flush_interval: how often the writer thread commits; 0: append() commits each record itself
  /// before it returns (durable against a killed process, at one transaction per request on the
  /// caller's thread).
  usage_ledger(const std::string& path, std::size_t shards,
               std::chrono::milliseconds busy_timeout = std::chrono::seconds(5),
               std::chrono::milliseconds flush_interval = std::chrono::milliseconds(200));
  ~usage_ledger();  ///< writes everything appended, then closes
  usage_ledger(const usage_ledger&) = delete;
  usage_ledger& operator=(const usage_ledger&) = delete;

  /// Thread-safe; shard is the caller's worker index. With a flush_interval of 0 the record is
  /// committed (or, when the database refuses, kept for the next try) when this returns.
  void append(std::size_t shard, ledger_record record);
  /// Writes everything appended so far; returns when it is on disk, or, when the database refuses
  /// the write (locked past the timeout, full), keeps it for the next flush.
  void flush();
  /// Records put off by a refused write.
  std::size_t unwritten() const;

 private:
  struct shard_buffer {
    std::mutex mutex;
    std::vector<ledger_record> records;
  };
  void run();
  /// Inserts the batch in one transaction. false (rolled back) when the database refused it.
  bool write(const std::vector<ledger_record>& batch);
  std::vector<ledger_record> unwritten_;  // a batch the database refused, tried again first

  sqlite3* db_ = nullptr;
  std::vector<std::unique_ptr<shard_buffer>> shards_;
  mutable std::mutex write_mutex_;  // one writer at a time: the thread or a flush()
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::chrono::milliseconds flush_interval_;
  std::thread thread_;
};

}  // namespace tollgate::gateway
