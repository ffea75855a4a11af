#include "gateway/keys/key_admin.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>

#include "gateway/keys/key_table.hpp"

namespace tollgate::gateway {

namespace {

bool valid_key_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) return false;
  }
  return true;
}

constexpr const char* priority_error = "'priority' must be high, normal, low or a number from 0 to 9 (larger is served first)";

/// A priority as the config writes it: a name or a number, as a string ("high", "7") or a whole number.
std::optional<int> read_priority(const nlohmann::json& v) {
  if (v.is_string()) return config::parse_priority(v.get<std::string>());
  if (v.is_number_integer() && v.get<std::int64_t>() >= 0 && v.get<std::int64_t>() <= config::max_priority)
    return static_cast<int>(v.get<std::int64_t>());
  return std::nullopt;
}

}  // namespace

update_result read_key_update(const nlohmann::json& req) {
  auto fail = [](std::string message, std::string param) { return update_result{std::nullopt, std::move(message), std::move(param)}; };
  if (!req.is_object()) return fail("the body must be a JSON object", "");
  for (const auto& [field, value] : req.items()) {
    if (field != "priority") {
      return fail("only 'priority' can be changed on a stored key; to change '" + field + "', revoke the key and create it again",
                  field);
    }
  }
  if (!req.contains("priority")) return fail("'priority' is required", "priority");
  auto p = read_priority(req["priority"]);
  if (!p) return fail(priority_error, "priority");
  return update_result{p, {}, {}};
}

std::string iso_time(std::int64_t unix_seconds) {
  using namespace std::chrono;
  const sys_seconds t{seconds(unix_seconds)};
  const auto day = floor<days>(t);
  const year_month_day ymd(day);
  const hh_mm_ss hms(t - day);
  char buf[64];  // room for any int year, so the format can never be cut
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02ld:%02ld:%02ldZ", int(ymd.year()), unsigned(ymd.month()),
                unsigned(ymd.day()), long(hms.hours().count()), long(hms.minutes().count()),
                long(hms.seconds().count()));
  return buf;
}

create_result make_key(const nlohmann::json& req, const std::vector<std::string>& taken, std::int64_t now_unix) {
  auto fail = [](std::string message, std::string param) { return create_result{std::nullopt, std::move(message), std::move(param)}; };
  if (!req.is_object()) return fail("the body must be a JSON object", "");
  static const char* known[] = {"name", "models", "rpm", "tpm", "max_concurrency", "budget", "expires", "priority"};
  for (const auto& [field, value] : req.items()) {
    bool ok = false;
    for (const char* k : known) ok = ok || field == k;
    if (!ok) return fail("unknown field '" + field + "'", field);
  }
  stored_key k;
  config::key_config& c = k.limits;
  if (!req.contains("name") || !req["name"].is_string()) return fail("'name' is required (a string)", "name");
  c.name = req["name"].get<std::string>();
  if (!valid_key_name(c.name)) return fail("'name' may hold letters, digits, '_', '-' and '.', up to 64", "name");
  for (const auto& t : taken) {
    if (t == c.name) return fail("a key named '" + c.name + "' exists in the config", "name");
  }
  if (req.contains("models") && !req["models"].is_null()) {
    const auto& m = req["models"];
    std::vector<std::string> patterns;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      std::size_t start = 0;
      while (start <= s.size()) {
        auto comma = s.find(',', start);
        if (comma == std::string::npos) comma = s.size();
        std::string p = s.substr(start, comma - start);
        while (!p.empty() && p.front() == ' ') p.erase(p.begin());
        while (!p.empty() && p.back() == ' ') p.pop_back();
        if (!p.empty()) patterns.push_back(p);
        start = comma + 1;
      }
    } else if (m.is_array()) {
      for (const auto& p : m) {
        if (!p.is_string() || p.get<std::string>().empty()) return fail("'models' must hold non-empty strings", "models");
        patterns.push_back(p.get<std::string>());
      }
    } else {
      return fail("'models' must be a list or a comma-separated string", "models");
    }
    for (const auto& p : patterns) {
      if (p.find(',') != std::string::npos) return fail("a model pattern may not hold ','", "models");
    }
    c.models = std::move(patterns);
  }
  for (auto [field, out] : {std::pair{"rpm", &c.rpm}, std::pair{"tpm", &c.tpm},
                            std::pair{"max_concurrency", &c.max_concurrency}}) {
    if (!req.contains(field) || req[field].is_null()) continue;
    const auto& v = req[field];
    if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() > 1'000'000'000) {
      return fail(std::string("'") + field + "' must be a whole number from 0 to 1000000000", field);
    }
    *out = static_cast<unsigned>(v.get<std::int64_t>());
  }
  if (req.contains("budget") && !req["budget"].is_null()) {
    auto b = req["budget"].is_string() ? config::parse_budget(req["budget"].get<std::string>()) : std::nullopt;
    if (!b) return fail("'budget' must be AMOUNT/day or AMOUNT/month, e.g. \"100/day\"", "budget");
    c.budget = b->first;
    c.budget_period = b->second;
  }
  if (req.contains("priority") && !req["priority"].is_null()) {
    // A name or a number, as in the config: "high", "low", 7 or "7".
    auto p = read_priority(req["priority"]);
    if (!p) return fail(priority_error, "priority");
    c.priority = *p;
  }
  if (req.contains("expires") && !req["expires"].is_null()) {
    auto e = req["expires"].is_string() ? config::parse_expiry(req["expires"].get<std::string>()) : std::nullopt;
    if (!e) return fail("'expires' must be a date, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ", "expires");
    if (*e <= now_unix) return fail("'expires' is in the past", "expires");
    c.expires_unix = *e;
  }
  created_key out;
  out.secret = new_api_key();
  c.digest = sha256(out.secret);
  k.prefix = out.secret.substr(0, 7);
  k.created_unix = now_unix;
  out.record = std::move(k);
  return create_result{std::move(out), {}, {}};
}

nlohmann::json key_json(const stored_key& k, std::optional<double> spent) {
  const auto& c = k.limits;
  nlohmann::json j = {{"name", c.name},
                      {"prefix", k.prefix + "..."},
                      {"models", c.models},
                      {"rpm", c.rpm},
                      {"tpm", c.tpm},
                      {"max_concurrency", c.max_concurrency},
                      {"priority", config::priority_name(c.priority)},
                      {"created", iso_time(k.created_unix)},
                      {"status", "active"}};
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch()).count();
  if (k.revoked_unix != 0) j["status"] = "revoked";
  else if (c.expires_unix != 0 && now > c.expires_unix) j["status"] = "expired";
  j["budget"] = c.budget > 0 ? nlohmann::json{{"amount", c.budget}, {"period", c.budget_period}} : nlohmann::json();
  j["expires"] = c.expires_unix != 0 ? nlohmann::json(iso_time(c.expires_unix)) : nlohmann::json();
  if (k.revoked_unix != 0) j["revoked"] = iso_time(k.revoked_unix);
  if (spent) j["spent_this_period"] = *spent;
  return j;
}

}  // namespace tollgate::gateway
