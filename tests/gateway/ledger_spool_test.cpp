#include <catch2/catch.hpp>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>

#include "gateway/accounting/ledger.hpp"

using namespace tollgate::gateway;

namespace {

/// A database that is up or down on command and keeps each record id once, as PostgreSQL does.
struct fake_db {
  std::mutex mutex;
  std::atomic<bool> up{true};
  std::set<std::string> ids;
  std::vector<ledger_record> rows;
};

class fake_sink final : public ledger_sink {
 public:
  explicit fake_sink(fake_db& db) : db_(db) {}
  bool write(const std::vector<ledger_record>& batch) override {
    if (!db_.up) return false;
    std::lock_guard lock(db_.mutex);
    for (const auto& r : batch) {
      if (db_.ids.insert(r.record_id).second) db_.rows.push_back(r);
    }
    return true;
  }

 private:
  fake_db& db_;
};

/// The fake database's sink, with each write's size noted, refusing the write numbered fail_at
/// (counting from 1; 0: none) once.
class counting_sink final : public ledger_sink {
 public:
  counting_sink(fake_db& db, std::vector<std::size_t>& sizes, int fail_at) : inner_(db), db_(db), sizes_(sizes), fail_at_(fail_at) {}
  bool write(const std::vector<ledger_record>& batch) override {
    if (!db_.up) return false;
    if (batch.empty()) return true;  // the probe
    if (static_cast<int>(sizes_.size()) + 1 == fail_at_) {
      fail_at_ = 0;
      sizes_.push_back(0);
      return false;
    }
    sizes_.push_back(batch.size());
    return inner_.write(batch);
  }

 private:
  fake_sink inner_;
  fake_db& db_;
  std::vector<std::size_t>& sizes_;
  int fail_at_;
};

ledger_record record(int i) {
  ledger_record r;
  r.request_id = "req-" + std::to_string(i);
  r.unix_ms = 1000 + i;
  r.key = "k";
  r.model = "m";
  r.has_usage = true;
  r.prompt_tokens = i;
  r.cost = 0.25 * i;
  r.status = 200;
  r.first_byte_ms = 1.5;
  return r;
}

std::size_t spool_lines(const std::filesystem::path& dir) {
  std::size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(e.path());
    std::string line;
    while (std::getline(in, line)) n += !line.empty();
  }
  return n;
}

std::filesystem::path temp_dir(const char* name) {
  auto p = std::filesystem::temp_directory_path() / (std::string(name) + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  return p;
}

}  // namespace

TEST_CASE("ledger spool: records wait on disk while the database is down, then are written once", "[ledger]") {
  const auto dir = temp_dir("spool-down-up");
  fake_db db;
  {
    usage_ledger ledger(std::make_unique<fake_sink>(db), 2, std::chrono::hours(1), dir.string());
    db.up = false;
    for (int i = 0; i < 5; ++i) ledger.append(i % 2, record(i));
    ledger.flush();
    CHECK(ledger.unwritten() == 5);
    CHECK(spool_lines(dir) == 5);
    ledger.append(0, record(5));
    ledger.flush();  // still down: the new one joins the spool
    CHECK(spool_lines(dir) == 6);
    db.up = true;
    ledger.flush();
    CHECK(ledger.unwritten() == 0);
    CHECK(spool_lines(dir) == 0);
  }
  REQUIRE(db.rows.size() == 6);
  double cost = 0;
  for (const auto& r : db.rows) cost += r.cost;
  CHECK(cost == Approx(0.25 * (0 + 1 + 2 + 3 + 4 + 5)));
  CHECK(db.rows[0].first_byte_ms == 1.5);
  CHECK(db.rows[0].first_token_ms == -1);
  std::filesystem::remove_all(dir);
}

TEST_CASE("ledger spool: a process that stops while the database is down leaves its records to the next",
          "[ledger]") {
  const auto dir = temp_dir("spool-orphan");
  fake_db db;
  db.up = false;
  {
    usage_ledger ledger(std::make_unique<fake_sink>(db), 1, std::chrono::hours(1), dir.string());
    for (int i = 0; i < 3; ++i) ledger.append(0, record(i));
  }  // the destructor's flush is refused: the records stay in the spool file
  CHECK(spool_lines(dir) == 3);
  CHECK(db.rows.empty());
  db.up = true;
  {
    usage_ledger next(std::make_unique<fake_sink>(db), 1, std::chrono::hours(1), dir.string());
    CHECK(db.rows.size() == 3);  // adopted when it opened
    CHECK(next.unwritten() == 0);
  }
  CHECK(std::filesystem::is_empty(dir));
  std::filesystem::remove_all(dir);
}

TEST_CASE("ledger spool: a long outage's spool is written back in chunks, and a replay cut short is finished once",
          "[ledger]") {
  const auto dir = temp_dir("spool-chunks");
  const int n = static_cast<int>(2 * spool_replay_chunk + 500);
  fake_db db;
  std::vector<std::size_t> sizes;
  {
    // The second chunk's write is refused: the first stays written, the file is kept.
    usage_ledger ledger(std::make_unique<counting_sink>(db, sizes, 2), 1, std::chrono::hours(1), dir.string());
    db.up = false;
    for (int i = 0; i < n; ++i) ledger.append(0, record(i));
    ledger.flush();
    CHECK(spool_lines(dir) == static_cast<std::size_t>(n));
    db.up = true;
    ledger.flush();
    CHECK(db.rows.size() == spool_replay_chunk);
    CHECK(spool_lines(dir) == static_cast<std::size_t>(n));
    ledger.append(0, record(n));  // a new record while the spool waits
    ledger.flush();               // the whole file again, then the new record
    CHECK(spool_lines(dir) == 0);
    CHECK(ledger.unwritten() == 0);
  }
  CHECK(db.rows.size() == static_cast<std::size_t>(n) + 1);  // each record once
  for (std::size_t s : sizes) CHECK(s <= spool_replay_chunk);
  // Refused second chunk, then three chunks of the whole file again, then the new record.
  CHECK(sizes == std::vector<std::size_t>{spool_replay_chunk, 0, spool_replay_chunk, spool_replay_chunk, 500, 1});
  std::filesystem::remove_all(dir);
}
