// Token counting off the worker threads (issue 16, item 7): a long prompt whose answer came with
// no usage is counted on the counting threads, so a single-worker gateway keeps answering other
// clients meanwhile; past metering.max_count_bytes the count is estimated and says so.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "gateway/accounting/token_counter.hpp"
#include "tokenizer/tokenizer.hpp"
#include "tests/integration/gateway_fixture.hpp"
#include "tests/integration/sqlite_probe.hpp"

using namespace tollgate::test;

namespace {

constexpr const char* tokenizer_file = TOLLGATE_SOURCE_DIR "/data/deepseek_v3/tokenizer.json";

/// Words of varied length, so that the tokenizer does real work (a run of one letter is cheap).
std::string prose(std::size_t bytes) {
  static const char* words[] = {"gateway ", "tokens ", "metering, ", "upstream ", "latency. ", "ledger ",
                                "priority ", "Qiniu ", "stream; ", "counted ", "abandoned ", "42 ", "über ",
                                "naïve ", "client ", "worker "};
  std::string out;
  out.reserve(bytes + 16);
  for (std::size_t i = 0; out.size() < bytes; ++i) out += words[(i * 7 + i / 16) % 16];
  out.resize(bytes);
  return out;
}

/// A client that sends raw bytes and reads until a marker, then may leave.
class raw_client {
 public:
  explicit raw_client(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    timeval tv{0, 200 * 1000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~raw_client() { close(); }
  raw_client(const raw_client&) = delete;
  raw_client& operator=(const raw_client&) = delete;
  bool send(std::string_view bytes) {
    while (!bytes.empty()) {
      const auto n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }
  bool read_until(std::string_view marker, std::chrono::seconds wait) {
    const auto deadline = std::chrono::steady_clock::now() + wait;
    while (got_.find(marker) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      char buf[8192];
      const auto n = ::recv(fd_, buf, sizeof buf, 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) return false;
      if (n > 0) got_.append(buf, static_cast<std::size_t>(n));
    }
    return got_.find(marker) != std::string::npos;
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  const std::string& got() const { return got_; }

 private:
  int fd_ = -1;
  std::string got_;
};

/// A streamed answer of many chunks without usage for a long prompt; a short answer with usage
/// for anything else.
response_script answer(const recorded_request& r) {
  if (r.body.size() < 100'000) return fake_upstream::openai_default(r);
  response_script s;
  s.content_type = "text/event-stream";
  for (int i = 0; i < 400; ++i) {
    s.chunks.push_back(R"(data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"part )" +
                       std::to_string(i) + R"( "}}]})" + "\n\n");
  }
  s.chunks.push_back("data: [DONE]\n\n");
  s.chunk_delay = std::chrono::milliseconds(20);
  return s;
}

std::string config(const std::string& db, std::size_t max_count_bytes) {
  return "metering: {tokenizer: " + std::string(tokenizer_file) + ", max_count_bytes: " + std::to_string(max_count_bytes) +
         "}\nstore: {sqlite: " + db + ", flush_interval: sync}\n" + R"(
server: {listen: "127.0.0.1:0", threads: 1, max_body_bytes: 33554432, access_log: "off"}
keys: [{name: tester, key: tg-test-client-key}]
backends: [{name: alpha, kind: openai, base_url: "{A}", timeouts: {total: 60s}}]
routes: [{model: chat-public, targets: [{backend: alpha}]}]
)";
}

/// Sends a streamed chat request with a long prompt, reads the start of the answer and leaves.
void abandon_early(std::uint16_t port, const std::string& request_id, const std::string& prompt) {
  const std::string body = R"({"model":"chat-public","stream":true,"messages":[{"role":"user","content":")" + prompt +
                           R"("}]})";
  raw_client a(port);
  REQUIRE(a.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + std::string(client_key) +
                 "\r\nContent-Type: application/json\r\nx-request-id: " + request_id +
                 "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body));
  const bool started = a.read_until("part 1 ", std::chrono::seconds(30));
  INFO(a.got().substr(0, 600));
  REQUIRE(started);
  a.close();  // the client leaves with most of the stream still to come
}

}  // namespace

TEST_CASE("a long prompt is counted off the worker: another client is answered meanwhile", "[hardening][metering]") {
  REQUIRE(std::filesystem::exists(tokenizer_file));
  const std::string path = temp_db("tollgate-count-offload");
  remove_db(path);
  {
    // Every byte tokenized: counting 24 MB takes seconds on the counting thread.
    gateway_fixture f(config(path, 64 * 1024 * 1024));
    f.a.set_default(answer);
    auto& counter = *f.server->shared().counter;
    db d(path);
    const auto abandoned_rows = [&] { return d.one("SELECT COUNT(*) FROM usage_ledger WHERE request_id = 'abandoned-1'"); };
    const auto sent = std::chrono::steady_clock::now();
    abandon_early(f.server->port(), "abandoned-1", prose(24 * 1024 * 1024));
    // The abandoned request is published once the gateway sees the client gone: its count starts
    // on the counting thread (counted on the worker, its row would be there once it is done).
    REQUIRE(eventually([&] { return counter.pending() == 1 || abandoned_rows() == "1"; }));
    // The gateway has one worker; it answers another client while the count still runs.
    http_client c;
    const auto r = c.post(f.base + "/v1/chat/completions",
                          R"({"model":"chat-public","messages":[{"role":"user","content":"quick"}]})",
                          gateway_fixture::auth({"x-request-id: quick-1"}));
    CHECK(r.status == 200);
    CHECK(r.body.find("quick") != std::string::npos);
    // Answered before the count ended (counted on the worker, the abandoned request's row, with
    // flush_interval: sync, would be written before this answer could start).
    CHECK(abandoned_rows() == "0");
    CHECK(counter.pending() == 1);
    const auto answered = std::chrono::steady_clock::now();
    CHECK(eventually([&] { return d.one("SELECT usage_source FROM usage_ledger WHERE request_id = 'quick-1'") == "upstream"; }));
    // Then the abandoned request's row is written, with what was counted.
    for (int i = 0; i < 600 && abandoned_rows() != "1"; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const auto written = std::chrono::steady_clock::now();
    const double tail_ms = std::chrono::duration<double, std::milli>(written - answered).count();
    const double window_ms = std::chrono::duration<double, std::milli>(written - sent).count();
    INFO("the count ended " << tail_ms << " ms after the other client's answer, " << window_ms
                            << " ms after the abandoned request was sent");
    CHECK(d.one("SELECT usage_source FROM usage_ledger WHERE request_id = 'abandoned-1'") == "counted");
    CHECK(d.one("SELECT status FROM usage_ledger WHERE request_id = 'abandoned-1'") == "200");
    CHECK(std::stoll(d.one("SELECT prompt_tokens FROM usage_ledger WHERE request_id = 'abandoned-1'")) > 3'000'000);
    CHECK(std::stoll(d.one("SELECT completion_tokens FROM usage_ledger WHERE request_id = 'abandoned-1'")) > 0);
    // Its latency is the request's own time, to the client's leaving: the counting (at least the
    // part after the other answer) is not in it.
    const double latency_ms = std::stod(d.one("SELECT latency_ms FROM usage_ledger WHERE request_id = 'abandoned-1'"));
    CHECK(latency_ms < window_ms - tail_ms / 2);
    CHECK(counter.pending() == 0);
  }
  remove_db(path);
}

TEST_CASE("past metering.max_count_bytes the count is estimated at the counted rate, and the ledger says so",
          "[hardening][metering]") {
  REQUIRE(std::filesystem::exists(tokenizer_file));
  const std::string path = temp_db("tollgate-count-estimate");
  remove_db(path);
  const std::string prompt = prose(1024 * 1024);
  {
    gateway_fixture f(config(path, 64 * 1024));
    f.a.set_default(answer);
    abandon_early(f.server->port(), "estimated-1", prompt);
    db d(path);
    REQUIRE(eventually([&] { return d.one("SELECT COUNT(*) FROM usage_ledger WHERE request_id = 'estimated-1'") == "1"; }));
    CHECK(d.one("SELECT usage_source FROM usage_ledger WHERE request_id = 'estimated-1'") == "estimated");
    // The estimate is close to the real count of the same text (the chat template adds a few).
    const auto tok = tollgate::tokenizer::tokenizer::load(tokenizer_file);
    const double exact = static_cast<double>(tok->count(prompt));
    const double estimate = std::stod(d.one("SELECT prompt_tokens FROM usage_ledger WHERE request_id = 'estimated-1'"));
    INFO("exact " << exact << ", estimated " << estimate);
    CHECK(std::abs(estimate - exact) / exact < 0.05);
  }
  remove_db(path);
}

TEST_CASE("the token counter refuses work past its queue, and runs what waits at stop", "[metering]") {
  tollgate::gateway::token_counter counter(1, 1);
  std::mutex m;
  std::condition_variable cv;
  bool release = false, started = false;
  int stopped_runs = 0;
  tollgate::gateway::token_counter::job blocker = [&](bool) {
    std::unique_lock lock(m);
    started = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  };
  REQUIRE(counter.post(blocker));
  {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return started; });
  }
  tollgate::gateway::token_counter::job waiting = [&](bool stopping) {
    if (stopping) ++stopped_runs;
  };
  tollgate::gateway::token_counter::job refused = [](bool) {};
  CHECK(counter.post(waiting));
  CHECK_FALSE(counter.post(refused));  // the one queue place is taken
  CHECK(refused != nullptr);           // not taken: the caller still has it
  CHECK(counter.pending() == 2);
  std::thread stopper([&] { counter.stop(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  {
    std::lock_guard lock(m);
    release = true;
  }
  cv.notify_all();
  stopper.join();
  CHECK(stopped_runs == 1);  // what waited ran, told to estimate
  CHECK(counter.pending() == 0);
}

TEST_CASE("a prompt the counting code cannot read is estimated, and the gateway lives on", "[hardening][metering]") {
  REQUIRE(std::filesystem::exists(tokenizer_file));
  const std::string path = temp_db("tollgate-count-odd");
  remove_db(path);
  {
    gateway_fixture f(config(path, 64 * 1024));
    response_script s;  // an answer without usage: the prompt must be counted
    s.body = R"({"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]})";
    f.a.set_default([s](const recorded_request&) { return s; });
    http_client c;
    // A role that is not a string: the chat template's reader throws on it.
    const auto r = c.post(f.base + "/v1/chat/completions", R"({"model":"chat-public","messages":[{"role":5,"content":"x"}]})",
                          gateway_fixture::auth({"x-request-id: odd-1"}));
    CHECK(r.status == 200);
    db d(path);
    REQUIRE(eventually([&] { return d.one("SELECT COUNT(*) FROM usage_ledger WHERE request_id = 'odd-1'") == "1"; }));
    CHECK(d.one("SELECT usage_source FROM usage_ledger WHERE request_id = 'odd-1'") == "estimated");
    CHECK(c.post(f.base + "/v1/chat/completions", R"({"model":"chat-public","messages":[]})", gateway_fixture::auth())
              .status == 200);
  }
  remove_db(path);
}

TEST_CASE("POST /v1/messages/count_tokens counts off the worker: another client is answered meanwhile",
          "[hardening][metering]") {
  REQUIRE(std::filesystem::exists(tokenizer_file));
  const std::string path = temp_db("tollgate-count-endpoint");
  remove_db(path);
  {
    gateway_fixture f(config(path, 64 * 1024));
    auto& counter = *f.server->shared().counter;
    const std::string body =
        R"({"model":"chat-public","messages":[{"role":"user","content":")" + prose(24 * 1024 * 1024) + R"("}]})";
    std::atomic<bool> counted{false};
    long count_status = 0;
    std::string count_body;
    std::thread counting([&] {
      http_client c;
      http_options o = gateway_fixture::auth({"anthropic-version: 2023-06-01"});
      o.timeout_ms = 60000;
      const auto r = c.post(f.base + "/v1/messages/count_tokens", body, o);
      count_status = r.status;
      count_body = r.body;
      counted = true;
    });
    // Counted on the worker, the count would hold up the other request until it was answered.
    const bool started = eventually([&] { return counter.pending() == 1 || counted.load(); });
    http_client c;
    const auto r = c.post(f.base + "/v1/chat/completions",
                          R"({"model":"chat-public","messages":[{"role":"user","content":"quick"}]})",
                          gateway_fixture::auth());
    const bool answered_first = !counted.load();
    counting.join();
    CHECK(started);
    CHECK(r.status == 200);
    CHECK(answered_first);
    INFO(count_body.substr(0, 200));
    CHECK(count_status == 200);
    const auto j = nlohmann::json::parse(count_body, nullptr, false);
    CHECK((j.is_object() && j.value("input_tokens", 0) > 3'000'000));
  }
  remove_db(path);
}
