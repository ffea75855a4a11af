// The proof of metering: thousands of mixed requests (stream and not, some cut mid-stream by the
// upstream, some answered without usage) through the gateway; the ledger, /metrics, the admin
// usage API and the fake's own count agree token for token.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>
#include <atomic>
#include <filesystem>
#include <mutex>
#include <sstream>
#include <thread>

#include "gateway/accounting/metering.hpp"
#include "tokenizer/tokenizer.hpp"
#include "tests/integration/gateway_fixture.hpp"
#include "tests/integration/sqlite_probe.hpp"

using namespace tollgate::test;
using nlohmann::json;

namespace {

constexpr const char* tokenizer_file = TOLLGATE_SOURCE_DIR "/data/deepseek_v3/tokenizer.json";

/// Sums the values of one metric's lines whose labels contain every given fragment.
double metric_sum(const std::string& text, const std::string& name, const std::vector<std::string>& fragments) {
  double sum = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.starts_with(name + "{")) continue;
    bool all = true;
    for (const auto& f : fragments) all = all && line.find(f) != std::string::npos;
    if (all) sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

/// The usage object a script reports (its body, or its stream's usage chunk: the other chunks
/// carry a null usage, as OpenAI's do).
std::optional<json> reported_usage(const response_script& s) {
  if (s.chunks.empty()) {
    auto body = json::parse(s.body, nullptr, false);
    if (body.is_object() && body.contains("usage")) return body["usage"];
    return std::nullopt;
  }
  for (const auto& c : s.chunks) {
    if (c.find("\"usage\":{") == std::string::npos) continue;
    return json::parse(c.substr(6))["usage"];
  }
  return std::nullopt;
}

/// The text a script generates: its answer's content, or its stream's content deltas joined.
std::string generated_text(const response_script& s) {
  if (s.chunks.empty()) return json::parse(s.body)["choices"][0]["message"]["content"];
  std::string text;
  for (const auto& c : s.chunks) {
    if (c == "data: [DONE]\n\n") continue;
    const auto chunk = json::parse(c.substr(6));
    for (const auto& choice : chunk["choices"]) {
      if (choice.contains("delta") && choice["delta"].contains("content")) text += choice["delta"]["content"].get<std::string>();
    }
  }
  return text;
}

}  // namespace

TEST_CASE("ledger, /metrics, the usage API and the upstream agree token for token", "[metering][proof]") {
  INFO("the tokenizer comes from deploy/fetch-tokenizer.sh");
  REQUIRE(std::filesystem::exists(tokenizer_file));
  const auto tok = tollgate::tokenizer::tokenizer::load(tokenizer_file);
  const std::string path = temp_db("tollgate-usage-proof");
  remove_db(path);

  std::string y = gateway_fixture::default_yaml();
  const std::string server = "  access_log: off\n";
  y.replace(y.find(server), server.size(), server + "  admin_key: admin-key-0123456789\n");
  const std::string target = "        model: upstream-model-a\n";
  y.replace(y.find(target), target.size(), target + "        price: {input: 2.0, output: 8.0}\n");
  y = "store: {sqlite: " + path + "}\nmetering: {tokenizer: " + tokenizer_file + "}\n" + y;

  // What the upstream itself reported, for the answers that carried usage.
  std::atomic<std::int64_t> fake_prompt{0}, fake_completion{0}, fake_reported{0};
  // Answers sent whole without usage: the upstream's own count of what it generated (the
  // tokenizer on its text), and of the prompt it was sent (the chat template).
  std::atomic<std::int64_t> own_prompt{0}, own_completion{0}, own_counted{0};
  // Streams the upstream cut: only the client knows what reached it, so its bytes are counted.
  std::mutex counted_mutex;
  std::int64_t counted_prompt = 0, counted_completion = 0, counted_requests = 0;

  const int threads = 4, per_thread = 500;
  {
    gateway_fixture f(y);
    f.a.set_default([&](const recorded_request& r) {
      auto s = fake_upstream::openai_default(r);
      const auto body = json::parse(r.body);
      const std::string text = body["messages"].back()["content"];
      if (text.starts_with("cut")) {
        s.reset_after_chunks = 3;  // "echo:", " cut", " n": then the connection dies
        return s;
      }
      if (text.starts_with("nousage")) {
        if (s.chunks.empty()) {
          auto b = json::parse(s.body);
          b.erase("usage");
          s.body = b.dump();
        } else {
          std::erase_if(s.chunks, [](const std::string& c) { return c.find("\"usage\":{") != std::string::npos; });
        }
        own_prompt += tollgate::gateway::count_prompt_tokens(*tok, "/chat/completions", r.body);
        own_completion += static_cast<std::int64_t>(tok->count(generated_text(s)));
        ++own_counted;
        return s;
      }
      if (auto u = reported_usage(s)) {
        fake_prompt += (*u)["prompt_tokens"].get<std::int64_t>();
        fake_completion += (*u)["completion_tokens"].get<std::int64_t>();
        ++fake_reported;
      }
      return s;
    });

    std::atomic<int> ok{0}, failed{0};
    std::vector<std::thread> clients;
    for (int t = 0; t < threads; ++t) {
      clients.emplace_back([&, t] {
        http_client c;
        for (int i = 0; i < per_thread; ++i) {
          const int n = t * per_thread + i;
          const bool stream = n % 2 == 0;
          std::string kind = n % 7 == 0 ? "cut" : n % 5 == 0 ? "nousage" : "plain";
          if (kind == "cut" && !stream) kind = "nousage";
          // Words, numbers and Chinese: every request a different prompt.
          const std::string content = kind + " request " + std::to_string(n) + " 深度求索 tokens " +
                                      std::string(static_cast<std::size_t>(n % 13), 'x');
          json req = {{"model", "chat-public"}, {"messages", {{{"role", "user"}, {"content", content}}}}};
          if (stream) req["stream"] = true;
          if (stream && n % 4 == 0) req["stream_options"] = {{"include_usage", true}};
          const std::string body = req.dump();
          auto r = c.post(f.base + "/v1/chat/completions", body, gateway_fixture::auth());
          if (r.status != 200) {
            ++failed;
            continue;
          }
          ++ok;
          if (kind != "cut") continue;
          // The gateway bills what this client received, counted from its own bytes.
          const auto prompt = tollgate::gateway::count_prompt_tokens(*tok, "/chat/completions", body);
          const auto completion = tollgate::gateway::count_completion_tokens(*tok, r.body, stream);
          std::lock_guard lock(counted_mutex);
          counted_prompt += prompt;
          counted_completion += completion;
          ++counted_requests;
        }
      });
    }
    for (auto& c : clients) c.join();
    INFO("ok " << ok << ", failed " << failed);
    CHECK(ok + failed == threads * per_thread);
    CHECK(failed < threads * per_thread / 10);  // only cuts before any byte fail, if any

    const std::int64_t want_prompt = fake_prompt + own_prompt + counted_prompt;
    const std::int64_t want_completion = fake_completion + own_completion + counted_completion;
    INFO("upstream reported " << fake_reported << ", counted itself " << own_counted << ", clients counted "
                              << counted_requests);
    CHECK(fake_reported > 1000);
    CHECK(own_counted > 200);
    CHECK(counted_requests > 50);

    http_client c;
    // A request is metered just after its answer is written: the last ones may still be settling
    // when their clients have already read them.
    std::string metrics;
    double m_prompt = 0, m_completion = 0;
    eventually([&] {
      metrics = c.get(f.base + "/metrics").body;
      m_prompt = metric_sum(metrics, "tollgate_tokens_total", {"kind=\"prompt\""}) +
                 metric_sum(metrics, "tollgate_tokens_total", {"kind=\"cached_prompt\""});
      m_completion = metric_sum(metrics, "tollgate_tokens_total", {"kind=\"completion\""});
      return static_cast<std::int64_t>(m_prompt) == want_prompt && static_cast<std::int64_t>(m_completion) == want_completion;
    });
    const double m_cost = metric_sum(metrics, "tollgate_cost_total", {});
    CHECK(static_cast<std::int64_t>(m_prompt) == want_prompt);
    CHECK(static_cast<std::int64_t>(m_completion) == want_completion);

    const auto usage = json::parse(
        c.get(f.base + "/admin/usage", http_options{{"Authorization: Bearer admin-key-0123456789"}}).body);
    CHECK(usage["total"]["prompt_tokens"] == want_prompt);
    CHECK(usage["total"]["completion_tokens"] == want_completion);
    CHECK(usage["total"]["requests"] == threads * per_thread);
    CHECK(usage["total"]["cost"].get<double>() == Approx(m_cost).epsilon(1e-9));
    CHECK(m_cost == Approx((want_prompt * 2.0 + want_completion * 8.0) / 1e6).epsilon(1e-9));
    f.server->shutdown(std::chrono::seconds(5));

    db d(path);
    CHECK(d.one("SELECT count(*) FROM usage_ledger") == std::to_string(threads * per_thread));
    CHECK(d.one("SELECT sum(prompt_tokens) FROM usage_ledger") == std::to_string(want_prompt));
    CHECK(d.one("SELECT sum(completion_tokens) FROM usage_ledger") == std::to_string(want_completion));
    CHECK(d.one("SELECT count(*) FROM usage_ledger WHERE usage_source = 'counted'") ==
          std::to_string(counted_requests + own_counted));
    CHECK(d.one("SELECT count(*) FROM usage_ledger WHERE usage_source = 'upstream'") == std::to_string(fake_reported.load()));
    CHECK(d.one("SELECT count(*) FROM usage_ledger WHERE stream = 1 AND status = 200 AND first_token_ms IS NULL") == "0");
  }
  remove_db(path);
}

TEST_CASE("a client that leaves mid-stream is billed for what it was sent", "[metering]") {
  INFO("the tokenizer comes from deploy/fetch-tokenizer.sh");
  REQUIRE(std::filesystem::exists(tokenizer_file));
  const auto tok = tollgate::tokenizer::tokenizer::load(tokenizer_file);
  const std::string path = temp_db("tollgate-usage-leave");
  remove_db(path);
  std::atomic<bool> left{false};
  {
    gateway_fixture f("store: {sqlite: " + path + "}\nmetering: {tokenizer: " + tokenizer_file + "}\n" +
                      gateway_fixture::default_yaml());
    // A long answer, one word per chunk. The first chunk reaches the client, which then leaves; the
    // fake holds the second until the gateway has had ample time to notice (it watches a stream's
    // client from its start), so exactly one chunk was delivered.
    response_script s;
    s.content_type = "text/event-stream";
    for (int i = 0; i < 40; ++i) {
      json chunk = {{"id", "x"}, {"object", "chat.completion.chunk"},
                    {"choices", {{{"index", 0}, {"delta", {{"content", " word" + std::to_string(i)}}}}}}};
      s.chunks.push_back("data: " + chunk.dump() + "\n\n");
    }
    s.before_chunk = [&](std::size_t i) {
      if (i != 1) return;
      for (int k = 0; k < 500 && !left; ++k) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    };
    f.a.push(s);
    http_client c;
    http_options o = gateway_fixture::auth({"X-Request-Id: leaver"});
    o.on_data = [&](const std::string&) {
      left = true;
      return false;
    };
    c.post(f.base + "/v1/chat/completions",
           R"({"model":"chat-public","stream":true,"messages":[{"role":"user","content":"tell me a long story"}]})", o);
    REQUIRE(eventually([&] { return f.a.client_aborts() == 1; }));
    f.server->shutdown(std::chrono::seconds(5));
  }
  db d(path);
  // Billed: the one word the client was sent, counted by the tokenizer on its own.
  const auto want = static_cast<std::int64_t>(tok->count(" word0"));
  CHECK(want >= 1);
  CHECK(d.one("SELECT completion_tokens FROM usage_ledger WHERE request_id = 'leaver'") == std::to_string(want));
  CHECK(d.one("SELECT usage_source FROM usage_ledger WHERE request_id = 'leaver'") == "counted");
  CHECK(std::stoi(d.one("SELECT prompt_tokens FROM usage_ledger WHERE request_id = 'leaver'")) > 5);
  remove_db(path);
}

TEST_CASE("a stream longer than the counting buffer is counted whole", "[metering]") {
  INFO("the tokenizer comes from deploy/fetch-tokenizer.sh");
  REQUIRE(std::filesystem::exists(tokenizer_file));
  const auto tok = tollgate::tokenizer::tokenizer::load(tokenizer_file);
  const std::string path = temp_db("tollgate-usage-long");
  remove_db(path);
  std::string text;  // what the upstream generated, as one string
  {
    gateway_fixture f("store: {sqlite: " + path + "}\nmetering: {tokenizer: " + tokenizer_file + "}\n" +
                      gateway_fixture::default_yaml());
    // About 6 MB of events without usage: more than the 4 MB the gateway keeps before taking the
    // text out of them.
    response_script s;
    s.content_type = "text/event-stream";
    const std::string padding(400, 'p');  // events carry more than their text, as real ones do
    for (int i = 0; i < 12000; ++i) {
      const std::string piece = " tok" + std::to_string(i % 977) + (i % 3 == 0 ? "," : "");
      text += piece;
      json chunk = {{"id", "x"}, {"object", "chat.completion.chunk"}, {"system_fingerprint", padding},
                    {"choices", {{{"index", 0}, {"delta", {{"content", piece}}}}}}};
      s.chunks.push_back("data: " + chunk.dump() + "\n\n");
    }
    s.chunks.push_back("data: [DONE]\n\n");
    f.a.push(s);
    http_client c;
    auto r = c.post(f.base + "/v1/chat/completions",
                    R"({"model":"chat-public","stream":true,"messages":[{"role":"user","content":"go on"}]})",
                    gateway_fixture::auth({"X-Request-Id: long-one"}));
    REQUIRE(r.status == 200);
    REQUIRE(r.body.size() > 5'000'000);
    f.server->shutdown(std::chrono::seconds(5));
  }
  db d(path);
  CHECK(d.one("SELECT completion_tokens FROM usage_ledger WHERE request_id = 'long-one'") ==
        std::to_string(tok->count(text)));
  remove_db(path);
}
