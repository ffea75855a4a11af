// Versioned schema migrations for the stores Tollgate opens (SQLite here; PostgreSQL's beside its
// store). Each database records the versions applied in `schema_migrations`; opening one applies
// the missing versions in order, each in the same transaction as its record, so a process that
// dies half-way leaves the database at the last whole version. Processes that open one database
// at once serialise on its write lock (SQLite) or an advisory lock (PostgreSQL).
#pragma once

#include <string>

struct sqlite3;

namespace tollgate::gateway {

/// The newest schema version this build knows for SQLite.
int sqlite_schema_latest();

/// Applies every SQLite migration not yet recorded in db (ledger, keys). what names the database
/// in errors. Throws store_error when a migration fails, or when the database was written by a
/// newer Tollgate (a version above sqlite_schema_latest()).
void migrate_sqlite(sqlite3* db, const std::string& what);

/// The highest version recorded in db's schema_migrations (0: none).
int sqlite_schema_version(sqlite3* db);

}  // namespace tollgate::gateway
