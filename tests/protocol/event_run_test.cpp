#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "protocol/event_run.hpp"
#include "protocol/json_body.hpp"
#include "protocol/sse.hpp"

using tollgate::protocol::append_event_run;
using tollgate::protocol::model_value_finder;
using tollgate::protocol::sse_splitter;

namespace {

constexpr std::string_view pair = R"("u)";

/// What a relay makes of a stream, event by event: an event that may hold the pair is marked (a
/// usage search would look at it), the rest renamed when they name `from`. With runs: the events
/// append_event_run takes are copied as runs first, as the gateway's stream writer does.
struct relay {
  bool runs;
  bool rename;
  std::string from = "\"m\"", to;
  sse_splitter events;
  model_value_finder model_at;
  std::string out;
  std::size_t run_bytes = 0;

  void feed(std::string_view bytes, bool moved) {
    if (moved) {
      events.feed_moved(std::string(bytes));
    } else {
      events.feed(bytes);
    }
    for (;;) {
      if (runs) {
        if (const std::string_view unread = events.unread(); !unread.empty()) {
          std::size_t took = 0;
          if (!rename) {
            took = append_event_run(out, unread, pair);
          } else if (const std::string_view prefix = model_at.prefix(); !prefix.empty()) {
            took = append_event_run(out, unread, pair, prefix, from.size(), to);
          }
          run_bytes += took;
          events.skip(took);
        }
      }
      const auto e = events.next_event_view();
      if (!e) break;
      if (events.may_hold_watched() && e->find(pair) != std::string_view::npos) {
        out += "<searched>";
        out += *e;
        continue;
      }
      if (!rename || !model_at.append_renamed(out, *e, from, to)) out += *e;
    }
  }
};

std::string chat_event(std::mt19937& rng, int i) {
  const std::string id = i % 500 == 0 ? "c" + std::to_string(i) : "c1";  // now and then a new prefix
  std::string e = "data: {\"id\":\"" + id + "\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\"," +
                  "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" + std::string(rng() % 30, 'w') + "\"}}]}";
  switch (rng() % 40) {
    case 0: return "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5}}\n\n";
    case 1: return ": keep-alive\n\n";
    case 2: return "\n";                                        // a blank line: an empty event
    case 3: return e + "\r\n\r\n";                              // CRLF
    case 4: return e + "\r\r";                                  // CR
    case 5: return e + "\ndata: second line\n\n";               // two lines
    case 6: return e.insert(e.size() - 3, "\"u\""), e + "\n\n";  // the pair after the prefix
    case 7: return e.substr(0, e.find("\"m\"") + 3) + "u\n\n";  // the pair on the prefix's last byte
    case 8: return "data: {\"model\":\"other\"}\n\n";          // another model: copied as it is
    case 9: return "data: [DONE]\n\n";
    case 10: return e + "\n\r\n";                               // a mixed blank line
    default: return e + "\n\n";
  }
}

}  // namespace

TEST_CASE("event runs: a relay that copies runs gives what one that splits every event gives", "[sse][event_run]") {
  for (const bool rename : {false, true}) {
    for (const std::string& to : std::vector<std::string>{"\"bench\"", "\"m\"", "\"\"", "\"" + std::string(300, 'L') + "\""}) {
      if (!rename && to != "\"bench\"") continue;
      std::mt19937 rng(rename ? 91 : 19);
      std::string stream;
      for (int i = 0; i < 6000; ++i) stream += chat_event(rng, i);
      relay slow{false, rename}, fast{true, rename};
      slow.to = fast.to = to;
      slow.events.watch(pair);
      fast.events.watch(pair);
      std::size_t at = 0;
      while (at < stream.size()) {
        const std::size_t n = rng() % 30 == 0 ? 1 : std::uniform_int_distribution<std::size_t>(1, 4000)(rng);
        const bool moved = rng() % 2 == 0;
        const std::string_view piece = std::string_view(stream).substr(at, n);
        slow.feed(piece, moved);
        fast.feed(piece, moved);
        at += piece.size();
      }
      INFO("rename " << rename << " to " << to.size() << " bytes");
      CHECK(fast.out == slow.out);
      CHECK(fast.events.take_rest() == slow.events.take_rest());
      // Most of the stream went as runs.
      CHECK(fast.run_bytes > stream.size() / 2);
    }
  }
}

TEST_CASE("event runs: what is taken and where a run stops", "[sse][event_run]") {
  const std::string prefix = R"(data: {"id":"c1","model":"m")";
  const std::string e1 = prefix + R"(,"choices":[]})" + "\n\n";
  std::string out;
  SECTION("renamed, and an unfinished event is left") {
    const std::string bytes = e1 + e1 + prefix + ",\"cho";
    CHECK(append_event_run(out, bytes, pair, prefix, 3, R"("bench")") == 2 * e1.size());
    const std::string renamed = R"(data: {"id":"c1","model":"bench","choices":[]})" "\n\n";
    CHECK(out == renamed + renamed);
  }
  SECTION("a run appends to what out holds") {
    out = "before";
    CHECK(append_event_run(out, e1, pair) == e1.size());
    CHECK(out == "before" + e1);
  }
  SECTION("an event without the prefix stops it") {
    const std::string other = R"(data: {"id":"c2","model":"m"})" "\n\n";
    CHECK(append_event_run(out, e1 + other + e1, pair, prefix, 3, R"("x")") == e1.size());
  }
  SECTION("the pair stops it, also when it begins on the prefix's last byte") {
    CHECK(append_event_run(out, prefix + R"(,"usage":{}})" "\n\n", pair, prefix, 3, R"("x")") == 0);
    CHECK(append_event_run(out, prefix + "u}\n\n", pair, prefix, 3, R"("x")") == 0);
    CHECK(append_event_run(out, std::string("data: \"u\n\n"), pair) == 0);
    CHECK(out.empty());
  }
  SECTION("line ends other than \\n\\n after one line stop it") {
    CHECK(append_event_run(out, prefix + "}\r\n\r\n", pair, prefix, 3, "\"x\"") == 0);
    CHECK(append_event_run(out, prefix + "}\n\r\n", pair, prefix, 3, "\"x\"") == 0);
    CHECK(append_event_run(out, prefix + "}\ndata: 2\n\n", pair, prefix, 3, "\"x\"") == 0);
    CHECK(append_event_run(out, "\n" + e1, pair) == 0);
    CHECK(append_event_run(out, prefix + "}\n", pair, prefix, 3, "\"x\"") == 0);
    CHECK(out.empty());
  }
  SECTION("a prefix of more than one line, or with the pair, takes nothing") {
    CHECK(append_event_run(out, e1, pair, "data: {\n\"id\"", 0, {}) == 0);
    CHECK(append_event_run(out, e1, pair, R"(data: {"usage")", 0, {}) == 0);
  }
  SECTION("a long new name on many short events") {
    const std::string p = "d\"m\"";
    std::string bytes;
    for (int i = 0; i < 1000; ++i) bytes += p + "\n\n";
    const std::string to = "\"" + std::string(1000, 'n') + "\"";
    CHECK(append_event_run(out, bytes, pair, p, 3, to) == bytes.size());
    std::string expected;
    for (int i = 0; i < 1000; ++i) expected += "d" + to + "\n\n";
    CHECK(out == expected);
  }
  SECTION("bad arguments") {
    CHECK_THROWS_AS(append_event_run(out, e1, "\""), std::invalid_argument);
    CHECK_THROWS_AS(append_event_run(out, e1, "\n\""), std::invalid_argument);
    CHECK_THROWS_AS(append_event_run(out, e1, pair, "ab", 3, "x"), std::invalid_argument);
  }
}
