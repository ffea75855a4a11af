#include <catch2/catch.hpp>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>

#include "gateway/ledger.hpp"

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
