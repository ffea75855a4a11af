#include "gateway/keys/keys_cli.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <iomanip>
#include <iostream>
#include <map>
#include <string>

#include "config/config.hpp"
#include "gateway/keys/key_admin.hpp"
#include "gateway/accounting/money.hpp"
#include "gateway/keys/pg_store.hpp"
#include "gateway/keys/store.hpp"

namespace tollgate::gateway {

namespace {

constexpr std::string_view keys_help =
    "usage: tollgate keys <create|list|update|revoke> --config FILE [options]\n"
    "\n"
    "Manages API keys in the config's store (store.sqlite). A running gateway picks up changes\n"
    "within a second. Keys are stored only as a SHA-256 digest: `create` prints the key once.\n"
    "\n"
    "  keys create --config FILE --name NAME [--models 'deepseek-*,qwen-*'] [--rpm N] [--tpm N]\n"
    "              [--max-concurrency N] [--budget AMOUNT/day|AMOUNT/month] [--expires YYYY-MM-DD]\n"
    "              [--priority high|normal|low|0-9] [--json]\n"
    "  keys list   --config FILE [--all] [--json]     (--all: revoked keys too)\n"
    "  keys update --config FILE --name NAME --priority high|normal|low|0-9\n"
    "  keys revoke --config FILE --name NAME\n";

std::int64_t now_unix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

struct parsed_args {
  std::map<std::string, std::string> values;  // --flag VALUE
  bool json = false, all = false;
  std::string error;
};

parsed_args parse(const std::vector<std::string_view>& args, std::initializer_list<std::string_view> with_value) {
  parsed_args p;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view a = args[i];
    if (a == "--json") { p.json = true; continue; }
    if (a == "--all") { p.all = true; continue; }
    std::string value;
    std::string_view flag = a;
    if (auto eq = a.find('='); a.starts_with("--") && eq != std::string_view::npos) {
      flag = a.substr(0, eq);
      value = a.substr(eq + 1);
    } else if (i + 1 < args.size()) {
      value = args[i + 1];
    } else {
      value = "\x01";
    }
    bool known = false;
    for (auto w : with_value) known = known || w == flag;
    if (!known) {
      p.error = "unexpected argument '" + std::string(a) + "'";
      return p;
    }
    if (value == "\x01") {
      p.error = std::string(flag) + " needs a value";
      return p;
    }
    if (flag == a) ++i;
    p.values[std::string(flag.substr(2))] = value;
  }
  return p;
}

/// The config's store, or a message on stderr and nullptr.
std::unique_ptr<store> open_store(const parsed_args& p, config::config& cfg) {
  auto it = p.values.find("config");
  if (it == p.values.end()) {
    std::cerr << "tollgate keys: --config FILE is required\n";
    return nullptr;
  }
  auto loaded = config::load_file(it->second);
  if (!loaded.value) {
    for (const auto& pr : loaded.problems) std::cerr << pr.to_string() << "\n";
    return nullptr;
  }
  cfg = std::move(*loaded.value);
  if (cfg.sqlite_path.empty() && cfg.postgres_url.empty()) {
    std::cerr << "tollgate keys: " << it->second << " has no store; add `store: {sqlite: ./tollgate.db}`\n";
    return nullptr;
  }
  try {
    if (!cfg.postgres_url.empty()) return open_postgres_store(cfg.postgres_url);
    return open_sqlite_store(cfg.sqlite_path);
  } catch (const std::exception& e) {
    std::cerr << "tollgate keys: " << e.what() << "\n";
    return nullptr;
  }
}

int create(const std::vector<std::string_view>& args) {
  auto p = parse(args, {"--config", "--name", "--models", "--rpm", "--tpm", "--max-concurrency", "--budget", "--expires",
                        "--priority"});
  if (!p.error.empty()) {
    std::cerr << "tollgate keys create: " << p.error << "\n" << keys_help;
    return 2;
  }
  config::config cfg;
  auto st = open_store(p, cfg);
  if (!st) return 1;
  nlohmann::json req = nlohmann::json::object();
  for (const auto& [flag, value] : p.values) {
    if (flag == "config") continue;
    const std::string field = flag == "max-concurrency" ? "max_concurrency" : flag;
    if (field == "rpm" || field == "tpm" || field == "max_concurrency") {
      try {
        std::size_t used = 0;
        long long n = std::stoll(value, &used);
        if (used != value.size()) throw std::invalid_argument(value);
        req[field] = n;
      } catch (const std::exception&) {
        std::cerr << "tollgate keys create: --" << flag << " must be a whole number\n";
        return 2;
      }
    } else {
      req[field] = value;
    }
  }
  std::vector<std::string> taken;
  for (const auto& k : cfg.keys) taken.push_back(k.name);
  auto made = make_key(req, taken, now_unix());
  if (!made.key) {
    std::cerr << "tollgate keys create: " << made.error << "\n";
    return 1;
  }
  try {
    st->create_key(made.key->record);
  } catch (const std::exception& e) {
    std::cerr << "tollgate keys create: " << e.what() << "\n";
    return 1;
  }
  if (p.json) {
    auto j = key_json(made.key->record, std::nullopt);
    j["key"] = made.key->secret;
    std::cout << j.dump() << "\n";
  } else {
    std::cout << made.key->secret << "\n";
    std::cerr << "created key '" << made.key->record.limits.name
              << "'; this is the only time it is shown: store it now\n";
  }
  return 0;
}

int list(const std::vector<std::string_view>& args) {
  auto p = parse(args, {"--config"});
  if (!p.error.empty()) {
    std::cerr << "tollgate keys list: " << p.error << "\n" << keys_help;
    return 2;
  }
  config::config cfg;
  auto st = open_store(p, cfg);
  if (!st) return 1;
  const auto now_ms = now_unix() * 1000;
  nlohmann::json out = nlohmann::json::array();
  for (const auto& k : st->keys(p.all)) {
    std::optional<double> spent;
    if (k.limits.budget > 0) spent = st->spent_since(k.limits.name, budget_period_bounds(k.limits.budget_period, now_ms).first);
    out.push_back(key_json(k, spent));
  }
  if (p.json) {
    std::cout << out.dump() << "\n";
    return 0;
  }
  std::cout << std::left << std::setw(20) << "NAME" << std::setw(12) << "PREFIX" << std::setw(9) << "STATUS"
            << std::setw(24) << "MODELS" << std::setw(9) << "PRIORITY" << std::setw(8) << "RPM" << std::setw(9) << "TPM"
            << std::setw(22)
            << "BUDGET (SPENT)" << "EXPIRES\n";
  for (const auto& j : out) {
    std::string models;
    for (const auto& m : j["models"]) models += (models.empty() ? "" : ",") + m.get<std::string>();
    std::string budget = "-";
    if (!j["budget"].is_null()) {
      budget = format_amount(j["budget"]["amount"].get<double>()) + "/" + j["budget"]["period"].get<std::string>() +
               " (" + format_money(j.value("spent_this_period", 0.0)) + ")";
    }
    std::cout << std::setw(20) << j["name"].get<std::string>() << std::setw(12) << j["prefix"].get<std::string>()
              << std::setw(9) << j["status"].get<std::string>() << std::setw(24) << (models.empty() ? "*" : models)
              << std::setw(9) << j["priority"].get<std::string>() << std::setw(8) << j["rpm"].get<unsigned>() << std::setw(9) << j["tpm"].get<unsigned>()
              << std::setw(22) << budget << (j["expires"].is_null() ? "-" : j["expires"].get<std::string>()) << "\n";
  }
  return 0;
}

int update(const std::vector<std::string_view>& args) {
  auto p = parse(args, {"--config", "--name", "--priority"});
  if (!p.error.empty() || !p.values.count("name") || !p.values.count("priority")) {
    std::cerr << "tollgate keys update: "
              << (p.error.empty() ? "--name NAME and --priority PRIORITY are required" : p.error) << "\n"
              << keys_help;
    return 2;
  }
  const auto change = read_key_update(nlohmann::json{{"priority", p.values["priority"]}});
  if (!change.priority) {
    std::cerr << "tollgate keys update: " << change.error << "\n";
    return 1;
  }
  config::config cfg;
  auto st = open_store(p, cfg);
  if (!st) return 1;
  try {
    if (!st->set_key_priority(p.values["name"], *change.priority)) {
      std::cerr << "tollgate keys update: no active key named '" << p.values["name"] << "'\n";
      return 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "tollgate keys update: " << e.what() << "\n";
    return 1;
  }
  std::cerr << "key '" << p.values["name"] << "' now has priority " << config::priority_name(*change.priority) << "\n";
  return 0;
}

int revoke(const std::vector<std::string_view>& args) {
  auto p = parse(args, {"--config", "--name"});
  if (!p.error.empty() || !p.values.count("name")) {
    std::cerr << "tollgate keys revoke: " << (p.error.empty() ? "--name NAME is required" : p.error) << "\n"
              << keys_help;
    return 2;
  }
  config::config cfg;
  auto st = open_store(p, cfg);
  if (!st) return 1;
  try {
    if (!st->revoke_key(p.values["name"], now_unix())) {
      std::cerr << "tollgate keys revoke: no active key named '" << p.values["name"] << "'\n";
      return 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "tollgate keys revoke: " << e.what() << "\n";
    return 1;
  }
  std::cerr << "revoked key '" << p.values["name"] << "'\n";
  return 0;
}

}  // namespace

int keys_command(const std::vector<std::string_view>& args) {
  if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
    std::cout << keys_help;
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string_view> rest(args.begin() + 1, args.end());
  for (auto a : rest) {
    if (a == "-h" || a == "--help") {
      std::cout << keys_help;
      return 0;
    }
  }
  if (args[0] == "create") return create(rest);
  if (args[0] == "list") return list(rest);
  if (args[0] == "update") return update(rest);
  if (args[0] == "revoke") return revoke(rest);
  std::cerr << "tollgate keys: unknown command '" << args[0] << "'\n" << keys_help;
  return 2;
}

}  // namespace tollgate::gateway
