#include "gateway/accounting/ledger.hpp"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <stdexcept>

#include "gateway/keys/migrations.hpp"
#include "gateway/keys/store.hpp"

namespace tollgate::gateway {

namespace {

const std::string source_upstream = "upstream";  // usage as the upstream reported it
const std::string source_counted = "counted";    // counted by the gateway's tokenizer
const std::string source_estimated = "estimated";  // counted in part, the rest estimated at its rate

constexpr const char* insert_sql =
    "INSERT INTO usage_ledger (request_id, unix_ms, key, model, route, backend, upstream_model, prompt_tokens, "
    "cached_tokens, completion_tokens, reasoning_tokens, cost, status, latency_ms, first_byte_ms, stream, "
    "usage_source, first_token_ms, priority, cache_write_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?, ?)";

class sqlite_sink final : public ledger_sink {
 public:
  sqlite_sink(const std::string& path, std::chrono::milliseconds busy_timeout) {
    if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK) {
      const std::string why = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      throw std::runtime_error("cannot open " + path + ": " + why);
    }
    sqlite3_busy_timeout(db_, static_cast<int>(busy_timeout.count()));
    try {
      migrate_sqlite(db_, path);
    } catch (const store_error& e) {
      sqlite3_close(db_);
      throw std::runtime_error(std::string("cannot prepare the ledger: ") + e.what());
    }
  }
  ~sqlite_sink() override { sqlite3_close(db_); }

  bool write(const std::vector<ledger_record>& batch) override {
    sqlite3_stmt* insert = nullptr;
    if (sqlite3_prepare_v2(db_, insert_sql, -1, &insert, nullptr) != SQLITE_OK ||
        sqlite3_exec(db_, "BEGIN", nullptr, nullptr, nullptr) != SQLITE_OK) {
      std::cerr << "tollgate: ledger: " << sqlite3_errmsg(db_) << "; " << batch.size()
                << " records kept for the next try" << std::endl;
      sqlite3_finalize(insert);
      return false;
    }
    bool ok = true;
    for (const auto& r : batch) {
      int i = 0;
      auto text = [&](const std::string& v) {
        sqlite3_bind_text(insert, ++i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
      };
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
      if (r.has_usage) text(r.estimated ? source_estimated : r.counted ? source_counted : source_upstream);
      else sqlite3_bind_null(insert, ++i);
      if (r.first_token_ms >= 0) sqlite3_bind_double(insert, ++i, r.first_token_ms);
      else sqlite3_bind_null(insert, ++i);
      if (r.priority >= 0) sqlite3_bind_int(insert, ++i, r.priority);
      else sqlite3_bind_null(insert, ++i);
      if (r.has_usage) sqlite3_bind_int64(insert, ++i, r.cache_write_tokens);
      else sqlite3_bind_null(insert, ++i);
      if (sqlite3_step(insert) != SQLITE_DONE) {
        ok = false;
        break;
      }
      sqlite3_reset(insert);
    }
    if (ok && sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) ok = false;
    if (!ok) {
      std::cerr << "tollgate: ledger: " << sqlite3_errmsg(db_) << "; " << batch.size()
                << " records kept for the next try" << std::endl;
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    sqlite3_finalize(insert);
    return ok;
  }

 private:
  sqlite3* db_ = nullptr;
};

std::string random_hex(std::size_t bytes) {
  std::string raw(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(bytes)) != 1) {
    throw std::runtime_error("the system's random source failed");
  }
  return to_hex(raw);
}

nlohmann::json to_json(const ledger_record& r) {
  return {{"id", r.record_id},         {"rq", r.request_id},       {"ms", r.unix_ms},
          {"k", r.key},                {"m", r.model},             {"r", r.route},
          {"b", r.backend},            {"um", r.upstream_model},   {"pt", r.prompt_tokens},
          {"ct", r.cached_tokens},     {"ot", r.completion_tokens}, {"rt", r.reasoning_tokens},
          {"u", r.has_usage},          {"c", r.cost},              {"s", r.status},
          {"l", r.latency_ms},         {"fb", r.first_byte_ms},    {"st", r.stream},
          {"n", r.counted},            {"ft", r.first_token_ms},   {"e", r.estimated},
          {"p", r.priority},           {"cw", r.cache_write_tokens}};
}

ledger_record from_json(const nlohmann::json& j) {
  ledger_record r;
  r.record_id = j.at("id").get<std::string>();
  r.request_id = j.at("rq").get<std::string>();
  r.unix_ms = j.at("ms").get<std::int64_t>();
  r.key = j.at("k").get<std::string>();
  r.model = j.at("m").get<std::string>();
  r.route = j.at("r").get<std::string>();
  r.backend = j.at("b").get<std::string>();
  r.upstream_model = j.at("um").get<std::string>();
  r.prompt_tokens = j.at("pt").get<std::int64_t>();
  r.cached_tokens = j.at("ct").get<std::int64_t>();
  r.completion_tokens = j.at("ot").get<std::int64_t>();
  r.reasoning_tokens = j.at("rt").get<std::int64_t>();
  r.has_usage = j.at("u").get<bool>();
  r.cost = j.at("c").get<double>();
  r.status = j.at("s").get<int>();
  r.latency_ms = j.at("l").get<double>();
  r.first_byte_ms = j.at("fb").get<double>();
  r.stream = j.at("st").get<bool>();
  r.counted = j.at("n").get<bool>();
  r.estimated = j.value("e", false);  // absent in records spooled by older versions
  r.priority = j.value("p", -1);
  r.cache_write_tokens = j.value("cw", std::int64_t{0});  // absent in records spooled by older versions
  r.first_token_ms = j.at("ft").get<double>();
  return r;
}

/// Reads every whole line of a spool file; a torn last line (a crash mid-write) is skipped.
/// Writes a spool file's records through sink, spool_replay_chunk at a time, as it reads them.
/// The records written, or nullopt when a write was refused (those before it stay written).
std::optional<std::size_t> write_spool_file(const std::filesystem::path& path, ledger_sink& sink) {
  std::vector<ledger_record> chunk;
  std::size_t written = 0;
  const auto put = [&] {
    if (chunk.empty()) return true;
    if (!sink.write(chunk)) return false;
    written += chunk.size();
    chunk.clear();
    return true;
  };
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      chunk.push_back(from_json(nlohmann::json::parse(line)));
    } catch (const std::exception& e) {
      std::cerr << "tollgate: ledger spool " << path.string() << ": a damaged line skipped (" << e.what() << ")"
                << std::endl;
    }
    if (chunk.size() == spool_replay_chunk && !put()) return std::nullopt;
  }
  if (!put()) return std::nullopt;
  return written;
}

}  // namespace

/// Records waiting on local disk for the database: one file per process, held with an exclusive
/// flock while the process lives, so a file whose lock can be taken was left by a process that
/// ended before the database came back; this one adopts and writes it.
class ledger_spool {
 public:
  explicit ledger_spool(const std::string& dir) : dir_(dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec) throw std::runtime_error("ledger spool " + dir + ": " + ec.message());
    path_ = dir_ / ("ledger-" + std::to_string(::getpid()) + "-" + random_hex(6) + ".jsonl");
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd_ < 0) throw std::runtime_error("ledger spool " + path_.string() + ": " + std::strerror(errno));
    ::flock(fd_, LOCK_EX);
  }
  ~ledger_spool() {
    ::close(fd_);
    if (count_ == 0) {
      std::error_code ec;
      std::filesystem::remove(path_, ec);
    }
  }

  std::size_t size() const { return count_.load(); }

  /// Appends the records and syncs the file; false when the disk refused.
  bool append(const std::vector<ledger_record>& batch) {
    std::string text;
    for (const auto& r : batch) text += to_json(r).dump() + "\n";
    std::size_t done = 0;
    while (done < text.size()) {
      const ssize_t n = ::write(fd_, text.data() + done, text.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::cerr << "tollgate: ledger spool " << path_.string() << ": " << std::strerror(errno) << std::endl;
        return false;
      }
      done += static_cast<std::size_t>(n);
    }
    ::fdatasync(fd_);
    count_ += batch.size();
    return true;
  }

  /// Writes this process's spooled records through sink (write_spool_file); nullopt when refused.
  std::optional<std::size_t> write_to(ledger_sink& sink) const {
    return count_ == 0 ? std::optional<std::size_t>(0) : write_spool_file(path_, sink);
  }

  /// Empties this process's file once its records are in the database.
  void clear() {
    if (::ftruncate(fd_, 0) != 0) std::cerr << "tollgate: ledger spool: " << std::strerror(errno) << std::endl;
    ::fdatasync(fd_);
    count_ = 0;
  }

  /// Writes the files other processes left behind (their lock is free) through sink, and
  /// removes each one written.
  void adopt_orphans(ledger_sink& sink) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
      const auto& p = entry.path();
      if (p == path_ || p.extension() != ".jsonl" || p.filename().string().rfind("ledger-", 0) != 0) continue;
      const int fd = ::open(p.c_str(), O_RDWR | O_CLOEXEC);
      if (fd < 0) continue;
      if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {  // its process is alive and owns it
        ::close(fd);
        continue;
      }
      if (const auto written = write_spool_file(p, sink)) {
        std::filesystem::remove(p, ec);
        if (*written > 0) {
          std::cerr << "tollgate: ledger: wrote " << *written << " records spooled by an earlier process ("
                    << p.filename().string() << ")" << std::endl;
        }
      }
      ::close(fd);
    }
  }

 private:
  std::filesystem::path dir_, path_;
  int fd_ = -1;
  std::atomic<std::size_t> count_{0};
};

usage_ledger::usage_ledger(const std::string& path, std::size_t shards, std::chrono::milliseconds busy_timeout,
                           std::chrono::milliseconds flush_interval)
    : usage_ledger(std::make_unique<sqlite_sink>(path, busy_timeout), shards, flush_interval, "") {}

usage_ledger::usage_ledger(std::unique_ptr<ledger_sink> sink, std::size_t shards,
                           std::chrono::milliseconds flush_interval, const std::string& spool_dir)
    : sink_(std::move(sink)), flush_interval_(flush_interval) {
  id_prefix_ = random_hex(8) + "-";
  if (!spool_dir.empty()) {
    spool_ = std::make_unique<ledger_spool>(spool_dir);
    spool_->adopt_orphans(*sink_);
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
}

void usage_ledger::append(std::size_t shard, ledger_record record) {
  if (record.record_id.empty()) record.record_id = id_prefix_ + std::to_string(next_id_.fetch_add(1));
  auto& buffer = *shards_[shard % shards_.size()];
  {
    std::lock_guard lock(buffer.mutex);
    buffer.records.push_back(std::move(record));
  }
  if (flush_interval_.count() == 0) flush();
}

void usage_ledger::flush() {
  std::lock_guard writing(write_mutex_);
  std::vector<ledger_record> batch = std::move(unwritten_);
  unwritten_.clear();
  for (auto& shard : shards_) {
    std::lock_guard lock(shard->mutex);
    for (auto& r : shard->records) batch.push_back(std::move(r));
    shard->records.clear();
  }
  if (spool_) {
    flush_to_spool(std::move(batch));
    return;
  }
  // Records the database refused last time (busy past the timeout, disk full) go first, so none
  // is lost while the database recovers; past a bound the oldest are dropped, and said so.
  if (batch.empty() || sink_->write(batch)) return;
  constexpr std::size_t max_unwritten = 1'000'000;
  if (batch.size() > max_unwritten) {
    const std::size_t dropped = batch.size() - max_unwritten;
    std::cerr << "tollgate: ledger: the database refused writes for too long; " << dropped
              << " oldest records dropped" << std::endl;
    batch.erase(batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(dropped));
  }
  unwritten_ = std::move(batch);
}

void usage_ledger::flush_to_spool(std::vector<ledger_record> batch) {
  // What waits on disk goes first; while it cannot be written, new records join it there.
  if (spool_->size() > 0) {
    // An empty write is a cheap probe: the spool is read only once the database answers.
    if (!sink_->write({})) {
      if (!batch.empty() && !spool_->append(batch)) unwritten_ = std::move(batch);
      return;
    }
    const auto spooled = spool_->write_to(*sink_);
    if (!spooled) {
      if (!batch.empty() && !spool_->append(batch)) unwritten_ = std::move(batch);
      return;
    }
    std::cerr << "tollgate: ledger: the database is back; wrote " << *spooled << " spooled records" << std::endl;
    spool_->clear();
    spool_->adopt_orphans(*sink_);
  }
  if (batch.empty() || sink_->write(batch)) return;
  std::cerr << "tollgate: ledger: the database refused a batch; " << batch.size()
            << " records spooled to local disk until it is back" << std::endl;
  // A disk that refuses too keeps the batch in memory, tried again on the next flush.
  if (!spool_->append(batch)) unwritten_ = std::move(batch);
}

std::size_t usage_ledger::unwritten() const {
  std::lock_guard writing(write_mutex_);
  return unwritten_.size() + (spool_ ? spool_->size() : 0);
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

}  // namespace tollgate::gateway
