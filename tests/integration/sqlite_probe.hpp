// Reads a test's SQLite database directly, to check what the gateway wrote.
#pragma once

#include <catch2/catch.hpp>
#include <sqlite3.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include <unistd.h>

namespace tollgate::test {

struct db {
  explicit db(const std::string& path) { REQUIRE(sqlite3_open(path.c_str(), &handle) == SQLITE_OK); }
  ~db() { sqlite3_close(handle); }
  db(const db&) = delete;
  db& operator=(const db&) = delete;
  /// The first column of the first row, as text ("NULL" for null, "NO ROW" for none).
  std::string one(const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(handle, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
    std::string out = "NO ROW";
    if (sqlite3_step(st) == SQLITE_ROW) {
      const auto* text = sqlite3_column_text(st, 0);
      out = text != nullptr ? reinterpret_cast<const char*>(text) : "NULL";
    }
    sqlite3_finalize(st);
    return out;
  }
  sqlite3* handle = nullptr;
};

/// A database path in the temporary folder, named for the test and this process: ctest runs the
/// same test case in two processes at once (the native and the curl transport), which must not
/// share a ledger.
inline std::string temp_db(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + "-" + std::to_string(::getpid()) + ".db")).string();
}

/// Removes a database and its WAL files.
inline void remove_db(const std::string& path) {
  std::remove(path.c_str());
  std::remove((path + "-wal").c_str());
  std::remove((path + "-shm").c_str());
}

}  // namespace tollgate::test
