#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "gateway/sse.hpp"

using namespace tollgate::gateway;

namespace {

std::vector<std::string> split_all(sse_splitter& s) {
  std::vector<std::string> out;
  while (auto e = s.next_event()) out.push_back(*e);
  return out;
}

}  // namespace

TEST_CASE("events are split at blank lines, byte for byte", "[sse]") {
  const std::string stream = "data: {\"a\":1}\n\n: comment\ndata: x\n\nevent: done\ndata: [DONE]\n\n";
  const std::vector<std::string> expected = {"data: {\"a\":1}\n\n", ": comment\ndata: x\n\n", "event: done\ndata: [DONE]\n\n"};
  // Every way of cutting the stream in two gives the same events.
  for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
    sse_splitter s;
    s.feed(stream.substr(0, cut));
    auto got = split_all(s);
    s.feed(stream.substr(cut));
    auto rest = split_all(s);
    got.insert(got.end(), rest.begin(), rest.end());
    INFO("cut at " << cut);
    CHECK(got == expected);
    CHECK(s.buffered() == 0);
  }
}

TEST_CASE("byte-at-a-time feeding with CRLF and CR line ends", "[sse]") {
  const std::string stream = "data: one\r\n\r\ndata: two\r\rdata: three\n\n";
  sse_splitter s;
  std::vector<std::string> got;
  for (char c : stream) {
    s.feed(std::string_view(&c, 1));
    while (auto e = s.next_event()) got.push_back(*e);
  }
  CHECK(got == std::vector<std::string>{"data: one\r\n\r\n", "data: two\r\r", "data: three\n\n"});
}

TEST_CASE("a cut stream leaves its partial event in take_rest", "[sse]") {
  sse_splitter s;
  s.feed("data: whole\n\ndata: {\"half\":");
  CHECK(s.next_event() == std::optional<std::string>("data: whole\n\n"));
  CHECK_FALSE(s.next_event());
  CHECK(s.take_rest() == "data: {\"half\":");
  CHECK(s.take_rest().empty());
}

TEST_CASE("long streams stay linear and exact", "[sse]") {
  sse_splitter s;
  std::string expected_last;
  std::size_t count = 0;
  for (int i = 0; i < 20000; ++i) {
    const std::string e = "data: {\"i\":" + std::to_string(i) + "}\n\n";
    // Feed in uneven pieces that straddle event boundaries.
    s.feed(e.substr(0, 5));
    s.feed(e.substr(5));
    while (auto ev = s.next_event()) {
      ++count;
      expected_last = *ev;
    }
  }
  CHECK(count == 20000);
  CHECK(expected_last == "data: {\"i\":19999}\n\n");
}

TEST_CASE("sse_data joins data lines and ignores other fields", "[sse]") {
  CHECK(sse_data("data: {\"a\":1}\n\n") == std::optional<std::string>("{\"a\":1}"));
  CHECK(sse_data("data:nospace\n\n") == std::optional<std::string>("nospace"));
  CHECK(sse_data("event: x\ndata: a\ndata:  b\nid: 3\n\n") == std::optional<std::string>("a\n b"));
  CHECK(sse_data(": keep-alive\n\n") == std::nullopt);
  CHECK(sse_data("datum: no\n\n") == std::nullopt);
  CHECK(sse_data("data\n\n") == std::optional<std::string>(""));
  CHECK(sse_data("data: crlf\r\n\r\n") == std::optional<std::string>("crlf"));
}
