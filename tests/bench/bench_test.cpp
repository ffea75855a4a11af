// tollgate bench against the scripted fake upstream: the figures it measures against timings the
// fake keeps (first token, gaps between tokens), its error kinds, both protocols, open loop.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <regex>
#include <sstream>

#include "bench/dist.hpp"
#include "bench/options.hpp"
#include "bench/report.hpp"
#include "bench/runner.hpp"
#include "bench/workload.hpp"
#include "tests/support/fake_upstream.hpp"

using namespace std::chrono_literals;
using nlohmann::json;
using tollgate::bench::api_kind;
using tollgate::bench::bench_options;
using tollgate::bench::dist;
using tollgate::test::fake_upstream;
using tollgate::test::recorded_request;
using tollgate::test::response_script;

namespace {

/// A stream of `tokens` one-token chunks: the head and first token after `ttft`, the others
/// `gap` apart, then (OpenAI) the usage chunk and [DONE], or (Anthropic) message_delta and
/// message_stop, also `gap` apart.
response_script timed_stream(api_kind api, int tokens, std::chrono::milliseconds ttft, std::chrono::milliseconds gap,
                             int prompt_tokens = 7) {
  response_script s;
  s.content_type = "text/event-stream";
  s.header_delay = ttft;
  s.chunk_delay = gap;
  if (api == api_kind::openai) {
    // The role chunk carries no text: TTFT is the first chunk with content.
    s.chunks.push_back("data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"
                       "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t0\"}}]}\n\n");
    for (int i = 1; i < tokens; ++i)
      s.chunks.push_back("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" t" + std::to_string(i) + "\"}}]}\n\n");
    s.chunks.push_back("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":" + std::to_string(prompt_tokens) +
                       ",\"completion_tokens\":" + std::to_string(tokens) + ",\"total_tokens\":" +
                       std::to_string(prompt_tokens + tokens) + "}}\n\n");
    s.chunks.push_back("data: [DONE]\n\n");
  } else {
    auto event = [](const std::string& name, const json& data) { return "event: " + name + "\ndata: " + data.dump() + "\n\n"; };
    s.chunks.push_back(
        event("message_start", {{"type", "message_start"},
                                {"message", {{"id", "msg_1"}, {"type", "message"}, {"role", "assistant"}, {"content", json::array()},
                                             {"usage", {{"input_tokens", prompt_tokens}, {"output_tokens", 1}}}}}}) +
        event("content_block_start",
              {{"type", "content_block_start"}, {"index", 0}, {"content_block", {{"type", "text"}, {"text", ""}}}}) +
        event("content_block_delta", {{"type", "content_block_delta"}, {"index", 0}, {"delta", {{"type", "text_delta"}, {"text", "t0"}}}}));
    for (int i = 1; i < tokens; ++i)
      s.chunks.push_back(event("content_block_delta", {{"type", "content_block_delta"},
                                                       {"index", 0},
                                                       {"delta", {{"type", "text_delta"}, {"text", " t" + std::to_string(i)}}}}));
    s.chunks.push_back(event("content_block_stop", {{"type", "content_block_stop"}, {"index", 0}}) +
                       event("message_delta", {{"type", "message_delta"}, {"delta", {{"stop_reason", "max_tokens"}}},
                                               {"usage", {{"output_tokens", tokens}}}}));
    s.chunks.push_back(event("message_stop", {{"type", "message_stop"}}));
  }
  return s;
}

bench_options options_for(const fake_upstream& up, api_kind api) {
  bench_options o;
  o.base_url = up.base_url();
  o.api_key = "sk-bench";
  o.api = api;
  o.models = {"m"};
  o.stream = true;
  o.prompt_tokens = *dist::parse("16");
  o.max_tokens = *dist::parse("20");
  o.quiet = true;
  return o;
}

std::vector<tollgate::bench::prompt> prompts_for(const bench_options& o, std::size_t n) {
  return tollgate::bench::make_prompts(o, nullptr, n);
}

/// What the fake really did, by its own clock: per request, when it was read, then when each
/// chunk i was about to be written (entry i + 1). A loaded machine stretches every scripted sleep,
/// so the truth the figures are held to is this, not the script.
struct timeline {
  using time_point = std::chrono::steady_clock::time_point;
  std::mutex mutex;
  std::vector<std::shared_ptr<std::vector<time_point>>> requests;

  response_script watch(response_script s) {
    auto t = std::make_shared<std::vector<time_point>>();
    {
      std::lock_guard lock(mutex);
      t->push_back(std::chrono::steady_clock::now());
      requests.push_back(t);
    }
    s.before_chunk = [this, t](std::size_t) {
      std::lock_guard lock(mutex);
      t->push_back(std::chrono::steady_clock::now());
    };
    return s;
  }

  /// The true figures of streams scripted by timed_stream(): chunk k is written just before
  /// chunk k + 1 starts its wait, so chunk 0 (the first token) at entry 2, the last token
  /// (chunk tokens - 1) at entry tokens + 1, and the stream ends one more gap after the chunk
  /// before last.
  struct truth {
    tollgate::bench::spread ttft, tpot, e2e;
    double wall_s = 0;
  };
  truth of(int tokens, std::chrono::milliseconds gap) {
    std::lock_guard lock(mutex);
    std::vector<double> ttft, tpot, e2e;
    time_point first = time_point::max(), last = time_point::min();
    auto ms = [](auto d) { return std::chrono::duration<double, std::milli>(d).count(); };
    for (const auto& t : requests) {
      REQUIRE(t->size() == static_cast<std::size_t>(tokens) + 3);
      const auto& v = *t;
      ttft.push_back(ms(v[2] - v[0]));
      tpot.push_back(ms(v[tokens + 1] - v[2]) / (tokens - 1));
      const auto end = v[tokens + 2] + gap;
      e2e.push_back(ms(end - v[0]));
      first = std::min(first, v[0]);
      last = std::max(last, end);
    }
    return {tollgate::bench::spread_of(ttft), tollgate::bench::spread_of(tpot), tollgate::bench::spread_of(e2e),
            ms(last - first) / 1000};
  }
};

}  // namespace

TEST_CASE("bench: token-count distributions parse and sample in range", "[bench]") {
  CHECK(dist::parse("500")->to_string() == "500");
  CHECK(dist::parse("200-1000")->type == dist::kind::uniform);
  CHECK(dist::parse("normal:500,100")->to_string() == "normal:500,100");
  for (const char* bad : {"", "0", "-5", "abc", "10-5", "1.5", "normal:500", "normal:0,1", "normal:5,-1", "5-"})
    CHECK_FALSE(dist::parse(bad).has_value());
  std::mt19937_64 rng(7);
  const auto u = *dist::parse("200-300");
  const auto n = *dist::parse("normal:3,10");
  for (int i = 0; i < 1000; ++i) {
    const auto v = u.sample(rng);
    CHECK((v >= 200 && v <= 300));
    CHECK(n.sample(rng) >= 1);
  }
}

TEST_CASE("bench: the command line is checked before anything is sent", "[bench]") {
  using tollgate::bench::parse_options;
  auto err = [](std::vector<std::string_view> a) { return parse_options(a).error; };
  CHECK(err({"--model", "m"}) == "--base-url is required");
  CHECK(err({"--base-url", "http://x/v1"}) == "--model is required");
  CHECK(err({"--base-url", "ftp://x", "--model", "m"}).find("http:// or https://") != std::string::npos);
  CHECK(err({"--base-url", "http://x", "--model", "m", "--requests", "5", "--duration", "2"}) ==
        "--requests and --duration exclude each other");
  CHECK(err({"--base-url", "http://x", "--model", "m", "--concurrency", "1,0"}).find("positive integers") != std::string::npos);
  CHECK(err({"--base-url", "http://x", "--model", "m", "--prompt-tokens", "lots"}).find("distribution") != std::string::npos);
  CHECK(err({"--base-url", "http://x", "--model", "m", "--frob", "1"}) == "unknown option '--frob'");
  CHECK(err({"--base-url", "http://x", "--model"}) == "--model needs a value");
  CHECK(err({"--base-url", "http://x", "--model", "m", "--price-in", "1"}) == "--price-in and --price-out go together");
  const auto ok = parse_options({"--base-url", "http://x/v1/", "--model", "a", "--model", "b", "--concurrency", "1,8,32"});
  REQUIRE(ok.options);
  CHECK(ok.options->base_url == "http://x/v1");
  CHECK(ok.options->models == std::vector<std::string>{"a", "b"});
  CHECK(ok.options->concurrency == std::vector<unsigned>{1, 8, 32});
  CHECK(ok.options->requests == 100u);
}

TEST_CASE("bench: percentiles interpolate between ranks", "[bench]") {
  const std::vector<double> v = {10, 20, 30, 40, 50};
  CHECK(tollgate::bench::percentile(v, 0.5) == Approx(30));
  CHECK(tollgate::bench::percentile(v, 0.9) == Approx(46));
  CHECK(tollgate::bench::percentile({5}, 0.99) == Approx(5));
  const auto s = tollgate::bench::spread_of({3, 1, 2});
  CHECK(s.count == 3);
  CHECK(s.p50 == Approx(2));
  CHECK(s.mean == Approx(2));
}

TEST_CASE("bench: streamed OpenAI figures are within 5% of the fake's timings", "[bench]") {
  // Long enough that a busy machine's scheduling delays (a few ms a wake-up) stay well under 5%.
  constexpr int tokens = 12;
  constexpr auto ttft = 500ms, gap = 40ms;
  fake_upstream up;
  timeline seen_by_fake;
  up.set_default([&](const recorded_request&) { return seen_by_fake.watch(timed_stream(api_kind::openai, tokens, ttft, gap)); });
  auto o = options_for(up, api_kind::openai);
  o.requests = 12;
  tollgate::bench::runner r(o, prompts_for(o, 12), nullptr);
  // A first run opens the connections (the fake starts a thread for each, which the fake's own
  // clock does not see); the one measured reuses them, as each level after the first does.
  r.run("m", 4, {});
  seen_by_fake.requests.clear();
  const auto s = tollgate::bench::summarize(r.run("m", 4, {}), tollgate::bench::price{2, 8, "CNY", "test"});
  REQUIRE(s.requests == 12);
  REQUIRE(s.succeeded == 12);
  const auto truth = seen_by_fake.of(tokens, gap);
  // The fake kept to its script, give or take a loaded machine's scheduling.
  CHECK(truth.ttft.p50 >= 500);
  CHECK(truth.tpot.p50 >= 40);
  CHECK(s.ttft.p50 == Approx(truth.ttft.p50).epsilon(0.05));
  CHECK(s.ttft.p90 == Approx(truth.ttft.p90).epsilon(0.05));
  CHECK(s.ttft.p99 == Approx(truth.ttft.p99).epsilon(0.05));
  CHECK(s.tpot.p50 == Approx(truth.tpot.p50).epsilon(0.05));
  CHECK(s.tpot.p99 == Approx(truth.tpot.p99).epsilon(0.05));
  CHECK(s.e2e.p50 == Approx(truth.e2e.p50).epsilon(0.05));
  CHECK(s.e2e.p90 == Approx(truth.e2e.p90).epsilon(0.05));
  CHECK(s.e2e.p99 == Approx(truth.e2e.p99).epsilon(0.05));
  CHECK(s.requests_per_s == Approx(12 / truth.wall_s).epsilon(0.05));
  CHECK(s.output_tokens_per_s == Approx(12 * tokens / truth.wall_s).epsilon(0.05));
  CHECK(s.output_tokens == 12 * tokens);
  CHECK(s.prompt_tokens == 12 * 7);  // as the usage chunk reported
  CHECK(s.cost == Approx((12 * 7 * 2.0 + 12 * tokens * 8.0) / 1e6));
  // What went over the wire: the chat path, the key, a stream that asks for usage.
  const auto seen = up.requests();
  REQUIRE(seen.size() == 24);
  CHECK(seen[0].target == "/v1/chat/completions");
  CHECK(seen[0].headers.at("authorization") == "Bearer sk-bench");
  const auto body = json::parse(seen[0].body);
  CHECK(body["model"] == "m");
  CHECK(body["max_tokens"] == 20);
  CHECK(body["stream_options"]["include_usage"] == true);
}

TEST_CASE("bench: Anthropic Messages streams are timed and counted the same way", "[bench]") {
  constexpr int tokens = 10;
  constexpr auto gap = 40ms;
  fake_upstream up;
  timeline seen_by_fake;
  up.set_default([&](const recorded_request&) {
    return seen_by_fake.watch(timed_stream(api_kind::anthropic, tokens, 400ms, gap, 9));
  });
  auto o = options_for(up, api_kind::anthropic);
  o.requests = 6;
  tollgate::bench::runner r(o, prompts_for(o, 6), nullptr);
  r.run("claude-x", 3, {});
  seen_by_fake.requests.clear();
  const auto s = tollgate::bench::summarize(r.run("claude-x", 3, {}), std::nullopt);
  REQUIRE(s.succeeded == 6);
  const auto truth = seen_by_fake.of(tokens, gap);
  CHECK(s.ttft.p50 == Approx(truth.ttft.p50).epsilon(0.05));
  CHECK(s.tpot.p50 == Approx(truth.tpot.p50).epsilon(0.05));
  CHECK(s.e2e.p50 == Approx(truth.e2e.p50).epsilon(0.05));
  CHECK(s.output_tokens_per_s == Approx(6 * tokens / truth.wall_s).epsilon(0.05));
  CHECK(s.output_tokens == 6 * tokens);
  CHECK(s.prompt_tokens == 6 * 9);
  const auto seen = up.requests();
  REQUIRE_FALSE(seen.empty());
  CHECK(seen[0].target == "/v1/messages");
  CHECK(seen[0].headers.at("x-api-key") == "sk-bench");
  CHECK(seen[0].headers.count("authorization") == 0);
  CHECK(seen[0].headers.at("anthropic-version") == "2023-06-01");
  const auto body = json::parse(seen[0].body);
  CHECK(body["model"] == "claude-x");
  CHECK(body["messages"][0]["role"] == "user");
  CHECK_FALSE(body.contains("stream_options"));
}

TEST_CASE("bench: failures are counted by kind: 429, 500, reset, cut streams", "[bench]") {
  // What a request gets depends on its prompt ("Request K: ..."), so a request the client sends
  // again on a fresh connection (a reset on a reused one) meets the same fate.
  fake_upstream up;
  up.set_default([](const recorded_request& req) {
    std::smatch m;
    const std::string body = req.body;
    REQUIRE(std::regex_search(body, m, std::regex("Request ([0-9]+):")));
    response_script s;
    switch (std::stoull(m[1]) % 5) {
      case 0:
        s.status = 429;
        s.headers = {{"Retry-After", "1"}};
        s.body = R"({"error":{"message":"slow down","type":"rate_limit_error"}})";
        return s;
      case 1:
        s.status = 500;
        s.body = R"({"error":{"message":"boom","type":"server_error"}})";
        return s;
      case 2:
        s.reset_before_headers = true;
        return s;
      case 3: {
        auto cut = timed_stream(api_kind::openai, 10, 0ms, 1ms);
        cut.reset_after_chunks = 3;
        return cut;
      }
      default:
        return timed_stream(api_kind::openai, 5, 0ms, 1ms);
    }
  });
  auto o = options_for(up, api_kind::openai);
  o.requests = 40;
  const auto prompts = prompts_for(o, 40);
  std::map<std::string, std::size_t> expected;
  const char* kinds[] = {"http 429", "http 500", "reset", "reset", ""};
  for (const auto& p : prompts) {
    std::smatch m;
    REQUIRE(std::regex_search(p.text, m, std::regex("Request ([0-9]+):")));
    if (const char* k = kinds[std::stoull(m[1]) % 5]; *k) ++expected[k];
  }
  tollgate::bench::runner r(o, prompts, nullptr);
  const auto s = tollgate::bench::summarize(r.run("m", 4, {}), std::nullopt);
  CHECK(s.requests == 40);
  CHECK(s.succeeded == 8);
  CHECK(s.errors == expected);
  CHECK(s.success_rate() == Approx(0.2));
  // Failed requests count toward neither tokens nor latency.
  CHECK(s.output_tokens == 8 * 5);
  CHECK(s.e2e.count == 8);
}

TEST_CASE("bench: nothing listening is a connect error, not a hang", "[bench]") {
  std::uint16_t port = 0;
  {
    fake_upstream gone;
    port = gone.port();
  }
  bench_options o;
  o.base_url = "http://127.0.0.1:" + std::to_string(port) + "/v1";
  o.models = {"m"};
  o.requests = 3;
  o.quiet = true;
  tollgate::bench::runner r(o, prompts_for(o, 3), nullptr);
  const auto s = tollgate::bench::summarize(r.run("m", 1, {}), std::nullopt);
  CHECK(s.succeeded == 0);
  CHECK(s.errors == std::map<std::string, std::size_t>{{"connect", 3}});
}

TEST_CASE("bench: whole answers are timed and counted from their usage", "[bench]") {
  fake_upstream up;
  timeline seen_by_fake;
  up.set_default([&](const recorded_request&) {
    const std::string body =
        R"({"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":42,"total_tokens":53}})";
    response_script s;
    s.header_delay = 300ms;
    // In two pieces, so that the fake's clock sees the answer go out: the second is written
    // right after the first, and with it the answer is complete.
    s.chunks = {body.substr(0, 40), body.substr(40)};
    return seen_by_fake.watch(s);
  });
  auto o = options_for(up, api_kind::openai);
  o.stream = false;
  o.requests = 10;
  tollgate::bench::runner r(o, prompts_for(o, 10), nullptr);
  r.run("m", 2, {});
  seen_by_fake.requests.clear();
  const auto s = tollgate::bench::summarize(r.run("m", 2, {}), std::nullopt);
  REQUIRE(s.succeeded == 10);
  std::vector<double> e2e;
  auto first = std::chrono::steady_clock::time_point::max(), last = std::chrono::steady_clock::time_point::min();
  for (const auto& t : seen_by_fake.requests) {
    REQUIRE(t->size() == 3);
    e2e.push_back(std::chrono::duration<double, std::milli>((*t)[2] - (*t)[0]).count());
    first = std::min(first, (*t)[0]);
    last = std::max(last, (*t)[2]);
  }
  const auto truth = tollgate::bench::spread_of(e2e);
  const double wall_s = std::chrono::duration<double>(last - first).count();
  CHECK(truth.p50 >= 300);
  CHECK(s.e2e.p50 == Approx(truth.p50).epsilon(0.05));
  CHECK(s.ttft.count == 0);  // no first token to time without a stream
  CHECK(s.output_tokens == 420);
  CHECK(s.output_tokens_per_s == Approx(420 / wall_s).epsilon(0.05));
}

TEST_CASE("bench: open loop sends Poisson arrivals at the asked rate", "[bench]") {
  fake_upstream up;
  up.set_default([](const recorded_request&) { return timed_stream(api_kind::openai, 3, 200ms, 1ms); });
  auto o = options_for(up, api_kind::openai);
  o.concurrency.clear();
  o.rates = {100};
  o.requests = 150;
  tollgate::bench::runner r(o, prompts_for(o, 150), nullptr);
  const auto result = r.run("m", 100, {});
  REQUIRE(result.samples.size() == 150);
  // Arrivals do not wait for answers (200 ms each): at 100/s about 20 are in flight at once.
  double last_start = 0;
  for (const auto& x : result.samples) last_start = std::max(last_start, x.start);
  CHECK(last_start > 1.0);
  CHECK(last_start < 2.0);  // 150 arrivals at 100/s: 1.5 s, give or take Poisson's spread
  std::size_t overlapping = 0;
  for (const auto& x : result.samples)
    if (x.start < 0.5 && x.start + x.e2e > 0.5) ++overlapping;
  CHECK(overlapping >= 8);
}

TEST_CASE("bench: the reports carry every run", "[bench]") {
  fake_upstream up;
  up.set_default([](const recorded_request&) { return timed_stream(api_kind::openai, 4, 5ms, 1ms); });
  auto o = options_for(up, api_kind::openai);
  o.requests = 6;
  o.concurrency = {1, 2};
  tollgate::bench::runner r(o, prompts_for(o, 6), nullptr);
  std::vector<tollgate::bench::run_result> runs = {r.run("m", 1, {}), r.run("m", 2, {})};
  std::vector<tollgate::bench::summary> rows;
  for (const auto& run : runs) rows.push_back(tollgate::bench::summarize(run, std::nullopt));
  std::ostringstream table, js, csv, html;
  tollgate::bench::write_table(table, rows, true);
  tollgate::bench::write_json(js, o, rows);
  tollgate::bench::write_csv(csv, rows);
  tollgate::bench::write_html(html, o, rows, runs);
  CHECK(table.str().find("TTFT ms p50/p90/p99") != std::string::npos);
  const auto doc = json::parse(js.str());
  REQUIRE(doc["runs"].size() == 2);
  CHECK(doc["runs"][1]["concurrency"] == 2);
  CHECK(doc["runs"][1]["succeeded"] == 6);
  CHECK(doc["runs"][1]["ttft_ms"]["p90"].is_number());
  CHECK(doc["runs"][0]["cost"].is_null());
  std::istringstream lines(csv.str());
  std::string line;
  int n = 0;
  while (std::getline(lines, line)) ++n;
  CHECK(n == 3);
  CHECK(html.str().find("<svg") != std::string::npos);
  CHECK(html.str().find("<script") == std::string::npos);
  CHECK(html.str().find("http://www.w3.org/2000/svg") != std::string::npos);
  CHECK(html.str().find("src=\"http") == std::string::npos);
}
