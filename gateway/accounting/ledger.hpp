// The usage ledger: one record per proxied request, in SQLite (WAL) or PostgreSQL. Workers append
// to their own shard; a writer thread of its own inserts them in batches, one transaction each,
// so no request waits on the disk or the network. Everything appended before shutdown is written.
// With a spool folder (PostgreSQL), a batch the database refuses goes to a file on local disk and
// is written, ahead of newer records, once the database answers again.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace tollgate::gateway {

struct ledger_record {
  std::string record_id;   ///< unique per record (set by append when empty): replays stay idempotent
  std::string request_id;
  std::int64_t unix_ms = 0;
  std::string key;             ///< key name
  std::string model;           ///< the public name the client sent
  std::string route;           ///< the route as configured
  std::string backend;         ///< that served it ("" when none did)
  std::string upstream_model;  ///< the name sent to that backend
  std::int64_t prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0, reasoning_tokens = 0;
  std::int64_t cache_write_tokens = 0;  ///< prompt tokens written to the provider's cache (in prompt_tokens)
  bool has_usage = false;
  double cost = 0;
  int status = 0;
  double latency_ms = 0;
  double first_byte_ms = -1;  ///< of the attempt that answered; -1: none
  bool stream = false;
  bool counted = false;         ///< tokens counted by the gateway: the upstream reported none
  bool estimated = false;       ///< counted, but partly estimated (past metering.max_count_bytes)
  double first_token_ms = -1;   ///< first stream bytes to the client; -1: not a stream
  int priority = -1;            ///< the request's priority (0 low .. 9); -1: none (stored as NULL)
};

/// Where batches of records go: one database. Called from one thread at a time.
class ledger_sink {
 public:
  virtual ~ledger_sink() = default;
  /// Inserts the batch in one transaction; false (nothing written) when the database refused it.
  /// A batch written twice (a commit whose answer was lost) must be kept once.
  virtual bool write(const std::vector<ledger_record>& batch) = 0;
};

class ledger_spool;

/// Records a spool file is written back in at most, each its own database write: a long outage's
/// spool is neither read into memory whole nor committed as one transaction. A replay cut short
/// keeps its file; the database keeps each record id once, so writing it again is safe.
inline constexpr std::size_t spool_replay_chunk = 10'000;

class usage_ledger {
 public:
  /// sink: the database. spool_dir: where refused batches wait on local disk (created when
  /// missing); empty: in memory, bounded. Throws std::runtime_error when the folder is unusable.
  usage_ledger(std::unique_ptr<ledger_sink> sink, std::size_t shards, std::chrono::milliseconds flush_interval,
               const std::string& spool_dir);
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
  /// Records put off by a refused write (in memory or in the spool).
  std::size_t unwritten() const;

 private:
  struct shard_buffer {
    std::mutex mutex;
    std::vector<ledger_record> records;
  };
  void run();
  void flush_to_spool(std::vector<ledger_record> batch);
  std::vector<ledger_record> unwritten_;  // a batch the database refused, tried again first

  std::string id_prefix_;  // random per process: record ids stay unique across replicas
  std::atomic<std::uint64_t> next_id_{0};
  std::unique_ptr<ledger_sink> sink_;
  std::unique_ptr<ledger_spool> spool_;
  std::vector<std::unique_ptr<shard_buffer>> shards_;
  mutable std::mutex write_mutex_;  // one writer at a time: the thread or a flush()
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::chrono::milliseconds flush_interval_;
  std::thread thread_;
};

}  // namespace tollgate::gateway
