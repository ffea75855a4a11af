// A response head's fields kept in one string (header_fields), and the queue of a call's events
// past the two it holds in place.
#include <catch2/catch.hpp>

#include <string>
#include <utility>
#include <vector>

#include "adapters/backend.hpp"
#include "adapters/event_queue.hpp"

using namespace tollgate::adapters;

namespace {

std::vector<std::pair<std::string, std::string>> listed(const header_fields& h) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [name, value] : h) out.emplace_back(name, value);
  return out;
}

}  // namespace

TEST_CASE("names are lower-cased byte for byte, every byte at every place", "[header_fields]") {
  // Names of 1 to 19 bytes: the eight-byte steps and the bytes after them.
  for (std::size_t size = 1; size <= 19; ++size) {
    for (std::size_t at = 0; at < size; ++at) {
      for (int c = 0; c < 256; ++c) {
        std::string name(size, 'M');
        name[at] = static_cast<char>(c);
        if (at + 1 < size) name[at + 1] = static_cast<char>(255 - c);
        std::string expected = name;
        for (char& e : expected) {
          if (e >= 'A' && e <= 'Z') e = static_cast<char>(e - 'A' + 'a');
        }
        header_fields h;
        h.emplace_back_lower(name, "v");
        const auto [got, value] = *h.begin();
        REQUIRE(got == expected);
        REQUIRE(value == "v");
      }
    }
  }
}

TEST_CASE("header fields keep names, values and their order", "[header_fields]") {
  header_fields h;
  CHECK(h.empty());
  CHECK(h.begin() == h.end());
  CHECK_FALSE(h.find("content-type"));
  h.emplace_back_lower("Content-Type", "application/json; charset=utf-8");
  h.emplace_back("x-RateLimit-Remaining", "");
  h.emplace_back_lower("DATE", "Thu, 03 Dec 2026 12:00:00 GMT");
  h.emplace_back_lower("content-type", "text/plain");  // a repeat: find() gives the first
  const std::string long_value(70000, 'v');            // past 16 bits of length
  h.emplace_back_lower("X-Long-1", long_value);
  CHECK(h.size() == 5);
  CHECK_FALSE(h.empty());
  const std::vector<std::pair<std::string, std::string>> expected{{"content-type", "application/json; charset=utf-8"},
                                                                  {"x-RateLimit-Remaining", ""},
                                                                  {"date", "Thu, 03 Dec 2026 12:00:00 GMT"},
                                                                  {"content-type", "text/plain"},
                                                                  {"x-long-1", long_value}};
  CHECK(listed(h) == expected);
  CHECK(h == expected);
  CHECK_FALSE(h == std::vector<std::pair<std::string, std::string>>(expected.begin(), expected.end() - 1));
  REQUIRE(h.find("content-type"));
  CHECK(*h.find("content-type") == "application/json; charset=utf-8");
  REQUIRE(h.find("x-RateLimit-Remaining"));
  CHECK(h.find("x-RateLimit-Remaining")->empty());
  CHECK_FALSE(h.find("x-ratelimit-remaining"));  // compared as it is
  CHECK_FALSE(h.find("content-typ"));

  header_fields from_list = expected;  // as a list of pairs was assigned
  CHECK(from_list == h);
  header_fields moved = std::move(from_list);
  CHECK(moved == expected);

  std::string type = h.release_value("content-type");
  CHECK(type == "application/json; charset=utf-8");
  CHECK(h.empty());
  CHECK(h.size() == 0);
  CHECK(moved.release_value("x-long-1") == long_value);
  header_fields none;
  none.emplace_back("a", "b");
  CHECK(none.release_value("c").empty());
  CHECK(none.empty());
  none.emplace_back("a", "b");
  CHECK(none == std::vector<std::pair<std::string, std::string>>{{"a", "b"}});
}

TEST_CASE("a response head read in one pass lists its fields as the old list did", "[header_fields]") {
  response_head head;
  head.headers.emplace_back_lower("Server", "nginx");
  head.headers.emplace_back_lower("Content-Length", "250");
  CHECK(head.find("server") == std::optional<std::string_view>("nginx"));
  CHECK(head.find("content-length") == std::optional<std::string_view>("250"));
  CHECK_FALSE(head.find("Server"));
}

TEST_CASE("a call's events queue past the two held in place, in order", "[header_fields]") {
  event_queue q;
  CHECK(q.empty());
  for (int round = 0; round < 3; ++round) {
    const int n = round == 0 ? 2 : round == 1 ? 7 : 1;
    for (int i = 0; i < n; ++i) {
      call_event ev;
      ev.type = i == 0 ? call_event::kind::head : call_event::kind::data;
      ev.head.status = 200 + i;
      ev.head.headers.emplace_back("content-type", "application/json; charset=utf-8");
      ev.data = std::string(40, static_cast<char>('a' + i));
      q.push_back(std::move(ev));
    }
    q.back().data += "!";
    for (int i = 0; i < n; ++i) {
      REQUIRE_FALSE(q.empty());
      const call_event ev = q.pop_front();
      CHECK(ev.head.status == 200 + i);
      CHECK(ev.head.find("content-type") == std::optional<std::string_view>("application/json; charset=utf-8"));
      CHECK(ev.data == std::string(40, static_cast<char>('a' + i)) + (i == n - 1 ? "!" : ""));
    }
    CHECK(q.empty());
  }
  call_event ev;
  q.push_back(std::move(ev));
  q.clear();
  CHECK(q.empty());
}
