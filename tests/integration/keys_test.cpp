// Keys from the SQLite store: created through the admin API (shown once, stored as a digest),
// used, listed, revoked; per-key models; budgets that refuse with insufficient_quota and survive
// a restart; expiry.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>
#include <map>

#include "gateway/keys/key_table.hpp"
#include "gateway/keys/store.hpp"
#include "tests/integration/gateway_fixture.hpp"
#include "tests/integration/sqlite_probe.hpp"
#include "tests/support/eventually.hpp"

using namespace tollgate::test;
using nlohmann::json;

namespace {

constexpr const char* admin_key = "admin-key-0123456789";
constexpr const char* admin_auth_header = "Authorization: Bearer admin-key-0123456789";  // see client_auth_header
static_assert(std::string_view(admin_auth_header).ends_with(admin_key));

std::string db_path(const char* name) {
  return temp_db("tollgate-" + std::string(name));
}

std::string store_yaml(const std::string& path, const std::string& extra_keys = {}) {
  std::string y = gateway_fixture::default_yaml();
  const std::string server = "  access_log: off\n";
  y.replace(y.find(server), server.size(), server + "  admin_key: " + admin_key + "\n");
  const std::string keys = "keys:\n";
  y.replace(y.find(keys), keys.size(), keys + extra_keys);
  // Prices make budgets bite: 1 per million of everything, so 1e-6 a token.
  const std::string target = "        model: upstream-model-a\n";
  y.replace(y.find(target), target.size(), target + "        price: {input: 1000000, output: 1000000}\n");
  return "store: {sqlite: " + path + "}\n" + y;
}

http_options admin() {
  http_options o;
  o.headers.emplace_back(admin_auth_header);
  return o;
}

http_options bearer(const std::string& key) {
  http_options o;
  o.headers.push_back("Authorization: Bearer " + key);
  return o;
}

const std::string chat = R"({"model":"chat-public","messages":[{"role":"user","content":"one two three"}]})";

}  // namespace

TEST_CASE("admin API: a created key works at once, is shown once and stored only as a digest", "[keys]") {
  const auto path = db_path("keys-admin");
  remove_db(path);
  {
    gateway_fixture f(store_yaml(path));
    http_client c;
    auto made = c.post(f.base + "/admin/keys", R"({"name":"team-a","models":["chat-*"],"rpm":100})", admin());
    REQUIRE(made.status == 201);
    const auto j = json::parse(made.body);
    const std::string secret = j["key"];
    CHECK(secret.starts_with("tg-"));
    CHECK(secret.size() == 46);
    CHECK(j["prefix"] == secret.substr(0, 7) + "...");

    CHECK(c.post(f.base + "/v1/chat/completions", chat, bearer(secret)).status == 200);
    // Its models: chat-public yes, failover-public no (403), and /v1/models shows only what it may use.
    auto forbidden = c.post(f.base + "/v1/chat/completions",
                            R"({"model":"failover-public","messages":[]})", bearer(secret));
    CHECK(forbidden.status == 403);
    CHECK(json::parse(forbidden.body)["error"]["code"] == "model_not_allowed");
    auto models = json::parse(c.get(f.base + "/v1/models", bearer(secret)).body);
    std::vector<std::string> ids;
    for (const auto& m : models["data"]) ids.push_back(m["id"]);
    CHECK(ids == std::vector<std::string>{"chat-public", "chat-alias"});

    // Listed without the secret.
    auto list = c.get(f.base + "/admin/keys", admin());
    REQUIRE(list.status == 200);
    CHECK(list.body.find(secret) == std::string::npos);
    CHECK(json::parse(list.body)["data"][0]["name"] == "team-a");
    CHECK(json::parse(list.body)["data"][0]["rpm"] == 100);

    // A second key of the same name is refused; bad fields name themselves.
    CHECK(c.post(f.base + "/admin/keys", R"({"name":"team-a"})", admin()).status == 409);
    auto bad = c.post(f.base + "/admin/keys", R"({"name":"x","budget":"lots"})", admin());
    CHECK(bad.status == 400);
    CHECK(json::parse(bad.body)["error"]["param"] == "budget");
    CHECK(c.post(f.base + "/admin/keys", R"({"name":"x","colour":"red"})", admin()).status == 400);
    CHECK(c.post(f.base + "/admin/keys", R"({"name":"tester"})", admin()).status == 400);  // a config key's name
    CHECK(c.post(f.base + "/admin/keys", "{not json", admin()).status == 400);
    // Only the admin key opens it.
    CHECK(c.get(f.base + "/admin/keys", bearer(secret)).status == 401);
    CHECK(c.get(f.base + "/admin/keys", gateway_fixture::auth()).status == 401);

    // The database holds the digest and never the key.
    {
      db d(path);
      CHECK(d.one("SELECT count(*) FROM api_keys WHERE digest = '" +
                  tollgate::gateway::to_hex(tollgate::gateway::sha256(secret)) + "'") == "1");
      CHECK(d.one("SELECT count(*) FROM api_keys WHERE instr(name || digest || prefix || models, '" + secret.substr(7) +
                  "') > 0") == "0");
    }

    // Revoked: refused from the next request on.
    CHECK(c.post(f.base + "/admin/keys/team-a/revoke", "", admin()).status == 200);
    CHECK(c.post(f.base + "/v1/chat/completions", chat, bearer(secret)).status == 401);
    CHECK(c.post(f.base + "/admin/keys/team-a/revoke", "", admin()).status == 404);
    CHECK(json::parse(c.get(f.base + "/admin/keys?all", admin()).body)["data"][0]["status"] == "revoked");
    // The static key still works beside the store.
    CHECK(c.post(f.base + "/v1/chat/completions", chat, gateway_fixture::auth()).status == 200);
  }
  remove_db(path);
}

TEST_CASE("a budget refuses with insufficient_quota once spent, and survives a restart", "[keys][budget]") {
  const auto path = db_path("keys-budget");
  remove_db(path);
  std::string secret;
  {
    gateway_fixture f(store_yaml(path));
    http_client c;
    // Each request costs 8 tokens (4 prompt + 4 completion) at 1 a token: 8.
    auto made = c.post(f.base + "/admin/keys", R"({"name":"capped","budget":"20/day"})", admin());
    REQUIRE(made.status == 201);
    secret = json::parse(made.body)["key"];
    int ok = 0;
    http_result refused;
    for (int i = 0; i < 10; ++i) {
      auto r = c.post(f.base + "/v1/chat/completions", chat, bearer(secret));
      if (r.status != 200) {
        refused = r;
        break;
      }
      ++ok;
    }
    CHECK(ok == 3);  // 0, 8, 16 spent before each: admitted; 24 >= 20: refused
    REQUIRE(refused.status == 429);
    CHECK(json::parse(refused.body)["error"]["code"] == "insufficient_quota");
    CHECK(json::parse(refused.body)["error"]["type"] == "insufficient_quota");
    CHECK_THAT(json::parse(refused.body)["error"]["message"].get<std::string>(),
               Catch::Contains("budget of 20 per day (spent 24.00)"));
    REQUIRE(refused.headers.count("retry-after"));
    const long wait = std::stol(refused.headers["retry-after"]);
    CHECK(wait >= 1);
    CHECK(wait <= 86400);
    // Another key is untouched.
    CHECK(c.post(f.base + "/v1/chat/completions", chat, gateway_fixture::auth()).status == 200);
    // The gauges say what is left.
    const auto m = c.get(f.base + "/metrics").body;
    CHECK(m.find("tollgate_key_budget{key=\"capped\",period=\"day\",currency=\"CNY\"} 20") != std::string::npos);
    CHECK(m.find("tollgate_key_budget_remaining{key=\"capped\",period=\"day\",currency=\"CNY\"} -4") != std::string::npos);
    // The admin API shows the spend.
    auto one = json::parse(c.get(f.base + "/admin/keys/capped", admin()).body);
    CHECK(one["spent_this_period"].get<double>() == Approx(24));
    f.server->shutdown(std::chrono::seconds(5));
  }
  {
    // A new process over the same database: the spend comes back from the ledger.
    gateway_fixture f(store_yaml(path));
    http_client c;
    CHECK(c.post(f.base + "/v1/chat/completions", chat, bearer(secret)).status == 429);
    auto usage = json::parse(c.get(f.base + "/admin/usage?key=capped", admin()).body);
    // Five requests reached the ledger: three served by alpha, two refused (no backend).
    CHECK(usage["total"]["requests"] == 5);
    CHECK(usage["total"]["prompt_tokens"] == 12);
    CHECK(usage["total"]["completion_tokens"] == 12);
    CHECK(usage["total"]["cost"].get<double>() == Approx(24));
    REQUIRE(usage["data"].size() == 2);
    CHECK(usage["data"][0]["backend"] == "");
    CHECK(usage["data"][0]["requests"] == 2);
    CHECK(usage["data"][1]["backend"] == "alpha");
    CHECK(usage["data"][1]["requests"] == 3);
    CHECK(c.get(f.base + "/admin/usage?since=yesterday", admin()).status == 400);
  }
  remove_db(path);
}

TEST_CASE("admin API: a key's priority is checked, stored, listed, changed and applied to its requests, also after a "
          "restart",
          "[keys][priority]") {
  const auto path = db_path("keys-priority");
  remove_db(path);
  std::string yaml = store_yaml(path);
  yaml.replace(yaml.find("store: {sqlite: " + path + "}"), std::string("store: {sqlite: " + path + "}").size(),
               "store: {sqlite: " + path + ", flush_interval: sync}");
  std::map<std::string, std::string> secrets;
  {
    gateway_fixture f(yaml);
    http_client c;
    // Invalid values: 400 naming the field, and nothing is created.
    for (const char* bad : {R"("urgent")", "10", "-1", "2.5", "true", R"("")", R"("10")"}) {
      INFO(bad);
      auto r = c.post(f.base + "/admin/keys", std::string(R"({"name":"bad","priority":)") + bad + "}", admin());
      CHECK(r.status == 400);
      CHECK(json::parse(r.body)["error"]["param"] == "priority");
      CHECK_THAT(json::parse(r.body)["error"]["message"].get<std::string>(), Catch::Matchers::Contains("high, normal, low"));
    }
    for (const auto& [name, field] : std::vector<std::pair<std::string, std::string>>{
             {"batch", R"(,"priority":"low")"}, {"vip", R"(,"priority":7)"}, {"chat", R"(,"priority":"high")"}, {"plain", ""}}) {
      auto made = c.post(f.base + "/admin/keys", R"({"name":")" + name + "\"" + field + "}", admin());
      REQUIRE(made.status == 201);
      secrets[name] = json::parse(made.body)["key"];
    }
    auto list = json::parse(c.get(f.base + "/admin/keys", admin()).body)["data"];
    REQUIRE(list.size() == 4);
    std::map<std::string, std::string> listed;
    for (const auto& k : list) listed[k["name"]] = k["priority"];
    CHECK(listed == std::map<std::string, std::string>{{"batch", "low"}, {"vip", "7"}, {"chat", "high"}, {"plain", "normal"}});
    CHECK(json::parse(c.get(f.base + "/admin/keys/vip", admin()).body)["priority"] == "7");
    {
      db d(path);
      CHECK(d.one("SELECT priority FROM api_keys WHERE name = 'batch'") == "0");
      CHECK(d.one("SELECT priority FROM api_keys WHERE name = 'vip'") == "7");
      CHECK(d.one("SELECT count(*) FROM api_keys WHERE name = 'bad'") == "0");
    }
    // Each key's requests carry its priority; a request may lower its own, never raise it.
    auto send = [&](const std::string& key, const std::string& id, const std::string& header = {}) {
      http_options o = bearer(secrets[key]);
      o.headers.push_back("x-request-id: " + id);
      if (!header.empty()) o.headers.push_back("x-tollgate-priority: " + header);
      CHECK(c.post(f.base + "/v1/chat/completions", chat, o).status == 200);
    };
    send("batch", "p-batch");
    send("vip", "p-vip");
    send("chat", "p-chat");
    send("plain", "p-plain");
    send("vip", "p-vip-lowered", "3");
    send("batch", "p-batch-raised", "high");
    db d(path);
    REQUIRE(eventually([&] { return d.one("SELECT COUNT(*) FROM usage_ledger") == "6"; }));
    CHECK(d.one("SELECT priority FROM usage_ledger WHERE request_id = 'p-batch'") == "0");
    CHECK(d.one("SELECT priority FROM usage_ledger WHERE request_id = 'p-vip'") == "7");
    CHECK(d.one("SELECT priority FROM usage_ledger WHERE request_id = 'p-chat'") == "2");
    CHECK(d.one("SELECT priority FROM usage_ledger WHERE request_id = 'p-plain'") == "1");
    CHECK(d.one("SELECT priority FROM usage_ledger WHERE request_id = 'p-vip-lowered'") == "3");
    CHECK(d.one("SELECT priority FROM usage_ledger WHERE request_id = 'p-batch-raised'") == "0");

    // PATCH changes a stored key's priority (its one changeable field), from its next request on.
    auto patch = [&](const std::string& name, const std::string& body, http_options o = admin()) {
      o.method = "PATCH";
      return c.post(f.base + "/admin/keys/" + name, body, o);
    };
    auto changed = patch("batch", R"({"priority":"high"})");
    REQUIRE(changed.status == 200);
    CHECK(json::parse(changed.body)["priority"] == "high");
    CHECK(json::parse(changed.body)["name"] == "batch");
    send("batch", "p-batch-promoted");
    REQUIRE(eventually([&] { return d.one("SELECT COUNT(*) FROM usage_ledger") == "7"; }));
    CHECK(d.one("SELECT priority FROM usage_ledger WHERE request_id = 'p-batch-promoted'") == "2");
    CHECK(patch("batch", R"({"priority":4})").status == 200);
    CHECK(d.one("SELECT priority FROM api_keys WHERE name = 'batch'") == "4");
    auto bad = patch("batch", R"({"priority":"urgent"})");
    CHECK(bad.status == 400);
    CHECK(json::parse(bad.body)["error"]["param"] == "priority");
    bad = patch("batch", R"({"priority":"low","rpm":5})");
    CHECK(bad.status == 400);
    CHECK(json::parse(bad.body)["error"]["param"] == "rpm");
    CHECK(patch("batch", R"({})").status == 400);
    CHECK(patch("batch", "{not json").status == 400);
    CHECK(patch("nobody", R"({"priority":"low"})").status == 404);
    CHECK(patch("batch", R"({"priority":"low"})", bearer(secrets["batch"])).status == 401);
    CHECK(d.one("SELECT priority FROM api_keys WHERE name = 'batch'") == "4");
  }
  {
    // A new process reads the priorities back from the store.
    gateway_fixture f(yaml);
    http_client c;
    http_options o = bearer(secrets["vip"]);
    o.headers.push_back("x-request-id: p-vip-again");
    CHECK(c.post(f.base + "/v1/chat/completions", chat, o).status == 200);
    db d(path);
    REQUIRE(eventually([&] { return d.one("SELECT COUNT(*) FROM usage_ledger") == "8"; }));
    CHECK(d.one("SELECT priority FROM usage_ledger WHERE request_id = 'p-vip-again'") == "7");
  }
  remove_db(path);
}

TEST_CASE("a static key with a budget and an expired key", "[keys][budget]") {
  const auto path = db_path("keys-static");
  remove_db(path);
  {
    gateway_fixture f(store_yaml(path,
                                 "  - name: small\n    key: tg-small-budget-key\n    budget: 10/month\n"
                                 "  - name: old\n    key: tg-expired-key-000\n    expires: 2020-01-01\n"));
    http_client c;
    CHECK(c.post(f.base + "/v1/chat/completions", chat, bearer("tg-small-budget-key")).status == 200);
    CHECK(c.post(f.base + "/v1/chat/completions", chat, bearer("tg-small-budget-key")).status == 200);
    CHECK(c.post(f.base + "/v1/chat/completions", chat, bearer("tg-small-budget-key")).status == 429);
    auto expired = c.post(f.base + "/v1/chat/completions", chat, bearer("tg-expired-key-000"));
    CHECK(expired.status == 401);
    CHECK(json::parse(expired.body)["error"]["message"] == "This API key has expired.");
  }
  remove_db(path);
}

TEST_CASE("the admin key API needs a store", "[keys]") {
  std::string y = gateway_fixture::default_yaml();
  const std::string server = "  access_log: off\n";
  y.replace(y.find(server), server.size(), server + "  admin_key: " + admin_key + "\n");
  gateway_fixture f(y);
  http_client c;
  auto r = c.get(f.base + "/admin/keys", admin());
  CHECK(r.status == 400);
  CHECK(r.body.find("store") != std::string::npos);
}

TEST_CASE("budget periods and key parsing", "[keys][budget]") {
  using tollgate::gateway::budget_period_bounds;
  // 2026-11-22T15:04:05Z
  const std::int64_t t = 1795359845000;
  auto [ds, de] = budget_period_bounds("day", t);
  CHECK(ds == 1795305600000);
  CHECK(de == ds + 86400000);
  auto [ms, me] = budget_period_bounds("month", t);
  CHECK(ms == 1793491200000);  // 2026-11-01
  CHECK(me == 1796083200000);  // 2026-12-01
  auto [ys, ye] = budget_period_bounds("month", 1798761599000);  // 2026-12-31T23:59:59Z
  CHECK(ys == 1796083200000);
  CHECK(ye == 1798761600000);  // 2027-01-01
  CHECK(tollgate::config::parse_budget("100/day") == std::pair{100.0, std::string("day")});
  CHECK(tollgate::config::parse_budget("2.5/month") == std::pair{2.5, std::string("month")});
  for (const char* bad : {"100", "/day", "-1/day", "0/day", "1/week", "abc/day", "1e400/day", "nan/day"}) {
    CHECK_FALSE(tollgate::config::parse_budget(bad));
  }
  CHECK(tollgate::config::parse_expiry("2027-01-31") == 1801439999);
  CHECK(tollgate::config::parse_expiry("2027-01-31T00:00:00Z") == 1801353600);
  for (const char* bad : {"2027-02-30", "2027-1-31", "tomorrow", "2027-01-31T25:00:00Z", "2027-01-31 00:00:00"}) {
    CHECK_FALSE(tollgate::config::parse_expiry(bad));
  }
  const auto a = tollgate::gateway::new_api_key(), b = tollgate::gateway::new_api_key();
  CHECK(a != b);
  CHECK(a.size() == 46);
  CHECK(a.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", 3) == std::string::npos);
}
