#include "config/config.hpp"

#include <arpa/inet.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <map>
#include <set>
#include <span>
#include <sstream>

#include "price_catalogue.hpp"

namespace tollgate::config {

std::string problem::to_string() const {
  std::string out = file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": ";
  if (!key.empty()) out += key + ": ";
  return out + message;
}

std::optional<std::string> process_env(const std::string& name) {
  if (const char* v = std::getenv(name.c_str())) return std::string(v);
  return std::nullopt;
}

std::optional<duration> parse_duration(std::string_view text) {
  if (text.empty()) return std::nullopt;
  std::int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || value < 0 || end == text.data()) return std::nullopt;
  const std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
  std::int64_t scale = 0;
  if (unit == "ms") scale = 1;
  else if (unit == "s" || unit.empty()) scale = 1000;
  else if (unit == "m") scale = 60'000;
  else if (unit == "h") scale = 3'600'000;
  else return std::nullopt;
  if (value > INT64_MAX / scale) return std::nullopt;
  return duration(value * scale);
}

namespace {

/// config/prices.yaml, parsed once: (host, model) -> currency -> price.
struct price_catalogue {
  std::string as_of;
  std::map<std::pair<std::string, std::string>, std::map<std::string, price_config>> prices;

  static const price_catalogue& get() {
    static const price_catalogue catalogue = [] {
      price_catalogue c;
      const YAML::Node root = YAML::Load(price_catalogue_yaml);
      c.as_of = root["as_of"].as<std::string>();
      for (const auto& provider : root["providers"]) {
        for (const auto& host : provider["hosts"]) {
          for (const auto& m : provider["models"]) {
            for (auto it = m.begin(); it != m.end(); ++it) {
              const std::string currency = it->first.Scalar();
              if (currency == "model") continue;
              price_config p;
              p.input = it->second["input"].as<double>();
              p.output = it->second["output"].as<double>();
              p.cached_input = it->second["cached_input"] ? it->second["cached_input"].as<double>() : p.input;
              p.cache_write = it->second["cache_write"] ? it->second["cache_write"].as<double>() : p.input;
              c.prices[{host.Scalar(), m["model"].Scalar()}][currency] = p;
            }
          }
        }
      }
      return c;
    }();
    return catalogue;
  }
};

/// "https://api.deepseek.com/v1" -> "api.deepseek.com".
std::string url_host(std::string_view url) {
  if (auto scheme = url.find("://"); scheme != std::string_view::npos) url.remove_prefix(scheme + 3);
  url = url.substr(0, url.find('/'));
  if (!url.starts_with('[')) url = url.substr(0, url.find(':'));
  return std::string(url);
}

/// Walks the YAML tree once, turning it into structs and collecting every problem on the way.
class loader {
 public:
  loader(std::string file, const env_lookup& env) : file_(std::move(file)), env_(env) {}

  load_result load(std::string_view text) {
    load_result result;
    YAML::Node root;
    try {
      root = YAML::Load(std::string(text));
    } catch (const YAML::ParserException& e) {
      add_at(e.mark.line + 1, e.mark.column + 1, "", "YAML syntax error: " + e.msg);
      result.problems = std::move(problems_);
      return result;
    }
    config c;
    c.source = file_;
    if (!root.IsMap()) {
      add_at(1, 1, "", root.IsNull() ? "the config is empty" : "the config must be a mapping");
      result.problems = std::move(problems_);
      return result;
    }
    known_keys(root, "", {"server", "currency", "store", "limits", "metering", "keys", "backends", "routes"});
    if (auto n = root["metering"]; n && !n.IsNull() && expect_map(n, "metering")) {
      known_keys(n, "metering", {"tokenizer", "max_count_bytes", "count_threads", "count_queue"});
      if (auto p = n["tokenizer"]) {
        if (auto path = string(p, "metering.tokenizer")) c.tokenizer_path = *path;
      }
      if (auto v = n["max_count_bytes"]) {
        if (auto i = integer(v, "metering.max_count_bytes", 1024, std::int64_t(1) << 40)) {
          c.max_count_bytes = static_cast<std::size_t>(*i);
        }
      }
      if (auto v = n["count_threads"]) {
        if (auto i = integer(v, "metering.count_threads", 1, 64)) c.count_threads = static_cast<unsigned>(*i);
      }
      if (auto v = n["count_queue"]) {
        if (auto i = integer(v, "metering.count_queue", 0, 1 << 20)) c.count_queue = static_cast<unsigned>(*i);
      }
    }
    if (auto n = root["store"]; n && !n.IsNull() && expect_map(n, "store")) {
      known_keys(n, "store", {"sqlite", "postgres", "spool", "flush_interval"});
      if (auto f = n["flush_interval"]) {
        if (auto text = string(f, "store.flush_interval")) {
          if (*text == "sync") c.ledger_flush_interval = duration(0);
          else read_duration(f, "store.flush_interval", c.ledger_flush_interval);
        }
      }
      if (auto p = n["sqlite"]) {
        if (auto path = string(p, "store.sqlite")) {
          if (path->empty()) add(p, "store.sqlite", "a database file path is required");
          else c.sqlite_path = *path;
        }
      }
      if (auto p = n["postgres"]) {
        if (auto url = string(p, "store.postgres")) {
          if (url->rfind("postgresql://", 0) != 0 && url->rfind("postgres://", 0) != 0) {
            add(p, "store.postgres", "expected a URL like postgresql://user@host:5432/tollgate");
          } else if (!c.sqlite_path.empty()) {
            add(p, "store.postgres", "set either store.sqlite or store.postgres, not both");
          } else {
            c.postgres_url = *url;
          }
        }
      }
      if (!c.postgres_url.empty() && c.ledger_flush_interval.count() == 0) {
        add(n["flush_interval"], "store.flush_interval",
            "sync is for store.sqlite; with store.postgres the ledger is written in batches (e.g. 100ms)");
      }
      if (auto p = n["spool"]) {
        if (auto dir = string(p, "store.spool")) {
          if (dir->empty()) add(p, "store.spool", "a folder path is required");
          else c.spool_dir = *dir;
        }
      }
    }
    if (auto n = root["limits"]; n && !n.IsNull() && expect_map(n, "limits")) {
      known_keys(n, "limits", {"redis", "on_redis_down", "replicas"});
      if (auto p = n["redis"]) {
        if (auto url = string(p, "limits.redis")) {
          if (url->rfind("redis://", 0) != 0) add(p, "limits.redis", "expected a URL like redis://127.0.0.1:6379");
          else c.limits.redis_url = *url;
        }
      }
      if (auto p = n["on_redis_down"]) {
        if (auto mode = string(p, "limits.on_redis_down")) {
          if (*mode != "local" && *mode != "reject") add(p, "limits.on_redis_down", "expected local or reject");
          else c.limits.on_redis_down = *mode;
        }
      }
      if (auto p = n["replicas"]) {
        if (auto r = integer(p, "limits.replicas", 0, 10000)) c.limits.replicas = static_cast<unsigned>(*r);
      }
      if (c.limits.redis_url.empty() && (n["on_redis_down"] || n["replicas"])) {
        add(n, "limits", "on_redis_down and replicas need limits.redis");
      }
    }
    if (auto n = root["currency"]) {
      if (auto cur = string(n, "currency")) {
        if (cur->size() != 3 || !std::all_of(cur->begin(), cur->end(), [](unsigned char ch) { return std::isupper(ch); })) {
          add(n, "currency", "expected a three-letter code like CNY or USD");
        } else {
          c.currency = *cur;
        }
      }
    }
    if (auto n = root["server"]) read_server(n, c.server);
    if (auto n = root["keys"]) read_keys(n, c.keys);
    if (auto n = root["backends"]; n && !n.IsNull()) {
      read_backends(n, c);
    } else {
      add(root, "backends", "at least one backend is required");
    }
    if (auto n = root["routes"]; n && !n.IsNull()) {
      read_routes(n, c);
    } else {
      add(root, "routes", "at least one route is required");
    }
    result.problems = std::move(problems_);
    result.warnings = std::move(warnings_);
    result.unpriced = std::move(unpriced_);
    if (result.problems.empty()) result.value = std::move(c);
    return result;
  }

 private:
  void add_at(int line, int column, const std::string& key, std::string message) {
    problems_.push_back(problem{file_, line, column, key, std::move(message)});
  }
  void add(const YAML::Node& at, const std::string& key, std::string message) {
    const auto mark = at.Mark();
    const bool known = mark.line >= 0;
    add_at(known ? mark.line + 1 : 0, known ? mark.column + 1 : 0, key, std::move(message));
  }

  static std::string join(const std::string& path, const std::string& key) {
    return path.empty() ? key : path + "." + key;
  }

  void known_keys(const YAML::Node& map, const std::string& path, std::initializer_list<std::string_view> allowed) {
    known_keys(map, path, std::span<const std::string_view>(allowed.begin(), allowed.size()));
  }
  void known_keys(const YAML::Node& map, const std::string& path, std::span<const std::string_view> allowed) {
    std::set<std::string> seen;
    for (auto it = map.begin(); it != map.end(); ++it) {
      const std::string key = it->first.Scalar();
      // yaml-cpp keeps the first of two equal keys, so a repeated block would be dropped silently.
      if (!seen.insert(key).second) {
        add(it->first, join(path, key), "duplicate key '" + key + "'");
        continue;
      }
      bool ok = false;
      for (auto a : allowed) ok = ok || a == key;
      if (!ok) add(it->first, join(path, key), "unknown key '" + key + "'");
    }
  }

  bool expect_map(const YAML::Node& n, const std::string& path) {
    if (n.IsMap()) return true;
    add(n, path, "expected a mapping");
    return false;
  }

  bool expect_list(const YAML::Node& n, const std::string& path) {
    if (n.IsSequence()) return true;
    add(n, path, "expected a list");
    return false;
  }

  /// ${VAR}, ${VAR:-default} and $$ in a string scalar.
  std::optional<std::string> expand(const YAML::Node& n, const std::string& path, const std::string& raw) {
    std::string out;
    bool ok = true;
    for (std::size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] != '$' || i + 1 >= raw.size()) {
        out.push_back(raw[i]);
        continue;
      }
      if (raw[i + 1] == '$') {
        out.push_back('$');
        ++i;
        continue;
      }
      if (raw[i + 1] != '{') {
        out.push_back('$');
        continue;
      }
      const auto close = raw.find('}', i + 2);
      if (close == std::string::npos) {
        add(n, path, "unterminated '${' in \"" + raw + "\"");
        return std::nullopt;
      }
      std::string name = raw.substr(i + 2, close - i - 2);
      std::optional<std::string> fallback;
      if (auto sep = name.find(":-"); sep != std::string::npos) {
        fallback = name.substr(sep + 2);
        name = name.substr(0, sep);
      }
      if (name.empty()) {
        add(n, path, "a variable name is missing in \"" + raw + "\"");
        return std::nullopt;
      }
      auto value = env_(name);
      if (unset_vars_ != nullptr && !fallback && (!value || value->empty())) {
        // In an optional backend an unset (or empty) variable disables the backend instead.
        unset_vars_->push_back(name);
        ok = false;
      } else if (value && !(fallback && value->empty())) {
        out += *value;
      } else if (fallback) {
        out += *fallback;
      } else {
        add(n, path, "environment variable " + name + " is not set");
        ok = false;
      }
      i = close;
    }
    if (!ok) return std::nullopt;
    return out;
  }

  std::optional<std::string> string(const YAML::Node& n, const std::string& path) {
    if (!n.IsScalar()) {
      add(n, path, "expected a string");
      return std::nullopt;
    }
    return expand(n, path, n.Scalar());
  }

  std::optional<std::string> required_string(const YAML::Node& parent, const char* key, const std::string& path) {
    const YAML::Node n = parent[key];
    if (!n || n.IsNull()) {
      add(parent, join(path, key), std::string("'") + key + "' is required");
      return std::nullopt;
    }
    auto s = string(n, join(path, key));
    if (s && s->empty()) {
      add(n, join(path, key), std::string("'") + key + "' must not be empty");
      return std::nullopt;
    }
    return s;
  }

  std::optional<std::int64_t> integer(const YAML::Node& n, const std::string& path, std::int64_t min, std::int64_t max) {
    auto text = string(n, path);
    if (!text) return std::nullopt;
    std::int64_t v = 0;
    auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
    if (ec != std::errc() || end != text->data() + text->size()) {
      add(n, path, "expected a whole number, got '" + *text + "'");
      return std::nullopt;
    }
    if (v < min || v > max) {
      add(n, path, "must be between " + std::to_string(min) + " and " + std::to_string(max));
      return std::nullopt;
    }
    return v;
  }

  void read_duration(const YAML::Node& n, const std::string& path, duration& out) {
    auto text = string(n, path);
    if (!text) return;
    auto d = parse_duration(*text);
    if (!d || d->count() <= 0) {
      add(n, path, "expected a positive duration like 250ms, 2s, 10m or 1h, got '" + *text + "'");
      return;
    }
    out = *d;
  }

  void read_listen(const YAML::Node& n, const std::string& path, server_config& s) {
    auto text = string(n, path);
    if (!text) return;
    std::string host;
    std::string port;
    if (!text->empty() && text->front() == '[') {
      const auto close = text->find(']');
      if (close == std::string::npos || close + 1 >= text->size() || (*text)[close + 1] != ':') {
        add(n, path, "expected [ipv6]:port, got '" + *text + "'");
        return;
      }
      host = text->substr(1, close - 1);
      port = text->substr(close + 2);
    } else {
      const auto colon = text->rfind(':');
      if (colon == std::string::npos) {
        add(n, path, "expected host:port, got '" + *text + "'");
        return;
      }
      host = text->substr(0, colon);
      port = text->substr(colon + 1);
    }
    if (host == "localhost") host = "127.0.0.1";
    unsigned char buf[16];
    if (inet_pton(AF_INET, host.c_str(), buf) != 1 && inet_pton(AF_INET6, host.c_str(), buf) != 1) {
      add(n, path, "'" + host + "' is not an IP address (use 127.0.0.1, 0.0.0.0, ::1 or ::)");
      return;
    }
    int p = -1;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (ec != std::errc() || end != port.data() + port.size() || p < 0 || p > 65535) {
      add(n, path, "'" + port + "' is not a port number (0-65535)");
      return;
    }
    s.listen_host = host;
    s.listen_port = static_cast<std::uint16_t>(p);
  }

  void read_server(const YAML::Node& n, server_config& s) {
    if (!expect_map(n, "server")) return;
    known_keys(n, "server",
               {"listen", "threads", "max_body_bytes", "max_event_bytes", "shutdown_timeout", "idle_timeout", "access_log",
                "access_log_skip",
                "admin_key", "cors", "remembered_responses"});
    if (auto v = n["listen"]) read_listen(v, "server.listen", s);
    if (auto v = n["threads"]) {
      if (auto i = integer(v, "server.threads", 0, 1024)) s.threads = static_cast<unsigned>(*i);
    }
    if (auto v = n["max_body_bytes"]) {
      if (auto i = integer(v, "server.max_body_bytes", 1, std::int64_t(1) << 40)) s.max_body_bytes = static_cast<std::size_t>(*i);
    }
    if (auto v = n["max_event_bytes"]) {
      if (auto i = integer(v, "server.max_event_bytes", 1024, std::int64_t(1) << 40)) {
        s.max_event_bytes = static_cast<std::size_t>(*i);
      }
    }
    if (auto v = n["remembered_responses"]) {
      if (auto i = integer(v, "server.remembered_responses", 0, 100'000'000)) s.remembered_responses = static_cast<std::size_t>(*i);
    }
    if (auto v = n["shutdown_timeout"]) read_duration(v, "server.shutdown_timeout", s.shutdown_timeout);
    if (auto v = n["idle_timeout"]) read_duration(v, "server.idle_timeout", s.idle_timeout);
    if (auto v = n["admin_key"]; v && !v.IsNull()) {
      if (auto t = string(v, "server.admin_key")) {
        if (!t->empty() && t->size() < 16) add(v, "server.admin_key", "use at least 16 characters");
        s.admin_key = *t;
      }
    }
    if (auto v = n["access_log"]) {
      if (auto t = string(v, "server.access_log")) {
        if (t->empty()) add(v, "server.access_log", "must be stdout, stderr, off or a file path");
        else s.access_log = *t;
      }
    }
    if (auto v = n["cors"]; v && !v.IsNull() && expect_map(v, "server.cors")) {
      known_keys(v, "server.cors", {"origins"});
      if (auto o = v["origins"]; o && !o.IsNull() && expect_list(o, "server.cors.origins")) {
        for (std::size_t i = 0; i < o.size(); ++i) {
          const std::string path = "server.cors.origins[" + std::to_string(i) + "]";
          if (auto t = string(o[i], path)) {
            // An origin is scheme://host[:port], compared byte for byte with the browser's Origin.
            const bool origin = (t->starts_with("http://") || t->starts_with("https://")) &&
                                t->find('/', t->find("//") + 2) == std::string::npos && !has_control(*t, false);
            if (*t != "*" && !origin) add(o[i], path, "expected an origin like https://app.example.com (no path), or *");
            else s.cors_origins.push_back(*t);
          }
        }
      }
    }
    if (auto v = n["access_log_skip"]; v && !v.IsNull() && expect_list(v, "server.access_log_skip")) {
      for (std::size_t i = 0; i < v.size(); ++i) {
        const std::string path = "server.access_log_skip[" + std::to_string(i) + "]";
        if (auto t = string(v[i], path)) {
          if (!t->starts_with("/") || t->find('?') != std::string::npos) add(v[i], path, "expected a path like /metrics");
          else s.access_log_skip.push_back(*t);
        }
      }
    }
  }

  void read_keys(const YAML::Node& n, std::vector<key_config>& keys) {
    if (n.IsNull()) return;
    if (!expect_list(n, "keys")) return;
    std::set<std::string> names, values;
    for (std::size_t i = 0; i < n.size(); ++i) {
      const std::string path = "keys[" + std::to_string(i) + "]";
      const YAML::Node k = n[i];
      if (!expect_map(k, path)) continue;
      known_keys(k, path, {"name", "key", "models", "rpm", "tpm", "max_concurrency", "budget", "expires", "priority"});
      auto name = required_string(k, "name", path);
      auto key = required_string(k, "key", path);
      if (name && !names.insert(*name).second) add(k["name"], path + ".name", "duplicate key name '" + *name + "'");
      if (key && !values.insert(*key).second) add(k["key"], path + ".key", "the same key is listed twice");
      key_config kc;
      if (auto m = k["models"]; m && !m.IsNull() && expect_list(m, path + ".models")) {
        for (std::size_t j = 0; j < m.size(); ++j) {
          if (auto pattern = string(m[j], path + ".models[" + std::to_string(j) + "]")) kc.models.push_back(*pattern);
        }
      }
      for (auto [field, out] : {std::pair{"rpm", &kc.rpm}, std::pair{"tpm", &kc.tpm},
                                std::pair{"max_concurrency", &kc.max_concurrency}}) {
        if (auto v = k[field]) {
          if (auto i = integer(v, path + "." + field, 0, 1'000'000'000)) *out = static_cast<unsigned>(*i);
        }
      }
      if (auto v = k["budget"]; v && !v.IsNull()) {
        if (auto t = string(v, path + ".budget")) {
          if (auto b = parse_budget(*t)) {
            kc.budget = b->first;
            kc.budget_period = b->second;
          } else {
            add(v, path + ".budget", "must be AMOUNT/day or AMOUNT/month, e.g. 100/day");
          }
        }
      }
      if (auto v = k["priority"]; v && !v.IsNull()) {
        if (auto t = string(v, path + ".priority")) {
          if (auto p = parse_priority(*t)) kc.priority = *p;
          else add(v, path + ".priority", "must be high, normal, low or a number from 0 to 9 (larger is served first)");
        }
      }
      if (auto v = k["expires"]; v && !v.IsNull()) {
        if (auto t = string(v, path + ".expires")) {
          if (auto e = parse_expiry(*t)) kc.expires_unix = *e;
          else add(v, path + ".expires", "must be a date, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ");
        }
      }
      if (name && key) {
        kc.name = *name;
        kc.key = *key;
        keys.push_back(std::move(kc));
      }
    }
  }

  /// A control character (CR, LF, NUL, DEL...; HTAB only when tab_ok) in a value that becomes part
  /// of an upstream request's head would end a header line early or inject one.
  static bool has_control(std::string_view s, bool tab_ok) {
    for (unsigned char c : s) {
      if ((c < 0x20 && !(tab_ok && c == '\t')) || c == 0x7F) return true;
    }
    return false;
  }

  /// An RFC 9110 token, what a header name must be.
  static bool is_token(std::string_view s) {
    for (unsigned char c : s) {
      if (!(std::isalnum(c) || std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos)) {
        return false;
      }
    }
    return !s.empty();
  }

  static bool valid_name(const std::string& s) {
    for (char c : s) {
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) return false;
    }
    return !s.empty();
  }

  /// http(s)://host[:port][/path], no query or fragment. Returns the URL without a trailing '/'.
  std::optional<std::string> check_url(const YAML::Node& n, const std::string& path, std::string url) {
    auto bad = [&](const std::string& why) {
      add(n, path, "invalid URL '" + url + "': " + why);
      return std::nullopt;
    };
    std::string_view rest = url;
    if (rest.starts_with("https://")) rest.remove_prefix(8);
    else if (rest.starts_with("http://")) rest.remove_prefix(7);
    else return bad("the scheme must be http:// or https://");
    if (url.find_first_of(" \t\r\n") != std::string::npos) return bad("it contains white space");
    if (has_control(url, false)) return bad("it contains a control character");
    if (url.find_first_of("?#") != std::string::npos) return bad("a base URL has no query or fragment");
    std::string_view authority = rest.substr(0, rest.find('/'));
    if (authority.find('@') != std::string_view::npos) return bad("credentials belong in api_key or headers");
    std::string_view host = authority;
    std::string_view port;
    bool has_port = false;
    if (authority.starts_with('[')) {
      const auto close = authority.find(']');
      if (close == std::string_view::npos) return bad("unterminated IPv6 address");
      host = authority.substr(0, close + 1);
      if (close + 1 < authority.size()) {
        if (authority[close + 1] != ':') return bad("unexpected text after the IPv6 address");
        port = authority.substr(close + 2);
        has_port = true;
      }
    } else if (auto colon = authority.find(':'); colon != std::string_view::npos) {
      host = authority.substr(0, colon);
      port = authority.substr(colon + 1);
      has_port = true;
    }
    if (host.empty()) return bad("the host is missing");
    if (has_port) {
      int p = 0;
      auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
      if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p < 1 || p > 65535) {
        return bad("the port must be 1-65535");
      }
    }
    while (url.ends_with('/')) url.pop_back();
    return url;
  }

  void read_timeouts(const YAML::Node& n, const std::string& path, timeouts_config& t) {
    if (!expect_map(n, path)) return;
    known_keys(n, path, {"connect", "first_token", "idle", "total"});
    if (auto v = n["connect"]) read_duration(v, path + ".connect", t.connect);
    if (auto v = n["first_token"]) read_duration(v, path + ".first_token", t.first_token);
    if (auto v = n["idle"]) read_duration(v, path + ".idle", t.idle);
    if (auto v = n["total"]) read_duration(v, path + ".total", t.total);
  }

  void read_ejection(const YAML::Node& n, const std::string& path, ejection_config& e) {
    if (!expect_map(n, path)) return;
    known_keys(n, path, {"after_failures", "cooldown", "max_cooldown"});
    if (auto v = n["after_failures"]) {
      if (auto i = integer(v, path + ".after_failures", 0, 1000)) e.after_failures = static_cast<unsigned>(*i);
    }
    if (auto v = n["cooldown"]) read_duration(v, path + ".cooldown", e.cooldown);
    if (auto v = n["max_cooldown"]) read_duration(v, path + ".max_cooldown", e.max_cooldown);
    if (e.max_cooldown < e.cooldown) add(n, path + ".max_cooldown", "must not be shorter than cooldown");
  }

  void read_health_check(const YAML::Node& n, const std::string& path, health_check_config& h) {
    if (!expect_map(n, path)) return;
    known_keys(n, path, {"path", "interval", "timeout", "unhealthy_after", "healthy_after"});
    h.enabled = true;
    if (auto v = n["path"]) {
      if (auto p = string(v, path + ".path")) {
        if (p->empty() || p->front() != '/') add(v, path + ".path", "a path starts with '/'");
        else if (has_control(*p, false) || p->find(' ') != std::string::npos) {
          add(v, path + ".path", "a path has no white space or control characters");
        }
        else h.path = *p;
      }
    }
    if (auto v = n["interval"]) read_duration(v, path + ".interval", h.interval);
    if (auto v = n["timeout"]) read_duration(v, path + ".timeout", h.timeout);
    if (auto v = n["unhealthy_after"]) {
      if (auto i = integer(v, path + ".unhealthy_after", 1, 100)) h.unhealthy_after = static_cast<unsigned>(*i);
    }
    if (auto v = n["healthy_after"]) {
      if (auto i = integer(v, path + ".healthy_after", 1, 100)) h.healthy_after = static_cast<unsigned>(*i);
    }
  }

  std::optional<double> number(const YAML::Node& n, const std::string& path) {
    auto text = string(n, path);
    if (!text) return std::nullopt;
    double v = 0;
    auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
    if (ec != std::errc() || end != text->data() + text->size() || v < 0 || v > 1e9) {
      add(n, path, "expected a non-negative number, got '" + *text + "'");
      return std::nullopt;
    }
    return v;
  }

  void read_price(const YAML::Node& n, const std::string& path, price_config& p) {
    if (!expect_map(n, path)) return;
    known_keys(n, path, {"input", "cached_input", "cache_write", "output"});
    if (auto v = n["input"]) {
      if (auto d = number(v, path + ".input")) p.input = *d;
    }
    if (auto v = n["cached_input"]) {
      if (auto d = number(v, path + ".cached_input")) p.cached_input = *d;
    } else {
      p.cached_input = p.input;  // no discount unless the provider gives one
    }
    if (auto v = n["cache_write"]) {
      if (auto d = number(v, path + ".cache_write")) p.cache_write = *d;
    } else {
      p.cache_write = p.input;  // no premium unless the provider charges one
    }
    if (auto v = n["output"]) {
      if (auto d = number(v, path + ".output")) p.output = *d;
    }
  }

  void read_retry(const YAML::Node& n, const std::string& path, retry_config& r) {
    if (!expect_map(n, path)) return;
    known_keys(n, path, {"attempts", "backoff", "max_backoff"});
    if (auto v = n["attempts"]) {
      if (auto i = integer(v, path + ".attempts", 1, 20)) r.attempts = static_cast<unsigned>(*i);
    }
    if (auto v = n["backoff"]) read_duration(v, path + ".backoff", r.backoff);
    if (auto v = n["max_backoff"]) read_duration(v, path + ".max_backoff", r.max_backoff);
    if (r.max_backoff < r.backoff) add(n, path + ".max_backoff", "must not be shorter than backoff");
  }

  void read_name_list(const YAML::Node& n, const std::string& path, std::vector<std::string>& out,
                      std::vector<std::pair<YAML::Node, std::string>>& refs) {
    if (n.IsNull() || !expect_list(n, path)) return;
    for (std::size_t j = 0; j < n.size(); ++j) {
      const std::string item = path + "[" + std::to_string(j) + "]";
      if (auto name = string(n[j], item)) {
        out.push_back(*name);
        refs.emplace_back(n[j], item);
      }
    }
  }

  /// transport: auto | native | curl. auto becomes native for http:// and curl for https://.
  void read_transport(const YAML::Node& b, const std::string& path, remote_backend_config& rc) {
    const bool tls = rc.base_url.starts_with("https://");
    rc.transport = tls ? "curl" : "native";
    const YAML::Node v = b["transport"];
    if (!v || v.IsNull()) return;
    auto t = string(v, path + ".transport");
    if (!t) return;
    if (*t != "auto" && *t != "native" && *t != "curl") {
      add(v, path + ".transport", "must be auto, native or curl, got '" + *t + "'");
    } else if (*t == "native" && tls) {
      add(v, path + ".transport", "the native client speaks plain http:// only; use curl (or auto) for https://");
    } else if (*t != "auto") {
      rc.transport = *t;
    }
  }

  /// The keys of kinds openai and anthropic: an HTTP API at base_url.
  template <class Kind>
  void read_remote_kind(const YAML::Node& b, const std::string& path, backend_config& bc) {
    Kind& rc = bc.settings.emplace<Kind>();
    if (auto url = required_string(b, "base_url", path)) {
      if (auto checked = check_url(b["base_url"], path + ".base_url", *url)) rc.base_url = *checked;
    }
    read_transport(b, path, rc);
    if (auto v = b["api_key"]; v && !v.IsNull()) {
      if (auto key = string(v, path + ".api_key")) {
        // Sent as a header: a trailing newline (a secret file read whole) would inject a line.
        if (has_control(*key, false)) add(v, path + ".api_key", "an API key holds no control characters (CR, LF, NUL...)");
        else rc.api_key = *key;
      }
    }
    if (auto h = b["headers"]; h && !h.IsNull()) {
      if (expect_map(h, path + ".headers")) {
        for (auto it = h.begin(); it != h.end(); ++it) {
          const std::string name = it->first.Scalar();
          const std::string hpath = path + ".headers." + name;
          if (!is_token(name)) {
            add(it->first, hpath, "invalid header name");
            continue;
          }
          std::string lowered = name;
          for (char& c : lowered) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          if (lowered == "content-length" || lowered == "transfer-encoding" || lowered == "connection" ||
              lowered == "expect") {
            add(it->first, hpath, "'" + name + "' frames the request and is set by the gateway");
            continue;
          }
          if (auto value = string(it->second, hpath)) {
            if (has_control(*value, true)) {
              add(it->second, hpath, "a header value holds no control characters (CR, LF, NUL...) but tabs");
            }
            else rc.headers[name] = *value;
          }
        }
      }
    }
    if (auto h = b["health_check"]) read_health_check(h, path + ".health_check", rc.health_check);
  }

  /// The keys of kind openai: those of any remote kind, and `responses: native | translate`.
  void read_openai_kind(const YAML::Node& b, const std::string& path, backend_config& bc) {
    read_remote_kind<openai_backend_config>(b, path, bc);
    const YAML::Node v = b["responses"];
    if (!v || v.IsNull()) return;
    if (auto mode = string(v, path + ".responses")) {
      if (*mode == "native") std::get<openai_backend_config>(bc.settings).native_responses = true;
      else if (*mode != "translate") add(v, path + ".responses", "must be native or translate, got '" + *mode + "'");
    }
  }

  /// The keys of kind local_engine: the bundled engine, a checkpoint folder instead of a URL.
  void read_local_engine_kind(const YAML::Node& b, const std::string& path, backend_config& bc) {
    local_engine_config& lc = bc.settings.emplace<local_engine_config>();
    if (auto dir = required_string(b, "checkpoint", path)) lc.checkpoint = *dir;
    if (auto v = b["device"]; v && !v.IsNull()) {
      if (auto d = string(v, path + ".device")) {
        const bool cuda = d->starts_with("cuda:") && d->size() > 5 &&
                          d->find_first_not_of("0123456789", 5) == std::string::npos;
        if (*d != "cpu" && !cuda) add(v, path + ".device", "must be cpu or cuda:N");
        else lc.device = *d;
      }
    }
    if (auto v = b["max_batch"]) {
      if (auto i = integer(v, path + ".max_batch", 1, 4096)) lc.max_batch = static_cast<unsigned>(*i);
    }
    if (auto v = b["max_batch_tokens"]) {
      if (auto i = integer(v, path + ".max_batch_tokens", 1, 1048576)) lc.max_batch_tokens = static_cast<unsigned>(*i);
    }
    if (auto v = b["prefix_caching"]; v && !v.IsNull()) {
      if (auto text = string(v, path + ".prefix_caching")) {
        if (*text == "true") lc.prefix_caching = true;
        else if (*text == "false") lc.prefix_caching = false;
        else add(v, path + ".prefix_caching", "must be true or false, got '" + *text + "'");
      }
    }
    if (auto v = b["dtype"]; v && !v.IsNull()) {
      if (auto d = string(v, path + ".dtype")) {
        if (*d != "float32" && *d != "bfloat16") add(v, path + ".dtype", "must be float32 or bfloat16");
        else lc.dtype = *d;
      }
    }
    if (auto v = b["fp8_experts"]; v && !v.IsNull()) {
      if (auto m = string(v, path + ".fp8_experts")) {
        if (*m != "tensor_cores" && *m != "dequantise_on_read" && *m != "dequantise_at_load")
          add(v, path + ".fp8_experts", "must be tensor_cores, dequantise_on_read or dequantise_at_load, got '" + *m + "'");
        else lc.fp8_experts = *m;
      }
    }
    if (auto v = b["kv_cache_memory"]; v && !v.IsNull()) {
      if (auto text = string(v, path + ".kv_cache_memory")) {
        double d = 0;
        auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), d);
        if (ec != std::errc() || end != text->data() + text->size() || !(d >= 0) || d > 1e15 || (d > 1 && d != std::floor(d))) {
          add(v, path + ".kv_cache_memory",
              "expected bytes (a whole number > 1) or a fraction in (0, 1], got '" + *text + "'");
        } else {
          lc.kv_cache_memory = d;
        }
      }
    }
  }

  /// One backend kind: its name, the keys only it takes, and their reader (which also sets the
  /// kind: config.hpp's backend_kind_config has its struct).
  struct kind_reader {
    std::string_view name;
    std::vector<std::string_view> keys;
    void (loader::*read)(const YAML::Node& b, const std::string& path, backend_config& bc);
  };

  /// The backend kinds, one line each; the first is what an unknown kind is checked as.
  static const std::vector<kind_reader>& kind_readers() {
    static const std::vector<std::string_view> remote_keys = {"base_url", "api_key", "headers", "transport", "health_check"};
    static const std::vector<std::string_view> openai_keys = {"base_url",  "api_key",      "headers",
                                                              "transport", "health_check", "responses"};
    static const std::vector<kind_reader> kinds = {
        {openai_backend_config::kind, openai_keys, &loader::read_openai_kind},
        {anthropic_backend_config::kind, remote_keys, &loader::read_remote_kind<anthropic_backend_config>},
        {local_engine_config::kind,
         {"checkpoint", "device", "max_batch", "dtype", "kv_cache_memory", "max_batch_tokens", "prefix_caching",
          "fp8_experts"},
         &loader::read_local_engine_kind},
    };
    return kinds;
  }

  void read_backends(const YAML::Node& n, config& c) {
    std::vector<backend_config>& backends = c.backends;
    if (!expect_list(n, "backends")) return;
    if (n.size() == 0) add(n, "backends", "at least one backend is required");
    std::vector<std::string_view> backend_keys = {"name", "kind", "optional", "timeouts", "ejection", "max_concurrency",
                                                  "max_queue", "queue_timeout", "queue_aging"};
    for (const auto& k : kind_readers()) {
      for (auto key : k.keys) {
        if (std::find(backend_keys.begin(), backend_keys.end(), key) == backend_keys.end()) backend_keys.push_back(key);
      }
    }
    std::set<std::string> names;
    for (std::size_t i = 0; i < n.size(); ++i) {
      const std::string path = "backends[" + std::to_string(i) + "]";
      const YAML::Node b = n[i];
      if (!expect_map(b, path)) continue;
      known_keys(b, path, backend_keys);
      backend_config bc;
      bool ok = true;
      // optional: true: a ${VAR} left unset disables this backend (with a warning) instead of
      // failing the load, so a config can name providers whose keys not every user has.
      bool optional = false;
      std::vector<std::string> unset;
      if (auto v = b["optional"]; v && !v.IsNull()) {
        if (auto t = string(v, path + ".optional")) {
          if (*t == "true") optional = true;
          else if (*t != "false") add(v, path + ".optional", "must be true or false");
        }
      }
      if (optional) unset_vars_ = &unset;
      struct sink_reset {
        std::vector<std::string>*& sink;
        ~sink_reset() { sink = nullptr; }
      } reset_sink{unset_vars_};
      if (auto name = required_string(b, "name", path)) {
        if (!valid_name(*name)) {
          add(b["name"], path + ".name", "a backend name uses only letters, digits, '_', '-' and '.'");
        } else if (!names.insert(*name).second) {
          add(b["name"], path + ".name", "duplicate backend name '" + *name + "'");
        }
        bc.name = *name;
      } else {
        ok = false;
      }
      const kind_reader* kind = &kind_readers().front();
      if (auto name = required_string(b, "kind", path)) {
        auto it = std::find_if(kind_readers().begin(), kind_readers().end(), [&](const kind_reader& k) { return k.name == *name; });
        if (it != kind_readers().end()) {
          kind = &*it;
        } else {
          std::string known;
          for (const auto& k : kind_readers()) known += (known.empty() ? "" : ", ") + std::string(k.name);
          add(b["kind"], path + ".kind", "unknown backend kind '" + *name + "' (known: " + known + ")");
        }
      }
      // A key of other kinds only: named with the kinds it is for.
      std::vector<std::string_view> foreign;
      for (const auto& k : kind_readers()) {
        for (auto key : k.keys) {
          const bool own = std::find(kind->keys.begin(), kind->keys.end(), key) != kind->keys.end();
          if (!own && std::find(foreign.begin(), foreign.end(), key) == foreign.end()) foreign.push_back(key);
        }
      }
      for (auto key : foreign) {
        const YAML::Node v = b[std::string(key)];
        if (!v) continue;
        std::vector<std::string_view> owners;
        for (const auto& k : kind_readers()) {
          if (std::find(k.keys.begin(), k.keys.end(), key) != k.keys.end()) owners.push_back(k.name);
        }
        std::string kinds;
        for (std::size_t o = 0; o < owners.size(); ++o) {
          kinds += (o == 0 ? "" : o + 1 == owners.size() ? " and " : ", ") + std::string(owners[o]);
        }
        add(v, path + "." + std::string(key),
            "'" + std::string(key) + "' is for kind" + (owners.size() > 1 ? "s " : " ") + kinds);
      }
      (this->*kind->read)(b, path, bc);
      if (auto t = b["timeouts"]) read_timeouts(t, path + ".timeouts", bc.timeouts);
      if (auto e = b["ejection"]) read_ejection(e, path + ".ejection", bc.ejection);
      if (auto v = b["max_concurrency"]) {
        if (auto i = integer(v, path + ".max_concurrency", 0, 1000000)) bc.max_concurrency = static_cast<unsigned>(*i);
      }
      if (auto v = b["max_queue"]) {
        if (auto i = integer(v, path + ".max_queue", 0, 1000000)) bc.max_queue = static_cast<unsigned>(*i);
      }
      if (auto v = b["queue_timeout"]) {
        read_duration(v, path + ".queue_timeout", bc.queue_timeout);
        bc.queue_timeout_set = true;
      }
      if (auto v = b["queue_aging"]) read_duration(v, path + ".queue_aging", bc.queue_aging);
      if (ok && !unset.empty()) {
        std::string vars;
        for (const auto& u : unset) {
          if (vars.find(u) == std::string::npos) vars += (vars.empty() ? "" : ", ") + u;
        }
        const std::string reason =
            "environment variable" + std::string(vars.find(',') == std::string::npos ? " " : "s ") + vars +
            (vars.find(',') == std::string::npos ? " is" : " are") + " not set";
        warn(b, path, "backend '" + bc.name + "' is disabled: " + reason);
        c.disabled_backends.push_back({bc.name, reason});
      } else if (ok) {
        backends.push_back(std::move(bc));
      }
    }
  }

  void read_routes(const YAML::Node& n, config& c) {
    if (!expect_list(n, "routes")) return;
    if (n.size() == 0) add(n, "routes", "at least one route is required");
    std::set<std::string> backend_names;
    for (const auto& b : c.backends) backend_names.insert(b.name);
    std::map<std::string, std::string> disabled;  // backend name -> why
    for (const auto& d : c.disabled_backends) disabled.emplace(d.name, d.reason);
    std::set<std::string> public_names;
    std::vector<std::pair<YAML::Node, std::string>> route_refs;  // fallbacks, checked at the end
    auto claim = [&](const YAML::Node& at, const std::string& path, const std::string& name) {
      if (!public_names.insert(name).second) add(at, path, "the model name '" + name + "' is already routed");
    };
    for (std::size_t i = 0; i < n.size(); ++i) {
      const std::string path = "routes[" + std::to_string(i) + "]";
      const YAML::Node r = n[i];
      if (!expect_map(r, path)) continue;
      known_keys(r, path,
                 {"model", "aliases", "targets", "strategy", "retry", "hedge", "fallbacks", "context_fallbacks"});
      route_config rc;
      if (auto v = r["strategy"]) {
        if (auto name = string(v, path + ".strategy")) {
          rc.strategy = *name;
          rc.strategy_line = v.Mark().line + 1;
        }
      }
      if (auto v = r["retry"]) read_retry(v, path + ".retry", rc.retry);
      if (auto v = r["hedge"]) {
        if (expect_map(v, path + ".hedge")) {
          known_keys(v, path + ".hedge", {"after"});
          if (auto a = v["after"]) read_duration(a, path + ".hedge.after", rc.hedge_after);
          else add(v, path + ".hedge.after", "'after' is required");
        }
      }
      if (auto v = r["fallbacks"]) read_name_list(v, path + ".fallbacks", rc.fallbacks, route_refs);
      if (auto v = r["context_fallbacks"]) {
        read_name_list(v, path + ".context_fallbacks", rc.context_fallbacks, route_refs);
      }
      if (auto model = required_string(r, "model", path)) {
        rc.model = *model;
        claim(r["model"], path + ".model", *model);
      }
      if (auto a = r["aliases"]; a && !a.IsNull()) {
        if (expect_list(a, path + ".aliases")) {
          for (std::size_t j = 0; j < a.size(); ++j) {
            const std::string apath = path + ".aliases[" + std::to_string(j) + "]";
            if (auto alias = string(a[j], apath)) {
              if (alias->empty() || alias->find_first_of("*?") != std::string::npos) {
                add(a[j], apath, "an alias is a plain, non-empty model name");
                continue;
              }
              claim(a[j], apath, *alias);
              rc.aliases.push_back(*alias);
            }
          }
        }
      }
      const YAML::Node targets = r["targets"];
      if (!targets || targets.IsNull() || (targets.IsSequence() && targets.size() == 0)) {
        add(targets ? targets : r, path + ".targets", "a route needs at least one target");
      } else if (expect_list(targets, path + ".targets")) {
        std::string dropped;  // disabled backends this route named
        for (std::size_t j = 0; j < targets.size(); ++j) {
          const std::string tpath = path + ".targets[" + std::to_string(j) + "]";
          const YAML::Node t = targets[j];
          if (!expect_map(t, tpath)) continue;
          known_keys(t, tpath, {"backend", "model", "weight", "price"});
          target_config tc;
          if (auto p = t["price"]) {
            read_price(p, tpath + ".price", tc.price);
            tc.price_source = "config";
          }
          if (auto w = t["weight"]) {
            if (auto i = integer(w, tpath + ".weight", 1, 10000)) tc.weight = static_cast<unsigned>(*i);
          }
          if (auto backend = required_string(t, "backend", tpath)) {
            if (auto d = disabled.find(*backend); d != disabled.end()) {
              if (dropped.find("'" + *backend + "'") == std::string::npos) {
                dropped += (dropped.empty() ? "'" : ", '") + *backend + "' (" + d->second + ")";
              }
              continue;  // the route keeps its other targets
            }
            if (!backend_names.count(*backend)) {
              add(t["backend"], tpath + ".backend", "unknown backend '" + *backend + "'");
            }
            tc.backend = *backend;
          }
          if (auto m = t["model"]; m && !m.IsNull()) {
            if (auto name = string(m, tpath + ".model")) tc.model = *name;
          }
          if (tc.price_source.empty()) price_from_catalogue(t, tpath, c, rc, tc);
          rc.targets.push_back(std::move(tc));
        }
        if (rc.targets.empty() && !dropped.empty()) {
          rc.unavailable = "every backend it routes to is disabled: " + dropped;
          warn(targets, path + ".targets", "requests get 503: " + rc.unavailable);
        }
      }
      c.routes.push_back(std::move(rc));
    }
    // A fallback names another route by its model name or alias (not a pattern).
    for (const auto& [node, item] : route_refs) {
      const std::string name = node.Scalar();
      if (!public_names.count(name) || name.find_first_of("*?") != std::string::npos) {
        add(node, item, "unknown route '" + name + "' (name a route's model or alias)");
      }
    }
  }

  /// A target without `price`: the catalogue's list price for its provider and upstream model,
  /// in the config's currency; else it is noted as unpriced (kind openai only: the local engine
  /// has no per-token price).
  void price_from_catalogue(const YAML::Node& t, const std::string& tpath, const config& c, const route_config& rc,
                            target_config& tc) {
    const backend_config* backend = nullptr;
    for (const auto& b : c.backends) {
      if (b.name == tc.backend) backend = &b;
    }
    if (backend == nullptr || backend->remote() == nullptr) return;
    const bool wildcard = tc.model.empty() && rc.model.find_first_of("*?") != std::string::npos;
    const std::string model = tc.model.empty() ? rc.model : tc.model;
    const auto& catalogue = price_catalogue::get();
    std::string why;
    if (wildcard) {
      why = "the route is a pattern, so the upstream model varies";
    } else if (auto it = catalogue.prices.find({url_host(backend->remote()->base_url), model}); it == catalogue.prices.end()) {
      why = "the price catalogue does not list '" + model + "' at " + url_host(backend->remote()->base_url);
    } else if (auto p = it->second.find(c.currency); p == it->second.end()) {
      why = "the price catalogue lists '" + model + "' in " + it->second.begin()->first + ", not " + c.currency;
    } else {
      tc.price = p->second;
      tc.price_source = "catalogue";
      return;
    }
    const auto mark = t.Mark();
    unpriced_.push_back(problem{file_, mark.line >= 0 ? mark.line + 1 : 0, mark.line >= 0 ? mark.column + 1 : 0, tpath,
                                "no price for backend '" + tc.backend + "': " + why +
                                    "; its requests cost 0 (set price: {input, output}, per million tokens)"});
  }

  void warn(const YAML::Node& at, const std::string& key, std::string message) {
    const auto mark = at.Mark();
    const bool known = mark.line >= 0;
    warnings_.push_back(problem{file_, known ? mark.line + 1 : 0, known ? mark.column + 1 : 0, key, std::move(message)});
  }

  std::string file_;
  const env_lookup& env_;
  std::vector<problem> problems_;
  std::vector<problem> warnings_;
  std::vector<problem> unpriced_;
  std::vector<std::string>* unset_vars_ = nullptr;  ///< set while reading an optional backend
};

}  // namespace

std::string price_catalogue_date() { return price_catalogue::get().as_of; }

std::optional<price_config> catalogue_price(std::string_view base_url, const std::string& model,
                                            const std::string& currency) {
  const auto& catalogue = price_catalogue::get();
  const auto it = catalogue.prices.find({url_host(base_url), model});
  if (it == catalogue.prices.end()) return std::nullopt;
  const auto p = it->second.find(currency);
  if (p == it->second.end()) return std::nullopt;
  return p->second;
}

load_result load_string(std::string_view yaml, const std::string& file_name, const env_lookup& env) {
  return loader(file_name, env).load(yaml);
}

load_result load_file(const std::string& path, const env_lookup& env) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    load_result r;
    r.problems.push_back(problem{path, 0, 0, "", "cannot read the file"});
    return r;
  }
  std::ostringstream text;
  text << in.rdbuf();
  return load_string(text.str(), path, env);
}

std::optional<int> parse_priority(std::string_view text) {
  if (text == "low") return 0;
  if (text == "normal") return 1;
  if (text == "high") return 2;
  if (text.size() == 1 && text[0] >= '0' && text[0] - '0' <= max_priority) return text[0] - '0';
  return std::nullopt;
}

std::string priority_name(int priority) {
  if (priority == 0) return "low";
  if (priority == 1) return "normal";
  if (priority == 2) return "high";
  return std::to_string(priority);
}

std::optional<std::pair<double, std::string>> parse_budget(std::string_view text) {
  auto slash = text.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  std::string amount(text.substr(0, slash));
  std::string_view period = text.substr(slash + 1);
  if (period != "day" && period != "month") return std::nullopt;
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(amount.c_str(), &end);
  if (amount.empty() || end != amount.c_str() + amount.size() || errno != 0 || !(v > 0) || v > 1e15) {
    return std::nullopt;
  }
  return std::pair{v, std::string(period)};
}

std::optional<std::int64_t> parse_expiry(std::string_view text) {
  int y = 0, mo = 0, d = 0, h = 23, mi = 59, sec = 59;
  std::string t(text);
  auto digits = [&](std::size_t from, std::size_t n) {
    for (std::size_t i = from; i < from + n; ++i) {
      if (!std::isdigit(static_cast<unsigned char>(t[i]))) return false;
    }
    return true;
  };
  if (t.size() != 10 && t.size() != 20) return std::nullopt;
  if (!digits(0, 4) || t[4] != '-' || !digits(5, 2) || t[7] != '-' || !digits(8, 2)) return std::nullopt;
  y = std::stoi(t.substr(0, 4));
  mo = std::stoi(t.substr(5, 2));
  d = std::stoi(t.substr(8, 2));
  if (t.size() == 20) {
    if (t[10] != 'T' || !digits(11, 2) || t[13] != ':' || !digits(14, 2) || t[16] != ':' || !digits(17, 2) ||
        t[19] != 'Z') {
      return std::nullopt;
    }
    h = std::stoi(t.substr(11, 2));
    mi = std::stoi(t.substr(14, 2));
    sec = std::stoi(t.substr(17, 2));
  }
  if (y < 1970 || h > 23 || mi > 59 || sec > 59) return std::nullopt;
  const std::chrono::year_month_day ymd{std::chrono::year{y}, std::chrono::month{unsigned(mo)},
                                        std::chrono::day{unsigned(d)}};
  if (!ymd.ok()) return std::nullopt;
  const auto days = std::chrono::sys_days(ymd).time_since_epoch().count();
  return std::int64_t(days) * 86400 + h * 3600 + mi * 60 + sec;
}

}  // namespace tollgate::config
