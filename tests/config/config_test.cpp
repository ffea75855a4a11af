#include <catch2/catch.hpp>

#include <map>

#include "config/config.hpp"

using namespace tollgate::config;

namespace {

env_lookup env_of(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

load_result load(const std::string& yaml, std::map<std::string, std::string> vars = {}) {
  return load_string(yaml, "t.yaml", env_of(std::move(vars)));
}

/// The problem whose key is `key`; fails the test when there is none.
const problem& find(const load_result& r, const std::string& key) {
  for (const auto& p : r.problems)
    if (p.key == key) return p;
  for (const auto& p : r.problems) UNSCOPED_INFO(p.to_string());
  FAIL("no problem with key " << key);
  return r.problems.front();
}

const std::string minimal = R"(backends:
  - name: up
    kind: openai
    base_url: http://127.0.0.1:9000/v1
routes:
  - model: m
    targets:
      - backend: up
)";

}  // namespace

TEST_CASE("a full config becomes typed structs", "[config]") {
  auto r = load(R"(server:
  listen: "[::1]:9090"
  threads: 4
  max_body_bytes: 2048
  shutdown_timeout: 5s
  idle_timeout: 1500ms
  access_log: /tmp/access.log
keys:
  - name: demo
    key: ${DEMO_KEY}
backends:
  - name: qiniu
    kind: openai
    base_url: https://api.qnaigc.com/v1/
    api_key: ${QINIU_KEY}
    headers: {X-Team: search}
    timeouts: {connect: 2s, first_token: 30s, idle: 45s, total: 10m}
routes:
  - model: deepseek-v3.2-chat
    aliases: [ds, ds-chat]
    targets:
      - backend: qiniu
        model: deepseek-v3.2
  - model: deepseek-*
    targets:
      - backend: qiniu
)",
                {{"DEMO_KEY", "tg-abc"}, {"QINIU_KEY", "sk-q"}});
  for (const auto& p : r.problems) UNSCOPED_INFO(p.to_string());
  REQUIRE(r.value);
  const config& c = *r.value;
  CHECK(c.source == "t.yaml");
  CHECK(c.server.listen_host == "::1");
  CHECK(c.server.listen_port == 9090);
  CHECK(c.server.threads == 4);
  CHECK(c.server.max_body_bytes == 2048);
  CHECK(c.server.shutdown_timeout == std::chrono::seconds(5));
  CHECK(c.server.idle_timeout == std::chrono::milliseconds(1500));
  CHECK(c.server.access_log == "/tmp/access.log");
  REQUIRE(c.keys.size() == 1);
  CHECK(c.keys[0].key == "tg-abc");
  REQUIRE(c.backends.size() == 1);
  CHECK(c.backends[0].remote()->base_url == "https://api.qnaigc.com/v1");  // trailing slash dropped
  CHECK(c.backends[0].remote()->api_key == "sk-q");
  CHECK(c.backends[0].remote()->headers.at("X-Team") == "search");
  CHECK(c.backends[0].timeouts.connect == std::chrono::seconds(2));
  CHECK(c.backends[0].timeouts.idle == std::chrono::seconds(45));
  CHECK(c.backends[0].timeouts.total == std::chrono::minutes(10));
  REQUIRE(c.routes.size() == 2);
  CHECK(c.routes[0].aliases == std::vector<std::string>{"ds", "ds-chat"});
  CHECK(c.routes[0].targets[0].model == "deepseek-v3.2");
  CHECK(c.routes[1].targets[0].model.empty());
}

TEST_CASE("defaults apply to what is left out", "[config]") {
  auto r = load(minimal);
  REQUIRE(r.value);
  CHECK(r.value->server.listen_host == "127.0.0.1");
  CHECK(r.value->server.listen_port == 8080);
  CHECK(r.value->server.max_body_bytes == 10 * 1024 * 1024);
  CHECK(r.value->keys.empty());
  CHECK(r.value->backends[0].timeouts.total == std::chrono::minutes(10));
}

TEST_CASE("environment expansion", "[config]") {
  auto r = load(R"(server:
  listen: ${HOST:-127.0.0.1}:${PORT}
  access_log: "cost$$ ${UNSET:-off} $HOME"
)" + minimal,
                {{"PORT", "7000"}});
  REQUIRE(r.value);
  CHECK(r.value->server.listen_port == 7000);
  CHECK(r.value->server.access_log == "cost$ off $HOME");

  // An empty variable takes the default; a set one wins over it.
  auto e = load("server: {access_log: \"${A:-x}${B:-y}\"}\n" + minimal, {{"A", ""}, {"B", "b"}});
  REQUIRE(e.value);
  CHECK(e.value->server.access_log == "xb");
}

TEST_CASE("a missing variable is an error at its line", "[config]") {
  auto r = load(minimal + R"(keys:
  - name: demo
    key: ${TOLLGATE_DEMO_KEY}
)");
  CHECK_FALSE(r.value);
  const auto& p = find(r, "keys[0].key");
  CHECK(p.line == 11);
  CHECK(p.message.find("TOLLGATE_DEMO_KEY") != std::string::npos);
  CHECK(p.to_string().rfind("t.yaml:11:", 0) == 0);
}

TEST_CASE("unknown keys are errors at every level, with lines", "[config]") {
  auto r = load(R"(server:
  listen: 127.0.0.1:8080
  thread: 2
backends:
  - name: up
    kind: openai
    base_url: http://127.0.0.1:9000/v1
    timeouts: {connect: 1s, frist_token: 2s}
    apikey: x
routes:
  - model: m
    targets:
      - backend: up
        wieght: 3
extra: true
)");
  CHECK_FALSE(r.value);
  CHECK(find(r, "server.thread").line == 3);
  CHECK(find(r, "backends[0].timeouts.frist_token").line == 8);
  CHECK(find(r, "backends[0].apikey").line == 9);
  CHECK(find(r, "routes[0].targets[0].wieght").line == 14);
  CHECK(find(r, "extra").line == 15);
  CHECK(r.problems.size() == 5);
}

TEST_CASE("duplicates and unknown backends", "[config]") {
  auto r = load(R"(keys:
  - {name: a, key: k1}
  - {name: a, key: k1}
backends:
  - {name: up, kind: openai, base_url: "http://127.0.0.1:1/v1"}
  - {name: up, kind: openai, base_url: "http://127.0.0.1:2/v1"}
routes:
  - model: m
    aliases: [n]
    targets: [{backend: up}]
  - model: n
    targets: [{backend: nowhere}]
  - model: m
    targets: []
)");
  CHECK_FALSE(r.value);
  CHECK(find(r, "keys[1].name").line == 3);
  CHECK(find(r, "keys[1].key").line == 3);
  CHECK(find(r, "backends[1].name").line == 6);
  CHECK(find(r, "routes[1].model").message.find("already routed") != std::string::npos);
  CHECK(find(r, "routes[1].targets[0].backend").message == "unknown backend 'nowhere'");
  CHECK(find(r, "routes[2].model").line == 13);
  CHECK(find(r, "routes[2].targets").message.find("at least one target") != std::string::npos);
}

TEST_CASE("bad URLs, listen addresses, numbers and durations", "[config]") {
  const std::vector<std::pair<std::string, std::string>> bad_urls = {
      {"ftp://host/v1", "scheme"}, {"https:///v1", "host"},     {"api.deepseek.com", "scheme"},
      {"http://h:99999/v1", "port"}, {"http://h:/v1", "port"}, {"http://h/v1?x=1", "query"},
      {"http://u:p@h/v1", "credentials"}, {"http://h /v1", "white space"}};
  for (const auto& [url, why] : bad_urls) {
    auto r = load("backends:\n  - {name: up, kind: openai, base_url: \"" + url +
                  "\"}\nroutes:\n  - {model: m, targets: [{backend: up}]}\n");
    INFO(url);
    REQUIRE_FALSE(r.value);
    const auto& p = find(r, "backends[0].base_url");
    CHECK(p.line == 2);
    CHECK(p.message.find(why) != std::string::npos);
  }
  for (const std::string& listen : std::vector<std::string>{"8080", "localhost:http", "1.2.3:80", "127.0.0.1:70000", "[::1]8080", "example.com:80"}) {
    INFO(listen);
    auto r = load("server: {listen: \"" + listen + "\"}\n" + minimal);
    CHECK_FALSE(r.value);
    CHECK(find(r, "server.listen").line == 1);
  }
  auto n = load("server: {threads: -1, max_body_bytes: lots, idle_timeout: 10 minutes, shutdown_timeout: 0s}\n" + minimal);
  CHECK_FALSE(n.value);
  find(n, "server.threads");
  find(n, "server.max_body_bytes");
  find(n, "server.idle_timeout");
  find(n, "server.shutdown_timeout");
  auto kind = load(R"(backends:
  - {name: up, kind: grpc, base_url: "http://h/v1"}
routes:
  - {model: m, targets: [{backend: up}]}
)");
  CHECK(find(kind, "backends[0].kind").message == "unknown backend kind 'grpc' (known: openai, anthropic, local_engine)");
  // An unknown kind is still checked as a remote one: its URL is required, an engine's key refused.
  auto unknown = load(R"(backends:
  - {name: up, kind: grpc, checkpoint: /models/x}
routes:
  - {model: m, targets: [{backend: up}]}
)");
  CHECK(find(unknown, "backends[0].base_url").line == 2);
  CHECK(find(unknown, "backends[0].checkpoint").message == "'checkpoint' is for kind local_engine");
  // A remote kind's keys on a local engine name both kinds they are for, at their lines.
  auto local = load(R"(backends:
  - name: local
    kind: local_engine
    checkpoint: /models/x
    base_url: http://h/v1
    health_check: {path: /models}
routes:
  - {model: m, targets: [{backend: local}]}
)");
  CHECK_FALSE(local.value);
  CHECK(find(local, "backends[0].base_url").message == "'base_url' is for kinds openai and anthropic");
  CHECK(find(local, "backends[0].base_url").line == 5);
  CHECK(find(local, "backends[0].health_check").message == "'health_check' is for kinds openai and anthropic");
}

TEST_CASE("a key given twice is a problem at its second line", "[config]") {
  auto r = load("server: {listen: 127.0.0.1:1}\nserver: {listen: 127.0.0.1:2}\n" + minimal +
                "keys:\n  - {name: a, key: k, name: b}\n");
  CHECK_FALSE(r.value);
  const auto& server = find(r, "server");
  CHECK(server.line == 2);
  CHECK(server.message == "duplicate key 'server'");
  CHECK(find(r, "keys[0].name").message == "duplicate key 'name'");
}

TEST_CASE("a malformed variable reference is a problem", "[config]") {
  auto r = load("server: {access_log: \"${}\", listen: \"${PORT\"}\n" + minimal);
  CHECK_FALSE(r.value);
  CHECK(find(r, "server.access_log").message.find("variable name is missing") != std::string::npos);
  CHECK(find(r, "server.listen").message.find("unterminated") != std::string::npos);
}

TEST_CASE("wrong shapes are problems, not crashes", "[config]") {
  for (const std::string& yaml : std::vector<std::string>{"", "just a string", "[1, 2]", "backends: 3\nroutes: {a: 1}\n",
                                 "backends: [1]\nroutes: [[]]\n", "server: []\n" + minimal,
                                 "keys: {a: b}\n" + minimal, "backends:\n  - name: [x]\n    kind: {}\nroutes: []\n",
                                 "backends: *undefined_anchor\n", std::string(20000, '['), "? [a, b]\n: 1\n" + minimal}) {
    INFO(yaml);
    auto r = load(yaml);
    CHECK_FALSE(r.value);
    CHECK_FALSE(r.problems.empty());
  }
}

TEST_CASE("YAML syntax errors carry the parser's line", "[config]") {
  auto r = load("server:\n  listen: [unclosed\nroutes: x\n");
  REQUIRE(r.problems.size() == 1);
  CHECK(r.problems[0].message.find("YAML syntax error") == 0);
  CHECK(r.problems[0].line >= 2);
}

TEST_CASE("every problem is reported at once", "[config]") {
  auto r = load(R"(server: {threads: x}
backends:
  - {name: up, kind: nope, base_url: "gopher://h"}
routes:
  - {model: m, targets: [{backend: ghost}]}
)");
  CHECK(r.problems.size() == 4);
}

TEST_CASE("parse_duration", "[config]") {
  CHECK(parse_duration("250ms") == duration(250));
  CHECK(parse_duration("2s") == duration(2000));
  CHECK(parse_duration("10m") == duration(600000));
  CHECK(parse_duration("1h") == duration(3600000));
  CHECK(parse_duration("7") == duration(7000));
  for (const char* bad : {"", "s", "-1s", "1.5s", "2 s", "1d", "99999999999999999999s", "9223372036854775807h"}) {
    INFO(bad);
    CHECK_FALSE(parse_duration(bad));
  }
}

TEST_CASE("the shipped examples load", "[config]") {
  // Every variable set, to a value of the kind its name asks for.
  const auto all_set = [](const std::string& name) -> std::optional<std::string> {
    if (name.ends_with("URL") || name.ends_with("UPSTREAM")) return std::string("http://127.0.0.1:9/v1");
    if (name.ends_with("LISTEN")) return std::string("127.0.0.1:8080");
    return "value-of-" + name;
  };
  for (const char* file : {"/config/examples/providers.yaml", "/config/examples/demo.yaml"}) {
    auto r = load_file(std::string(TOLLGATE_SOURCE_DIR) + file, all_set);
    for (const auto& p : r.problems) UNSCOPED_INFO(p.to_string());
    CHECK(r.value);
  }
  auto none = load_file(std::string(TOLLGATE_SOURCE_DIR) + "/config/examples/demo.yaml",
                        [](const std::string&) -> std::optional<std::string> { return std::nullopt; });
  CHECK(none.value);  // the demo config runs with no environment at all
  auto missing = load_file("/nonexistent/tollgate.yaml");
  REQUIRE(missing.problems.size() == 1);
  CHECK(missing.problems[0].line == 0);
}

TEST_CASE("providers.yaml loads with the gateway's key and one provider's key", "[config]") {
  const std::map<std::string, std::string> vars{{"TOLLGATE_API_KEY", "tg-test"}, {"DEEPSEEK_API_KEY", "sk-test"}};
  auto r = load_file(std::string(TOLLGATE_SOURCE_DIR) + "/config/examples/providers.yaml", env_of(vars));
  for (const auto& p : r.problems) UNSCOPED_INFO(p.to_string());
  REQUIRE(r.value);
  std::vector<std::string> enabled;
  for (const auto& b : r.value->backends) enabled.push_back(b.name);
  CHECK(enabled == std::vector<std::string>{"deepseek", "local-vllm"});
  REQUIRE(r.value->disabled_backends.size() == 2);
  CHECK(r.value->disabled_backends[0].name == "qiniu");
  CHECK(r.value->disabled_backends[0].reason == "environment variable QINIU_API_KEY is not set");
  // One warning per disabled backend, and one for the route only Qiniu served (deepseek-*).
  std::vector<std::string> warned;
  for (const auto& w : r.warnings) warned.push_back(w.key);
  CHECK(warned == std::vector<std::string>{"backends[0]", "backends[1]", "routes[3].targets"});
  for (const auto& route : r.value->routes) {
    for (const auto& t : route.targets) CHECK((t.backend == "deepseek" || t.backend == "local-vllm"));
    if (route.model == "deepseek-v3.2-chat") CHECK(route.targets.size() == 1);
  }
  // Without the gateway's own key it still refuses: that one is not optional.
  auto no_key = load_file(std::string(TOLLGATE_SOURCE_DIR) + "/config/examples/providers.yaml",
                          env_of({{"DEEPSEEK_API_KEY", "sk-test"}}));
  CHECK_FALSE(no_key.value);
}

TEST_CASE("optional backends: an unset variable disables the backend with a warning", "[config]") {
  const std::string yaml = R"(backends:
  - name: paid
    kind: openai
    optional: true
    base_url: https://api.example.com/v1
    api_key: ${PAID_KEY}
  - name: free
    kind: openai
    base_url: http://127.0.0.1:9000/v1
  - name: strict
    kind: openai
    base_url: http://127.0.0.1:9001/v1
    api_key: ${STRICT_KEY:-none}
routes:
  - model: mixed
    targets: [{backend: paid}, {backend: free}]
  - model: only-paid
    targets: [{backend: paid, model: x}, {backend: paid, model: y}]
)";
  SECTION("unset: left out, its targets dropped, a route with none left is unavailable") {
    auto r = load(yaml);
    for (const auto& p : r.problems) UNSCOPED_INFO(p.to_string());
    REQUIRE(r.value);
    REQUIRE(r.value->backends.size() == 2);
    CHECK(r.value->backends[0].name == "free");
    REQUIRE(r.value->disabled_backends.size() == 1);
    CHECK(r.value->disabled_backends[0].reason == "environment variable PAID_KEY is not set");
    REQUIRE(r.value->routes.size() == 2);
    REQUIRE(r.value->routes[0].targets.size() == 1);
    CHECK(r.value->routes[0].targets[0].backend == "free");
    CHECK(r.value->routes[0].unavailable.empty());
    CHECK(r.value->routes[1].targets.empty());
    CHECK(r.value->routes[1].unavailable ==
          "every backend it routes to is disabled: 'paid' (environment variable PAID_KEY is not set)");
    REQUIRE(r.warnings.size() == 2);
    CHECK(r.warnings[0].key == "backends[0]");
    CHECK(r.warnings[0].line == 2);
    CHECK(r.warnings[0].message == "backend 'paid' is disabled: environment variable PAID_KEY is not set");
    CHECK(r.warnings[1].key == "routes[1].targets");
    CHECK(r.warnings[1].line == 18);
  }
  SECTION("set but empty counts as unset") {
    auto r = load(yaml, {{"PAID_KEY", ""}});
    REQUIRE(r.value);
    CHECK(r.value->disabled_backends.size() == 1);
  }
  SECTION("set: the backend is there and nothing warns") {
    auto r = load(yaml, {{"PAID_KEY", "sk-1"}});
    REQUIRE(r.value);
    CHECK(r.value->backends.size() == 3);
    CHECK(r.value->backends[0].remote()->api_key == "sk-1");
    CHECK(r.value->disabled_backends.empty());
    CHECK(r.warnings.empty());
    CHECK(r.value->routes[1].targets.size() == 2);
  }
  SECTION("without optional an unset variable is still an error, and other problems still count") {
    std::string strict = yaml;
    strict.erase(strict.find("    optional: true\n"), 19);
    auto r = load(strict);
    CHECK_FALSE(r.value);
    CHECK(find(r, "backends[0].api_key").message == "environment variable PAID_KEY is not set");
    std::string broken = yaml;
    broken.replace(broken.find("https://api.example.com"), 23, "ftp://api.example.com");
    auto b = load(broken);
    CHECK_FALSE(b.value);
  }
  SECTION("optional must be a boolean") {
    std::string bad = yaml;
    bad.replace(bad.find("optional: true"), 14, "optional: maybe");
    CHECK(find(load(bad, {{"PAID_KEY", "k"}}), "backends[0].optional").message == "must be true or false");
  }
}

TEST_CASE("the price catalogue prices targets that name none, and a target's own price wins", "[config][prices]") {
  const std::string yaml = R"(currency: ${CUR:-CNY}
backends:
  - {name: ds, kind: openai, base_url: "https://api.deepseek.com/v1"}
  - {name: other, kind: openai, base_url: "https://api.example.com/v1"}
routes:
  - model: chat
    targets:
      - {backend: ds, model: deepseek-flash}
      - {backend: ds, model: deepseek-flash, price: {input: 9, output: 10}}
      - {backend: other, model: deepseek-flash}
      - {backend: ds, model: deepseek-v4-flash}
      - {backend: ds, model: deepseek-chat}
  - model: deepseek-v4-pro
    targets: [{backend: ds}]
  - model: deepseek-*
    targets: [{backend: ds}]
)";
  auto r = load(yaml);
  for (const auto& p : r.problems) UNSCOPED_INFO(p.to_string());
  REQUIRE(r.value);
  // DeepSeek's peak prices (config/prices.yaml): off-peak calls cost half, so these are an upper bound.
  const auto& chat = r.value->routes[0].targets;
  CHECK(chat[0].price_source == "catalogue");
  CHECK(chat[0].price.input == 2);
  CHECK(chat[0].price.cached_input == 0.04);
  CHECK(chat[0].price.output == 8);
  CHECK(chat[1].price_source == "config");  // overridden per target
  CHECK(chat[1].price.input == 9);
  CHECK(chat[1].price.cached_input == 9);
  CHECK(chat[2].price_source.empty());  // the same model name at another provider: unknown
  CHECK(chat[2].price.input == 0);
  // A legacy name the page still accepts is billed at the Flash price; a retired one is not listed.
  CHECK(chat[3].price_source == "catalogue");
  CHECK(chat[3].price.output == 8);
  CHECK(chat[4].price_source.empty());
  // No `model` on the target: the route's name is what goes upstream.
  const auto& pro = r.value->routes[1].targets[0];
  CHECK(pro.price_source == "catalogue");
  CHECK(pro.price.input == 9);
  CHECK(pro.price.cached_input == 0.3);
  CHECK(pro.price.output == 27);
  CHECK(r.value->routes[2].targets[0].price_source.empty());
  REQUIRE(r.unpriced.size() == 3);
  CHECK(r.unpriced[0].key == "routes[0].targets[2]");
  CHECK(r.unpriced[0].line == 10);
  CHECK(r.unpriced[0].message ==
        "no price for backend 'other': the price catalogue does not list 'deepseek-flash' at api.example.com; its "
        "requests cost 0 (set price: {input, output}, per million tokens)");
  CHECK(r.unpriced[1].key == "routes[0].targets[4]");
  CHECK(r.unpriced[1].message.find("does not list 'deepseek-chat' at api.deepseek.com") != std::string::npos);
  CHECK(r.unpriced[2].key == "routes[2].targets[0]");
  CHECK(r.unpriced[2].message.find("the route is a pattern") != std::string::npos);
  CHECK(r.warnings.empty());  // unpriced targets are check-config's business, not a load warning

  auto usd = load(yaml, {{"CUR", "USD"}});
  REQUIRE(usd.value);
  const auto& flash_usd = usd.value->routes[0].targets[0].price;
  CHECK(flash_usd.input == 0.30);
  CHECK(flash_usd.cached_input == 0.006);
  CHECK(flash_usd.output == 1.20);
  const auto& pro_usd = usd.value->routes[1].targets[0].price;
  CHECK(pro_usd.input == 1.32);
  CHECK(pro_usd.cached_input == 0.044);
  CHECK(pro_usd.output == 3.96);
  auto eur = load(yaml, {{"CUR", "EUR"}});
  REQUIRE(eur.value);
  CHECK(eur.value->routes[0].targets[0].price_source.empty());
  CHECK(eur.unpriced.size() == 6);
  CHECK(price_catalogue_date() == "2026-10-10");
}

TEST_CASE("server.access_log_skip takes paths", "[config]") {
  auto r = load("server: {access_log_skip: [/metrics, /healthz]}\n" + minimal);
  REQUIRE(r.value);
  CHECK(r.value->server.access_log_skip == std::vector<std::string>{"/metrics", "/healthz"});
  CHECK(find(load("server: {access_log_skip: [metrics]}\n" + minimal), "server.access_log_skip[0]").message ==
        "expected a path like /metrics");
  CHECK(find(load("server: {access_log_skip: /metrics}\n" + minimal), "server.access_log_skip").message ==
        "expected a list");
}

TEST_CASE("resilience settings: retry, fallbacks, strategy, weights, ejection", "[config]") {
  auto r = load(R"(backends:
  - name: up
    kind: openai
    base_url: http://127.0.0.1:9000/v1
    ejection: {after_failures: 3, cooldown: 5s, max_cooldown: 1m}
routes:
  - model: main
    strategy: weighted
    retry: {attempts: 4, backoff: 50ms, max_backoff: 1s}
    fallbacks: [spare]
    context_fallbacks: [long]
    targets: [{backend: up, weight: 7}]
  - model: spare
    targets: [{backend: up}]
  - model: long
    targets: [{backend: up}]
)");
  for (const auto& p : r.problems) UNSCOPED_INFO(p.to_string());
  REQUIRE(r.value);
  const auto& route = r.value->routes[0];
  CHECK(route.strategy == "weighted");
  CHECK(route.strategy_line == 8);
  CHECK(route.retry.attempts == 4);
  CHECK(route.retry.backoff == std::chrono::milliseconds(50));
  CHECK(route.fallbacks == std::vector<std::string>{"spare"});
  CHECK(route.context_fallbacks == std::vector<std::string>{"long"});
  CHECK(route.targets[0].weight == 7);
  CHECK(r.value->backends[0].ejection.after_failures == 3);
  CHECK(r.value->backends[0].ejection.max_cooldown == std::chrono::minutes(1));
  CHECK(r.value->routes[1].strategy == "priority");
  CHECK(r.value->routes[1].retry.attempts == 0);  // one attempt per target
}

TEST_CASE("resilience settings are checked", "[config]") {
  auto r = load(R"(backends:
  - name: up
    kind: openai
    base_url: http://127.0.0.1:9000/v1
    ejection: {cooldown: 10s, max_cooldown: 1s}
routes:
  - model: main
    retry: {attempts: 0, backoff: 2s, max_backoff: 1s}
    fallbacks: [nowhere, main-*]
    targets: [{backend: up, weight: 0}]
  - model: main-*
    targets: [{backend: up}]
)");
  CHECK_FALSE(r.value);
  CHECK(find(r, "backends[0].ejection.max_cooldown").line == 5);
  CHECK(find(r, "routes[0].retry.attempts").line == 8);
  CHECK(find(r, "routes[0].retry.max_backoff").line == 8);
  CHECK(find(r, "routes[0].fallbacks[0]").message.find("unknown route 'nowhere'") == 0);
  CHECK(find(r, "routes[0].fallbacks[1]").line == 9);
  CHECK(find(r, "routes[0].targets[0].weight").line == 10);
}

TEST_CASE("health checks and the admin key", "[config]") {
  auto ok = load("server: {admin_key: adm-0123456789abcdef}\n" + minimal);
  REQUIRE(ok.value);
  CHECK(ok.value->server.admin_key == "adm-0123456789abcdef");
  CHECK_FALSE(ok.value->backends[0].remote()->health_check.enabled);

  auto hc = load(R"(backends:
  - name: up
    kind: openai
    base_url: http://127.0.0.1:9000/v1
    health_check: {path: /health, interval: 5s, timeout: 1s, unhealthy_after: 2, healthy_after: 3}
routes:
  - {model: m, targets: [{backend: up}]}
)");
  REQUIRE(hc.value);
  const auto& h = hc.value->backends[0].remote()->health_check;
  CHECK(h.enabled);
  CHECK(h.path == "/health");
  CHECK(h.interval == std::chrono::seconds(5));
  CHECK(h.unhealthy_after == 2);
  CHECK(h.healthy_after == 3);

  auto bad = load(R"(server: {admin_key: short}
backends:
  - name: up
    kind: openai
    base_url: http://127.0.0.1:9000/v1
    health_check: {path: health, unhealthy_after: 0, every: 5s}
routes:
  - {model: m, targets: [{backend: up}]}
)");
  CHECK(find(bad, "server.admin_key").line == 1);
  CHECK(find(bad, "backends[0].health_check.path").line == 6);
  find(bad, "backends[0].health_check.unhealthy_after");
  find(bad, "backends[0].health_check.every");
}

TEST_CASE("target prices", "[config]") {
  auto r = load(R"(backends:
  - {name: up, kind: openai, base_url: "http://127.0.0.1:9000/v1"}
routes:
  - model: m
    strategy: cost
    targets:
      - {backend: up, price: {input: 2.0, cached_input: 0.5, cache_write: 2.5, output: 8}}
      - {backend: up, model: other, price: {input: 1.5, output: 3}}
)");
  REQUIRE(r.value);
  const auto& t = r.value->routes[0].targets;
  CHECK(t[0].price.input == 2.0);
  CHECK(t[0].price.cached_input == 0.5);
  CHECK(t[0].price.cache_write == 2.5);
  CHECK(t[0].price.output == 8.0);
  CHECK(t[1].price.cached_input == 1.5);  // no discount given: same as input
  CHECK(t[1].price.cache_write == 1.5);   // no premium given: same as input
  auto bad = load(R"(backends:
  - {name: up, kind: openai, base_url: "http://127.0.0.1:9000/v1"}
routes:
  - {model: m, targets: [{backend: up, price: {input: -1, output: cheap, per_call: 2, cache_write: -3}}]}
)");
  find(bad, "routes[0].targets[0].price.input");
  find(bad, "routes[0].targets[0].price.cache_write");
  find(bad, "routes[0].targets[0].price.output");
  find(bad, "routes[0].targets[0].price.per_call");
}

TEST_CASE("key limits and model patterns", "[config]") {
  auto r = load(minimal + R"(keys:
  - {name: a, key: k-a, models: ["deepseek-*", qwen3-32b], rpm: 60, tpm: 100000, max_concurrency: 4}
  - {name: b, key: k-b}
)");
  REQUIRE(r.value);
  const auto& a = r.value->keys[0];
  CHECK(a.models == std::vector<std::string>{"deepseek-*", "qwen3-32b"});
  CHECK(a.rpm == 60);
  CHECK(a.tpm == 100000);
  CHECK(a.max_concurrency == 4);
  CHECK(r.value->keys[1].models.empty());
  auto bad = load(minimal + "keys:\n  - {name: a, key: k, rpm: -1, tpm: lots, models: deepseek}\n");
  find(bad, "keys[0].rpm");
  find(bad, "keys[0].tpm");
  CHECK(find(bad, "keys[0].models").message == "expected a list");
}

TEST_CASE("store and currency", "[config]") {
  auto r = load("currency: USD\nstore: {sqlite: /var/lib/tollgate/ledger.db}\n" + minimal);
  REQUIRE(r.value);
  CHECK(r.value->currency == "USD");
  CHECK(r.value->sqlite_path == "/var/lib/tollgate/ledger.db");
  CHECK(load(minimal).value->sqlite_path.empty());
  auto bad = load("currency: dollars\nstore: {postgres: x, sqlite: \"\"}\n" + minimal);
  CHECK(find(bad, "currency").line == 1);
  CHECK(find(bad, "store.postgres").line == 2);
  CHECK(find(bad, "store.sqlite").line == 2);
}

TEST_CASE("local engine backends and key budgets in the config", "[config]") {
  auto ok = load(R"(
metering: {tokenizer: /tmp/tokenizer.json}
keys:
  - {name: k, key: tg-k, budget: 12.5/month, expires: 2030-01-02}
backends:
  - {name: gpu, kind: local_engine, checkpoint: /models/tiny, device: "cuda:0", max_batch: 16, dtype: bfloat16,
     kv_cache_memory: 0.85, max_batch_tokens: 4096, prefix_caching: false, fp8_experts: dequantise_on_read}
  - {name: cpu, kind: local_engine, checkpoint: /models/tiny, kv_cache_memory: 40000000000}
routes:
  - {model: tiny, targets: [{backend: gpu}, {backend: cpu}]}
)");
  REQUIRE(ok.value);
  const auto& c = *ok.value;
  CHECK(c.tokenizer_path == "/tmp/tokenizer.json");
  CHECK(c.keys[0].budget == 12.5);
  CHECK(c.keys[0].budget_period == "month");
  CHECK(c.keys[0].expires_unix == 1893628799);  // 2030-01-02T23:59:59Z
  CHECK(c.backends[0].kind() == "local_engine");
  CHECK(c.backends[0].local_engine()->checkpoint == "/models/tiny");
  CHECK(c.backends[0].local_engine()->device == "cuda:0");
  CHECK(c.backends[0].local_engine()->max_batch == 16);
  CHECK(c.backends[0].local_engine()->dtype == "bfloat16");
  CHECK(c.backends[0].local_engine()->kv_cache_memory == 0.85);
  CHECK(c.backends[0].local_engine()->max_batch_tokens == 4096);
  CHECK(c.backends[1].local_engine()->device == "cpu");
  CHECK(c.backends[1].local_engine()->max_batch == 8);
  CHECK(c.backends[1].local_engine()->dtype.empty());
  CHECK(c.backends[1].local_engine()->kv_cache_memory == 40e9);
  CHECK(c.backends[1].local_engine()->max_batch_tokens == 2048);
  CHECK_FALSE(c.backends[0].local_engine()->prefix_caching);
  CHECK(c.backends[1].local_engine()->prefix_caching);
  CHECK(c.backends[0].local_engine()->fp8_experts == "dequantise_on_read");
  CHECK(c.backends[1].local_engine()->fp8_experts == "tensor_cores");

  auto bad = load(R"(
keys:
  - {name: k, key: tg-k, budget: 5/week, expires: soon}
backends:
  - {name: a, kind: local_engine, base_url: "http://x", device: tpu, max_batch: 0}
  - {name: b, kind: openai, base_url: "http://x", checkpoint: /m, dtype: float32}
  - {name: c, kind: local_engine, checkpoint: /m,
     dtype: float16, kv_cache_memory: 1.5, max_batch_tokens: 0}
  - {name: d, kind: local_engine, checkpoint: /m, kv_cache_memory: -1,
     prefix_caching: sometimes}
  - {name: e, kind: openai, base_url: "http://x", prefix_caching: true}
  - {name: f, kind: local_engine, checkpoint: /m, fp8_experts: float16}
routes:
  - {model: m, targets: [{backend: a}]}
)");
  CHECK(find(bad, "keys[0].budget").line == 3);
  CHECK(find(bad, "keys[0].expires").line == 3);
  CHECK(find(bad, "backends[0].checkpoint").message.find("required") != std::string::npos);
  CHECK(find(bad, "backends[0].base_url").message.find("kinds openai and anthropic") != std::string::npos);
  CHECK(find(bad, "backends[0].device").message == "must be cpu or cuda:N");
  find(bad, "backends[0].max_batch");
  CHECK(find(bad, "backends[1].checkpoint").message.find("kind local_engine") != std::string::npos);
  CHECK(find(bad, "backends[1].dtype").message.find("kind local_engine") != std::string::npos);
  CHECK(find(bad, "backends[2].dtype").message == "must be float32 or bfloat16");
  CHECK(find(bad, "backends[2].dtype").line == 8);
  CHECK(find(bad, "backends[2].kv_cache_memory").message.find("got '1.5'") != std::string::npos);
  CHECK(find(bad, "backends[2].max_batch_tokens").line == 8);
  CHECK(find(bad, "backends[3].kv_cache_memory").line == 9);
  CHECK(find(bad, "backends[3].prefix_caching").line == 10);
  CHECK(find(bad, "backends[3].prefix_caching").message == "must be true or false, got 'sometimes'");
  CHECK(find(bad, "backends[4].prefix_caching").message.find("kind local_engine") != std::string::npos);
  CHECK(find(bad, "backends[5].fp8_experts").message.find("got 'float16'") != std::string::npos);
  CHECK(find(bad, "backends[5].fp8_experts").line == 12);
}

TEST_CASE("transport: native for http, curl for https, or as given", "[config]") {
  auto r = load(R"(backends:
  - {name: plain, kind: openai, base_url: "http://127.0.0.1:9000/v1"}
  - {name: tls, kind: openai, base_url: "https://api.example.com/v1"}
  - {name: forced, kind: openai, base_url: "http://127.0.0.1:9001/v1", transport: curl}
  - {name: said, kind: openai, base_url: "http://127.0.0.1:9002/v1", transport: native}
  - {name: automatic, kind: openai, base_url: "https://api.example.com/v1", transport: auto}
routes:
  - {model: m, targets: [{backend: plain}]}
)");
  REQUIRE(r.value);
  const auto& b = r.value->backends;
  CHECK(b[0].remote()->transport == "native");
  CHECK(b[1].remote()->transport == "curl");
  CHECK(b[2].remote()->transport == "curl");
  CHECK(b[3].remote()->transport == "native");
  CHECK(b[4].remote()->transport == "curl");
  auto bad = load(R"(backends:
  - {name: tls, kind: openai, base_url: "https://api.example.com/v1", transport: native}
  - {name: odd, kind: openai, base_url: "http://127.0.0.1:9000/v1", transport: h3}
  - {name: gpu, kind: local_engine, checkpoint: /m, transport: curl}
routes:
  - {model: m, targets: [{backend: tls}]}
)");
  CHECK_THAT(find(bad, "backends[0].transport").message, Catch::Contains("plain http:// only"));
  CHECK_THAT(find(bad, "backends[1].transport").message, Catch::Contains("auto, native or curl"));
  find(bad, "backends[2].transport");
  auto framing = load(R"(backends:
  - {name: up, kind: openai, base_url: "http://127.0.0.1:9000/v1", headers: {Content-Length: "5", connection: close, X-Ok: "1"}}
routes:
  - {model: m, targets: [{backend: up}]}
)");
  CHECK_THAT(find(framing, "backends[0].headers.Content-Length").message, Catch::Contains("set by the gateway"));
  find(framing, "backends[0].headers.connection");
  CHECK(framing.problems.size() == 2);
}

TEST_CASE("control characters in values that become upstream headers are config errors with their line",
          "[config][hardening]") {
  const std::string yaml = R"(backends:
  - name: up
    kind: openai
    base_url: http://127.0.0.1:9000/v1
    api_key: ${KEY}
    headers: {X-Team: "${TEAM}"}
    health_check: {path: "${PROBE}"}
routes:
  - model: m
    targets:
      - backend: up
)";
  const std::map<std::string, std::string> fine = {{"KEY", "sk-1"}, {"TEAM", "a\tb"}, {"PROBE", "/models"}};
  CHECK(load(yaml, fine).value);
  for (const std::string& bad : {std::string("\n"), std::string("\r"), std::string(1, '\0'), std::string("\x01"),
                                std::string("\x7f"), std::string("\r\nX-Evil: 1")}) {
    INFO("bad bytes: " << bad.size());
    auto vars = fine;
    vars["KEY"] = "sk-secret" + bad;  // a secret file read with its trailing newline, or worse
    const auto r = load(yaml, vars);
    CHECK_FALSE(r.value);
    const auto& p = find(r, "backends[0].api_key");
    CHECK(p.line == 5);
    CHECK(p.message.find("control characters") != std::string::npos);
    vars = fine;
    vars["TEAM"] = "search" + bad;
    CHECK(find(load(yaml, vars), "backends[0].headers.X-Team").line == 6);
    vars = fine;
    vars["PROBE"] = "/models" + bad;
    CHECK(find(load(yaml, vars), "backends[0].health_check.path").line == 7);
  }
  // A header name is a token.
  auto r = load(R"y(backends:
  - {name: up, kind: openai, base_url: "http://127.0.0.1:9000/v1", headers: {"X(A)": v}}
routes: [{model: m, targets: [{backend: up}]}]
)y");
  CHECK(find(r, "backends[0].headers.X(A)").message == "invalid header name");
  r = load("backends:\n  - {name: up, kind: openai, base_url: \"http://127.0.0.1:9000/v1\\x01\"}\n"
           "routes: [{model: m, targets: [{backend: up}]}]\n");
  CHECK(find(r, "backends[0].base_url").message.find("control character") != std::string::npos);
}

TEST_CASE("shared state: store.postgres, store.spool and limits", "[config]") {
  auto r = load("store: {postgres: \"postgresql://tg@db:5432/tollgate\", spool: /var/spool/tollgate}\n"
                "limits: {redis: \"redis://cache:6379/2\", on_redis_down: reject, replicas: 3}\n" +
                minimal);
  REQUIRE(r.value);
  CHECK(r.value->postgres_url == "postgresql://tg@db:5432/tollgate");
  CHECK(r.value->sqlite_path.empty());
  CHECK(r.value->spool_dir == "/var/spool/tollgate");
  CHECK(r.value->limits.redis_url == "redis://cache:6379/2");
  CHECK(r.value->limits.on_redis_down == "reject");
  CHECK(r.value->limits.replicas == 3);
  auto defaults = load("limits: {redis: \"redis://127.0.0.1\"}\n" + minimal);
  REQUIRE(defaults.value);
  CHECK(defaults.value->limits.on_redis_down == "local");
  CHECK(defaults.value->limits.replicas == 0);
  CHECK(load(minimal).value->limits.redis_url.empty());

  auto both = load("store: {sqlite: a.db, postgres: \"postgresql://db/x\"}\n" + minimal);
  CHECK(find(both, "store.postgres").message == "set either store.sqlite or store.postgres, not both");
  auto bad = load("limits:\n  redis: cache:6379\n  on_redis_down: maybe\n  replicas: -1\n  shards: 2\n" + minimal);
  CHECK(find(bad, "limits.redis").line == 2);
  CHECK(find(bad, "limits.on_redis_down").message == "expected local or reject");
  CHECK(find(bad, "limits.replicas").line == 4);
  CHECK(find(bad, "limits.shards").message == "unknown key 'shards'");
  auto sync = load("store: {postgres: \"postgresql://db/x\", flush_interval: sync}\n" + minimal);
  CHECK(find(sync, "store.flush_interval").line == 1);
  auto orphan = load("limits: {on_redis_down: reject}\n" + minimal);
  CHECK(find(orphan, "limits").message == "on_redis_down and replicas need limits.redis");
}

TEST_CASE("server.cors takes origins, checked with their lines, kind anthropic is a remote backend", "[config]") {
  auto ok = load("server:\n  cors: {origins: [\"https://app.example.com\", \"http://localhost:5173\", \"*\"]}\n" + minimal);
  REQUIRE(ok.value);
  CHECK(ok.value->server.cors_origins == std::vector<std::string>{"https://app.example.com", "http://localhost:5173", "*"});
  CHECK(load(minimal).value->server.cors_origins.empty());

  auto bad = load("server:\n  cors:\n    origins: [https://app.example.com/path, app.example.com]\n    methods: [GET]\n" + minimal);
  CHECK_FALSE(bad.value);
  CHECK(find(bad, "server.cors.origins[0]").line == 3);
  CHECK(find(bad, "server.cors.origins[1]").message.find("expected an origin") != std::string::npos);
  CHECK(find(bad, "server.cors.methods").line == 4);

  auto anthropic = load(R"(backends:
  - name: claude
    kind: anthropic
    base_url: https://api.anthropic.com/v1
    api_key: sk-ant
    checkpoint: /models/x
routes:
  - model: m
    targets:
      - backend: claude
)");
  CHECK_FALSE(anthropic.value);
  CHECK(find(anthropic, "backends[0].checkpoint").message == "'checkpoint' is for kind local_engine");
  auto fine = load(R"(backends:
  - name: claude
    kind: anthropic
    base_url: https://api.anthropic.com/v1
    api_key: sk-ant
routes:
  - model: m
    targets:
      - backend: claude
)");
  REQUIRE(fine.value);
  CHECK(fine.value->backends[0].kind() == "anthropic");
  CHECK(fine.value->backends[0].remote()->transport == "curl");
}

TEST_CASE("priorities, queue aging and counting bounds are read and checked with their keys", "[config]") {
  auto ok = load(R"(keys:
  - {name: a, key: tg-a, priority: high}
  - {name: b, key: tg-b, priority: low}
  - {name: c, key: tg-c, priority: 7}
  - {name: d, key: tg-d}
metering: {max_count_bytes: 65536, count_threads: 2, count_queue: 10}
backends:
  - {name: up, kind: openai, base_url: "http://127.0.0.1:9000/v1", max_concurrency: 4, queue_timeout: 8s, queue_aging: 1s}
routes: [{model: m, targets: [{backend: up}]}]
)");
  REQUIRE(ok.value);
  CHECK(ok.value->keys[0].priority == 2);
  CHECK(ok.value->keys[1].priority == 0);
  CHECK(ok.value->keys[2].priority == 7);
  CHECK(ok.value->keys[3].priority == 1);  // normal by default
  CHECK(ok.value->backends[0].queue_aging == std::chrono::seconds(1));
  CHECK(ok.value->max_count_bytes == 65536);
  CHECK(ok.value->count_threads == 2);
  CHECK(ok.value->count_queue == 10);
  auto bad = load(R"(keys:
  - {name: a, key: tg-a, priority: urgent}
  - {name: b, key: tg-b, priority: 10}
metering: {max_count_bytes: 10, count_threads: 0, workers: 2}
backends:
  - {name: up, kind: openai, base_url: "http://127.0.0.1:9000/v1", queue_aging: soon}
routes: [{model: m, targets: [{backend: up}]}]
)");
  CHECK(find(bad, "keys[0].priority").message.find("must be high, normal, low or a number from 0 to 9") == 0);
  CHECK(find(bad, "keys[0].priority").line == 2);
  CHECK(find(bad, "keys[1].priority").line == 3);
  CHECK(find(bad, "metering.max_count_bytes").line == 4);
  CHECK(find(bad, "metering.count_threads").line == 4);
  CHECK(find(bad, "metering.workers").message == "unknown key 'workers'");
  CHECK(find(bad, "backends[0].queue_aging").line == 6);
}
