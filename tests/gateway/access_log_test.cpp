#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <fstream>
#include <unistd.h>

#include "gateway/observability/access_log.hpp"
#include "protocol/json_body.hpp"

using namespace tollgate::gateway;
using tollgate::protocol::append_json_string;
using json = nlohmann::json;

TEST_CASE("access log lines are JSON whatever the fields hold", "[access_log]") {
  const std::string path = "/tmp/tollgate-access-" + std::to_string(::getpid()) + ".log";
  std::remove(path.c_str());
  access_record plain;
  plain.request_id = "req_1";
  plain.method = "POST";
  plain.path = "/v1/chat/completions";
  plain.key_name = "team";
  plain.model = "deepseek-chat";
  plain.backend = "qiniu";
  plain.status = 200;
  plain.latency_ms = 12.34567;
  plain.bytes_in = 120;
  plain.bytes_out = 400;
  plain.stream = true;
  plain.has_usage = true;
  plain.prompt_tokens = 10;
  plain.cached_tokens = 4;
  plain.completion_tokens = 7;
  plain.reasoning_tokens = 2;
  plain.cost = 0.000125;
  access_record odd;
  odd.method = "GET";
  odd.path = std::string("/v1/\"x\"\\y\n\t\x01\xff\xc3(\xe4\xbd\xa0", 18);  // quotes, controls, bad and good UTF-8
  odd.model = "\xe6\xb7\xb1\xe5\xba\xa6";
  odd.status = 404;
  odd.error = "model_not_found";
  {
    access_log log(path, 1);
    log.write(0, plain);
    log.write(0, odd);
  }
  std::ifstream in(path);
  std::string line;
  std::vector<json> lines;
  while (std::getline(in, line)) lines.push_back(json::parse(line));  // throws if not JSON
  REQUIRE(lines.size() == 2);
  const json& a = lines[0];
  CHECK(a["id"] == "req_1");
  CHECK(a["key"] == "team");
  CHECK(a["backend"] == "qiniu");
  CHECK(a["status"] == 200);
  CHECK(a["latency_ms"] == 12.345);
  CHECK(a["bytes_in"] == 120);
  CHECK(a["stream"] == true);
  CHECK(a["prompt_tokens"] == 10);
  CHECK(a["cached_tokens"] == 4);
  CHECK(a["completion_tokens"] == 7);
  CHECK(a["reasoning_tokens"] == 2);
  CHECK(a["cost"].get<double>() == Approx(0.000125));
  CHECK(a["time"].get<std::string>().size() == 24);  // 2026-12-01T08:14:18.301Z
  CHECK_FALSE(a.contains("error"));
  const json& b = lines[1];
  CHECK(b["path"] == "/v1/\"x\"\\y\n\t\x01\xef\xbf\xbd\xef\xbf\xbd(\xe4\xbd\xa0");
  CHECK(b["model"] == "\xe6\xb7\xb1\xe5\xba\xa6");
  CHECK(b["error"] == "model_not_found");
  CHECK_FALSE(b.contains("prompt_tokens"));
  std::remove(path.c_str());
}

TEST_CASE("append_json_string escapes what JSON needs and replaces what is not UTF-8", "[json_body]") {
  auto quoted = [](std::string_view s) {
    std::string out;
    append_json_string(out, s);
    return out;
  };
  CHECK(quoted("plain") == "\"plain\"");
  CHECK(quoted("a\"b\\c\n\r\t\x1f") == "\"a\\\"b\\\\c\\n\\r\\t\\u001f\"");
  CHECK(quoted("\xe4\xbd\xa0\xf0\x9f\x98\x80") == "\"\xe4\xbd\xa0\xf0\x9f\x98\x80\"");
  // Overlong, surrogate, past U+10FFFF, truncated: each bad byte is one U+FFFD.
  CHECK(quoted("\xc0\xaf") == "\"\xef\xbf\xbd\xef\xbf\xbd\"");
  CHECK(quoted("\xed\xa0\x80") == "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
  CHECK(quoted("\xf4\x90\x80\x80") == "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
  CHECK(quoted("ok\xe4\xbd") == "\"ok\xef\xbf\xbd\xef\xbf\xbd\"");
  for (int i = 0; i < 2000; ++i) {
    std::string random;
    for (int k = 0; k < 24; ++k) random.push_back(static_cast<char>((i * 7919 + k * 104729) % 256));
    CHECK(json::accept(quoted(random)));
  }
}

TEST_CASE("access_log_skip leaves out successful scrapes and probes only", "[access_log]") {
  const std::string path = "/tmp/tollgate-access-skip-" + std::to_string(::getpid()) + ".log";
  std::remove(path.c_str());
  auto rec = [](std::string p, int status) {
    access_record r;
    r.method = "GET";
    r.path = std::move(p);
    r.status = status;
    return r;
  };
  {
    access_log log(path, 1, {"/metrics", "/healthz", "/readyz"});
    log.write(0, rec("/metrics", 200));
    log.write(0, rec("/healthz", 200));
    log.write(0, rec("/readyz?verbose=1", 200));
    log.write(0, rec("/readyz", 503));  // a failing probe is worth a line
    log.write(0, rec("/metrics/extra", 404));
    log.write(0, rec("/v1/models", 200));
  }
  std::ifstream in(path);
  std::string line;
  std::vector<std::string> logged;
  while (std::getline(in, line)) logged.push_back(json::parse(line)["path"]);
  std::remove(path.c_str());
  CHECK(logged == std::vector<std::string>{"/readyz", "/metrics/extra", "/v1/models"});
}
