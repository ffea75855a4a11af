#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "protocol/sse.hpp"

using namespace tollgate::protocol;

namespace {

using events = std::vector<std::string>;

void drain(sse_splitter& s, events& out, bool views = false) {
  if (views) {
    while (auto e = s.next_event_view()) out.emplace_back(*e);
  } else {
    while (auto e = s.next_event()) out.push_back(*e);
  }
}

/// Feeds stream cut at the given offsets (ascending), draining after every feed. moved: the pieces
/// are fed as strings the splitter may take, and events read as views (as the relay does).
events split_at(const std::string& stream, const std::vector<std::size_t>& cuts, std::string* rest = nullptr,
                bool moved = false) {
  sse_splitter s;
  events out;
  std::size_t from = 0;
  const auto feed = [&](std::string_view piece) {
    if (moved) {
      s.feed_moved(std::string(piece));
    } else {
      s.feed(piece);
    }
  };
  for (std::size_t cut : cuts) {
    feed(std::string_view(stream).substr(from, cut - from));
    drain(s, out, moved);
    from = cut;
  }
  feed(std::string_view(stream).substr(from));
  drain(s, out, moved);
  if (rest) *rest = s.take_rest();
  return out;
}

/// Every way of cutting stream into two and three pieces gives the same events.
void check_every_split(const std::string& stream, const events& expected, const std::string& expected_rest = {}) {
  for (std::size_t a = 0; a <= stream.size(); ++a) {
    for (std::size_t b = a; b <= stream.size(); ++b) {
      std::string rest;
      INFO("cuts at " << a << " and " << b);
      for (const bool moved : {false, true}) {
        const events got = split_at(stream, {a, b}, &rest, moved);
        REQUIRE(got == expected);
        REQUIRE(rest == expected_rest);
      }
    }
  }
}

}  // namespace

TEST_CASE("events are split at blank lines, byte for byte, however the stream is cut", "[sse]") {
  const std::string stream =
      "data: {\"a\":1}\n\n"
      ": comment\ndata: x\n\n"
      "event: done\nid: 7\ndata: [DONE]\n\n";
  check_every_split(stream, {"data: {\"a\":1}\n\n", ": comment\ndata: x\n\n", "event: done\nid: 7\ndata: [DONE]\n\n"});
}

TEST_CASE("bytes fed as a string give back the storage the splitter lets go", "[sse]") {
  sse_splitter s;
  std::string first(200, 'a');
  first.replace(0, 9, "data: 1\n\n");
  const char* const first_storage = first.data();
  CHECK(s.feed_moved(std::move(first)).empty());  // an empty splitter takes the string itself
  const auto one = s.next_event_view();
  REQUIRE(one == std::optional<std::string_view>("data: 1\n\n"));
  CHECK(one->data() == first_storage);  // a view of the storage it took: no copy
  std::string second = "data: 2\n\ndata: 3";
  const std::size_t second_room = second.capacity();
  const std::string back = s.feed_moved(std::move(second));  // it holds the first's rest: copied in
  CHECK(back.empty());
  CHECK(back.capacity() == second_room);  // second's storage, emptied, for the next bytes
  std::string two(191, 'a');
  two += "data: 2\n\n";
  CHECK(s.next_event_view() == std::optional<std::string_view>(two));
  CHECK(s.feed_moved(std::string("\n\n")).empty());
  CHECK(s.next_event_view() == std::optional<std::string_view>("data: 3\n\n"));
  // Drained: the next string is taken, and the storage it held until now comes back.
  std::string fourth(110, 'b');
  fourth.replace(0, 9, "data: 4\n\n");
  const std::string freed = s.feed_moved(std::move(fourth));
  CHECK(freed.empty());
  CHECK(freed.capacity() >= 200);  // the first string's storage
}

TEST_CASE("CRLF, CR and mixed line ends, however the stream is cut", "[sse]") {
  check_every_split("data: one\r\n\r\ndata: two\r\ndata: more\r\n\r\n: ping\r\n\r\n",
                    {"data: one\r\n\r\n", "data: two\r\ndata: more\r\n\r\n", ": ping\r\n\r\n"});
  // A lone '\r' is a line end of its own once the next byte shows it is not "\r\n".
  check_every_split("data: a\r\rdata: b\rdata: c\r\rx", {"data: a\r\r", "data: b\rdata: c\r\r"}, "x");
  // Any two line ends in a row make the blank line.
  check_every_split("data: a\n\r\ndata: b\r\n\ndata: c\r\r\ndata: d\n\n",
                    {"data: a\n\r\n", "data: b\r\n\n", "data: c\r\r\n", "data: d\n\n"});
}

TEST_CASE("a terminator split across feeds", "[sse]") {
  sse_splitter s;
  s.feed("data: x\r\n");
  CHECK_FALSE(s.next_event());
  s.feed("\r\n");
  CHECK(s.next_event() == std::optional<std::string>("data: x\r\n\r\n"));
  CHECK(s.buffered() == 0);

  // "\r" at the end of what has arrived may still become "\r\n": the event waits for the next byte.
  s.feed("data: y\r\n\r");
  CHECK_FALSE(s.next_event());
  s.feed("\ndata: z\n");
  CHECK(s.next_event() == std::optional<std::string>("data: y\r\n\r\n"));
  CHECK_FALSE(s.next_event());
  s.feed("\n");
  CHECK(s.next_event() == std::optional<std::string>("data: z\n\n"));

  s.feed("data: cr\r\r");
  CHECK_FALSE(s.next_event());
  s.feed("data: next");
  CHECK(s.next_event() == std::optional<std::string>("data: cr\r\r"));
  CHECK(s.take_rest() == "data: next");
}

TEST_CASE("byte-at-a-time feeding", "[sse]") {
  const std::string stream = "data: one\r\n\r\ndata: two\r\rdata: three\n\n";
  sse_splitter s;
  events got;
  for (char c : stream) {
    s.feed(std::string_view(&c, 1));
    drain(s, got);
  }
  // The "\r\r" event shows once the next byte proves its second '\r' is not the start of "\r\n".
  CHECK(got == events{"data: one\r\n\r\n", "data: two\r\r", "data: three\n\n"});
  CHECK(s.buffered() == 0);
}

TEST_CASE("blank lines between events are events of their own", "[sse]") {
  check_every_split("\ndata: a\n\n\n\r\n", {"\n", "data: a\n\n", "\n", "\r\n"});
}

TEST_CASE("a cut stream leaves its partial event in take_rest", "[sse]") {
  sse_splitter s;
  CHECK_FALSE(s.next_event());
  CHECK(s.take_rest().empty());
  s.feed("data: whole\n\ndata: {\"half\":");
  CHECK(s.buffered() == 27);
  CHECK(s.next_event() == std::optional<std::string>("data: whole\n\n"));
  CHECK(s.buffered() == 14);
  CHECK_FALSE(s.next_event());
  CHECK(s.take_rest() == "data: {\"half\":");
  CHECK(s.buffered() == 0);
  CHECK(s.take_rest().empty());

  // The splitter starts afresh after take_rest.
  s.feed("data: again\n");
  CHECK_FALSE(s.next_event());
  s.feed("\n");
  CHECK(s.next_event() == std::optional<std::string>("data: again\n\n"));

  // A stream cut just after one line end of the two.
  s.feed("data: a\n\ndata: b\n");
  CHECK(s.next_event() == std::optional<std::string>("data: a\n\n"));
  CHECK_FALSE(s.next_event());
  CHECK(s.take_rest() == "data: b\n");
}

TEST_CASE("many events in random pieces come out whole and in order", "[sse]") {
  std::mt19937 rng(12345);
  std::string stream;
  events expected;
  for (int i = 0; i < 100000; ++i) {
    std::string e =
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"delta\":{\"content\":\"" + std::to_string(i) + "\"}}]}";
    if (i % 97 == 0) e = ": keep-alive";
    e += i % 3 == 0 ? "\r\n\r\n" : "\n\n";
    stream += e;
    expected.push_back(std::move(e));
  }
  sse_splitter s;
  events got;
  got.reserve(expected.size());
  std::size_t at = 0;
  std::size_t most_buffered = 0;
  while (at < stream.size()) {
    const std::size_t n = std::uniform_int_distribution<std::size_t>(1, 300)(rng);
    s.feed(std::string_view(stream).substr(at, n));
    at += n;
    drain(s, got);
    most_buffered = std::max(most_buffered, s.buffered());
  }
  CHECK(got.size() == expected.size());
  CHECK(got == expected);
  CHECK(s.buffered() == 0);
  CHECK(most_buffered < 400);
}

TEST_CASE("reads taken whole that cut events: only the cut event is copied, and every event comes out",
          "[sse]") {
  std::mt19937 rng(777);
  std::string stream;
  events expected;
  for (int i = 0; i < 20000; ++i) {
    std::string e = "data: {\"choices\":[{\"delta\":{\"content\":\"" + std::to_string(i) + "\"}}]}";
    if (i % 89 == 0) e += "\ndata: " + std::string(static_cast<std::size_t>(rng() % 5000), 'y');  // longer than a read
    e += i % 3 == 0 ? "\r\n\r\n" : (i % 3 == 1 ? "\n\n" : "\r\r");
    stream += e;
    expected.push_back(std::move(e));
  }
  stream += "data: cut";  // a stream that ends mid-event
  sse_splitter s;
  events got;
  std::size_t at = 0, reads = 0, taken_whole = 0;
  while (at < stream.size()) {
    const std::size_t n = std::uniform_int_distribution<std::size_t>(1, 3000)(rng);
    std::string read(std::string_view(stream).substr(at, n));
    const char* const storage = read.data();
    const std::string_view read_bytes = read;
    const std::string back = s.feed_moved(std::move(read));
    CHECK(back.empty());
    at += n;
    ++reads;
    // Now and then a feed before the events are read: what is held is joined, not lost.
    if (rng() % 10 == 0) continue;
    bool from_read = false;
    while (auto e = s.next_event_view()) {
      got.emplace_back(*e);
      // An event wholly inside a read large enough to be taken is a view of that read's storage.
      if (e->data() >= storage && e->data() < storage + read_bytes.size()) from_read = true;
    }
    if (from_read) ++taken_whole;
  }
  CHECK(s.take_rest() == "data: cut");
  CHECK(got.size() == expected.size());
  CHECK(got == expected);
  // Most reads are taken as they are, not copied into the splitter's buffer.
  CHECK(taken_whole > reads / 2);
}

TEST_CASE("a watched pair: every event that holds it says it may, and whole events without it say not",
          "[sse]") {
  std::mt19937 rng(4242);
  std::string stream;
  events expected;
  std::vector<bool> holds;
  for (int i = 0; i < 20000; ++i) {
    // The pair anywhere: an event's first bytes, its middle, a line's end, a second line, or as a
    // near miss (its bytes apart, or the second before the first).
    std::string e = "data: {\"choices\":[{\"delta\":{\"content\":\"" + std::string(rng() % 40, 'x') + "\"}}]}";
    switch (rng() % 9) {
      case 0: e.insert(6, "\"usage\":1,"); break;
      case 1: e.insert(rng() % e.size(), "\"u"); break;
      case 2: e += "\"u"; break;
      case 3: e += "\ndata: \"u" + std::string(rng() % 3000, 'y'); break;
      case 4: e += "\ndata: \"\ndata: u"; break;
      case 5: e.insert(rng() % e.size(), "u\""); break;
      case 6: e += "\ndata: " + std::string(rng() % 3000, 'y'); break;
      default: break;
    }
    e += i % 3 == 0 ? "\r\n\r\n" : (i % 3 == 1 ? "\n\n" : "\r\r");
    holds.push_back(e.find("\"u") != std::string::npos);
    stream += e;
    expected.push_back(std::move(e));
  }
  SECTION("fed an event at a time: the answer is exact") {
    sse_splitter s;
    s.watch("\"u");
    std::size_t k = 0;
    for (const std::string& e : expected) {
      s.feed_moved(std::string(e));
      // An event that ends in "\r\r" comes out with the next one's first byte.
      while (const auto got = s.next_event_view()) {
        REQUIRE(k < expected.size());
        REQUIRE(*got == expected[k]);
        INFO(expected[k]);
        CHECK(s.may_hold_watched() == holds[k]);
        ++k;
      }
    }
    CHECK(k == expected.size());
  }
  SECTION("fed in random reads, some joined, some byte by byte: never a miss, and few false alarms") {
    sse_splitter s;
    s.watch("\"u");
    events got;
    std::size_t at = 0, missed = 0, false_alarms = 0, without = 0;
    while (at < stream.size()) {
      const std::size_t n = rng() % 50 == 0 ? 1 : std::uniform_int_distribution<std::size_t>(1, 5000)(rng);
      if (rng() % 2 == 0) {
        s.feed_moved(std::string(std::string_view(stream).substr(at, n)));
      } else {
        s.feed(std::string_view(stream).substr(at, n));
      }
      at += n;
      if (rng() % 10 == 0) continue;
      while (auto e = s.next_event_view()) {
        const std::size_t k = got.size();
        got.emplace_back(*e);
        if (holds[k] && !s.may_hold_watched()) ++missed;
        if (!holds[k]) {
          ++without;
          if (s.may_hold_watched()) ++false_alarms;
        }
      }
    }
    CHECK(got == expected);
    CHECK(missed == 0);
    // Only an event cut inside a read's last bytes can be a false alarm.
    CHECK(false_alarms < without / 20);
  }
  SECTION("nothing watched: every event may hold anything") {
    sse_splitter s;
    s.feed("data: a\n\n");
    REQUIRE(s.next_event_view());
    CHECK(s.may_hold_watched());
  }
  SECTION("a pair must be two bytes, neither a line end") {
    sse_splitter s;
    CHECK_THROWS_AS(s.watch("\""), std::invalid_argument);
    CHECK_THROWS_AS(s.watch("\"\n"), std::invalid_argument);
    CHECK_THROWS_AS(s.watch("abc"), std::invalid_argument);
  }
}

TEST_CASE("one very long event fed in small pieces is not rescanned", "[sse]") {
  // Rescanning from the start on every feed would take minutes here.
  const std::string line = "data: " + std::string(4 << 20, 'x');
  sse_splitter s;
  for (std::size_t at = 0; at < line.size(); at += 64) {
    s.feed(std::string_view(line).substr(at, 64));
    REQUIRE_FALSE(s.next_event());
  }
  s.feed("\n");
  CHECK_FALSE(s.next_event());
  s.feed("\ndata: next\n\n");
  const auto e = s.next_event();
  REQUIRE(e);
  CHECK(*e == line + "\n\n");
  CHECK(s.next_event() == std::optional<std::string>("data: next\n\n"));
}

TEST_CASE("sse_data joins data lines and ignores other fields", "[sse]") {
  using opt = std::optional<std::string>;
  CHECK(sse_data("data: {\"a\":1}\n\n") == opt("{\"a\":1}"));
  CHECK(sse_data("data:nospace\n\n") == opt("nospace"));
  CHECK(sse_data("data:  two spaces\n\n") == opt(" two spaces"));
  CHECK(sse_data("event: x\ndata: a\ndata:  b\nid: 3\nretry: 10\n\n") == opt("a\n b"));
  CHECK(sse_data("data: first\n: a comment\ndata: second\n\n") == opt("first\nsecond"));
  CHECK(sse_data("data: a\ndata:\ndata: c\n\n") == opt("a\n\nc"));
  CHECK(sse_data(": keep-alive\n\n") == std::nullopt);
  CHECK(sse_data(":data: no\n\n") == std::nullopt);
  CHECK(sse_data("event: ping\n\n") == std::nullopt);
  CHECK(sse_data("datum: no\ndata2: no\n DATA: no\nData: no\n\n") == std::nullopt);
  CHECK(sse_data("data\n\n") == opt(""));
  CHECK(sse_data("data:\n\n") == opt(""));
  CHECK(sse_data("data: a:b: c\n\n") == opt("a:b: c"));
  CHECK(sse_data("data: crlf\r\ndata: two\r\n\r\n") == opt("crlf\ntwo"));
  CHECK(sse_data("data: cr\rdata: two\r\r") == opt("cr\ntwo"));
  CHECK(sse_data("data: cut") == opt("cut"));
  CHECK(sse_data("") == std::nullopt);
  CHECK(sse_data("data: \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80\n\n") ==
        opt("\xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80"));
  CHECK(sse_data("data: [DONE]\n\n") == opt("[DONE]"));
}
