#include <catch2/catch.hpp>

#include "routing/route_table.hpp"

using tollgate::routing::glob_match;
using tollgate::routing::route_table;
namespace config = tollgate::config;

namespace {

config::config make_config() {
  config::config c;
  c.backends.push_back({.name = "one", .settings = tollgate::config::openai_backend_config{{.base_url = "http://127.0.0.1:1/v1"}}});
  c.backends.push_back({.name = "two", .settings = tollgate::config::openai_backend_config{{.base_url = "http://127.0.0.1:2/v1"}}});
  c.routes.push_back({.model = "deepseek-chat", .aliases = {"ds"}, .targets = {{"one", "deepseek-v3"}, {"two", ""}}});
  c.routes.push_back({.model = "deepseek-*", .aliases = {}, .targets = {{"two", ""}}});
  c.routes.push_back({.model = "deepseek-r*-distill", .aliases = {}, .targets = {{"one", ""}}});
  c.routes.push_back({.model = "*", .aliases = {}, .targets = {{"one", "fallback"}}});
  return c;
}

}  // namespace

TEST_CASE("glob patterns", "[routing]") {
  CHECK(glob_match("deepseek-*", "deepseek-chat"));
  CHECK(glob_match("deepseek-*", "deepseek-"));
  CHECK_FALSE(glob_match("deepseek-*", "deepseek"));
  CHECK(glob_match("*", ""));
  CHECK(glob_match("a*b*c", "aXXbYYc"));
  CHECK_FALSE(glob_match("a*b*c", "aXXbYY"));
  CHECK(glob_match("qwen?-max", "qwen3-max"));
  CHECK_FALSE(glob_match("qwen?-max", "qwen-max"));
  CHECK(glob_match("*-instruct", "llama-3-70b-instruct"));
  CHECK_FALSE(glob_match("exact", "exactly"));
}

TEST_CASE("exact and alias names win over patterns", "[routing]") {
  const auto cfg = make_config();
  route_table table(cfg);
  const auto* r = table.resolve("deepseek-chat");
  REQUIRE(r != nullptr);
  CHECK(r->model == "deepseek-chat");
  REQUIRE(r->targets.size() == 2);
  CHECK(r->targets[0].backend == "one");
  CHECK(r->targets[0].backend_index == 0);
  CHECK(r->targets[0].model == "deepseek-v3");
  CHECK(r->targets[1].backend_index == 1);
  CHECK(table.resolve("ds") == r);
}

TEST_CASE("the most specific pattern wins, then config order", "[routing]") {
  const auto cfg = make_config();
  route_table table(cfg);
  CHECK(table.resolve("deepseek-coder")->model == "deepseek-*");
  CHECK(table.resolve("deepseek-r1-distill")->model == "deepseek-r*-distill");
  CHECK(table.resolve("gpt-4o")->model == "*");
}

TEST_CASE("no route, no match", "[routing]") {
  auto cfg = make_config();
  cfg.routes.pop_back();  // drop the catch-all
  route_table table(cfg);
  CHECK(table.resolve("gpt-4o") == nullptr);
  CHECK(table.resolve("") == nullptr);
}

TEST_CASE("public models are exact names and aliases in config order", "[routing]") {
  const auto cfg = make_config();
  route_table table(cfg);
  CHECK(table.public_models() == std::vector<std::string>{"deepseek-chat", "ds"});
}
