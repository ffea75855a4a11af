// The PostgreSQL store, for several replicas: API keys, the usage ledger and the budgets' spend
// in one database every replica shares. The schema is created and migrated by Tollgate itself
// (versioned, under an advisory lock, so replicas that start together apply each version once).
#pragma once

#include <memory>
#include <string>

namespace tollgate::gateway {

class store;
class ledger_sink;

/// Connects to url (a libpq URL), applies the migrations the database lacks, and returns the
/// store. Throws store_error when the database cannot be reached or migrated. The store
/// reconnects by itself after the database went away; until then its calls throw store_error.
std::unique_ptr<store> open_postgres_store(const std::string& url);

/// A ledger sink on its own connection to url, connected on first use and again after a failure
/// (write() is false while the database is unreachable). Does not throw.
std::unique_ptr<ledger_sink> open_postgres_ledger_sink(const std::string& url);

/// The newest schema version this build knows for PostgreSQL.
int postgres_schema_latest();

}  // namespace tollgate::gateway
