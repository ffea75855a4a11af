#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "protocol/event_run.hpp"
#include "protocol/json_body.hpp"
#include "protocol/sse.hpp"
#include "tests/protocol/event_relay.hpp"

using tollgate::protocol::append_event_run;
using tollgate::protocol::scan_vectors;

namespace {

using tollgate::test::event_relay;

constexpr std::string_view key = tollgate::test::usage_key;

std::string chat_event(std::mt19937& rng, int i) {
  const std::string id = i % 500 == 0 ? "c" + std::to_string(i) : "c1";  // now and then a new prefix
  std::string e = "data: {\"id\":\"" + id + "\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\"," +
                  "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" + std::string(rng() % 30, 'w') + "\"}}]}";
  // OpenAI's chunks each carry "usage":null when usage is asked for.
  if (i % 3 != 0) e.insert(e.size() - 1, i % 7 == 0 ? ",\"usage\" :\tnull" : ",\"usage\":null");
  switch (rng() % 44) {
    case 0: return "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\n";
    case 40: return "data: {\"id\":\"c1\",\"choices\":[],\"usage\":null,\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\n";
    case 41: return e.insert(e.size() - 1, ",\"usage\":nul"), e + "\n\n";          // not null
    case 42: return e.insert(e.size() - 1, ",\"usage\":{\"prompt_tokens\":-1}"), e + "\n\n";  // refused
    case 43: return e.insert(e.size() - 1, ",\"user\":null"), e + "\n\n";         // another key
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

/// The widths the runs' search can use here: 16 bytes at a time, and 32 where the CPU has AVX2.
std::vector<scan_vectors> run_widths() {
  std::vector<scan_vectors> widths{scan_vectors::sse2};
  if (tollgate::protocol::widest_scan_vectors() >= scan_vectors::avx2) widths.push_back(scan_vectors::avx2);
  return widths;
}

/// Uses one width for the life of the guard, then the widest again.
class width_in_use {
 public:
  explicit width_in_use(scan_vectors v) { REQUIRE(tollgate::protocol::use_scan_vectors(v) == v); }
  ~width_in_use() { tollgate::protocol::use_scan_vectors(tollgate::protocol::widest_scan_vectors()); }
  width_in_use(const width_in_use&) = delete;
  width_in_use& operator=(const width_in_use&) = delete;
};

}  // namespace

TEST_CASE("event runs: a relay that copies runs gives what one that splits every event gives", "[sse][event_run]") {
  const scan_vectors width = GENERATE(from_range(run_widths()));
  const width_in_use use(width);
  for (const bool rename : {false, true}) {
    for (const std::string& to : std::vector<std::string>{"\"bench\"", "\"m\"", "\"\"", "\"" + std::string(300, 'L') + "\""}) {
      if (!rename && to != "\"bench\"") continue;
      std::mt19937 rng(rename ? 91 : 19);
      std::string stream;
      for (int i = 0; i < 6000; ++i) stream += chat_event(rng, i);
      // fast: reads moved in or appended; view: reads handed over as views (the runs taken from them).
      event_relay slow(false, rename, to), fast(true, rename, to), view(true, rename, to);
      std::size_t at = 0;
      while (at < stream.size()) {
        const std::size_t n = rng() % 30 == 0 ? 1 : std::uniform_int_distribution<std::size_t>(1, 4000)(rng);
        const bool moved = rng() % 2 == 0;
        const std::string_view piece = std::string_view(stream).substr(at, n);
        slow.feed(piece, moved);
        fast.feed(piece, moved);
        view.feed_view(piece);
        at += piece.size();
      }
      INFO("rename " << rename << " to " << to.size() << " bytes, width " << static_cast<int>(width));
      const std::string expected = slow.finish();
      CHECK(fast.finish() == expected);
      CHECK(view.finish() == expected);
      CHECK(fast.missed == 0);
      CHECK(slow.missed == 0);
      CHECK(view.missed == 0);
      // Most of the stream went as runs.
      CHECK(fast.run_bytes > stream.size() / 2);
      CHECK(view.run_bytes > stream.size() / 2);
    }
  }
}

TEST_CASE("event runs: what is taken and where a run stops", "[sse][event_run]") {
  const width_in_use use(GENERATE(from_range(run_widths())));
  const std::string prefix = R"(data: {"id":"c1","model":"m")";
  const std::string e1 = prefix + R"(,"choices":[]})" + "\n\n";
  std::string out;
  SECTION("renamed, and an unfinished event is left") {
    const std::string bytes = e1 + e1 + prefix + ",\"cho";
    CHECK(append_event_run(out, bytes, key, prefix, 3, R"("bench")") == 2 * e1.size());
    const std::string renamed = R"(data: {"id":"c1","model":"bench","choices":[]})" "\n\n";
    CHECK(out == renamed + renamed);
  }
  SECTION("a run appends to what out holds") {
    out = "before";
    CHECK(append_event_run(out, e1, key) == e1.size());
    CHECK(out == "before" + e1);
  }
  SECTION("an event without the prefix stops it") {
    const std::string other = R"(data: {"id":"c2","model":"m"})" "\n\n";
    CHECK(append_event_run(out, e1 + other + e1, key, prefix, 3, R"("x")") == e1.size());
  }
  SECTION("a null usage passes, with spaces or tabs around the colon; any other stops it") {
    const std::string null1 = prefix + R"(,"usage":null})" "\n\n";
    const std::string null2 = prefix + ",\"usage\" :\t null}\n\n";
    CHECK(append_event_run(out, null1 + null2 + e1, key, prefix, 3, R"("x")") == null1.size() + null2.size() + e1.size());
    CHECK(append_event_run(out, prefix + R"(,"usage":{"prompt_tokens":1}})" "\n\n", key, prefix, 3, R"("x")") == 0);
    CHECK(append_event_run(out, prefix + R"(,"usage":null,"usage":{}})" "\n\n", key, prefix, 3, R"("x")") == 0);
    CHECK(append_event_run(out, prefix + R"(,"usage":nul})" "\n\n", key, prefix, 3, R"("x")") == 0);
    CHECK(append_event_run(out, prefix + R"(,"user":null})" "\n\n", key, prefix, 3, R"("x")") == 0);
    // A line end inside the member is no blank.
    CHECK(append_event_run(out, prefix + ",\"usage\":\nnull}\n\n", key, prefix, 3, R"("x")") == 0);
    // A prefix with a null usage in it is a prefix like any other.
    const std::string p2 = R"(data: {"usage":null,"model":"m")";
    CHECK(append_event_run(out, p2 + "}\n\n", key, p2, 3, R"("x")") == p2.size() + 3);
  }
  SECTION("the pair stops it, also when it begins on the prefix's last byte") {
    CHECK(append_event_run(out, prefix + R"(,"usage":{}})" "\n\n", key, prefix, 3, R"("x")") == 0);
    CHECK(append_event_run(out, prefix + "u}\n\n", key, prefix, 3, R"("x")") == 0);
    CHECK(append_event_run(out, std::string("data: \"u\n\n"), key) == 0);
    CHECK(out.empty());
  }
  SECTION("line ends other than \\n\\n after one line stop it") {
    CHECK(append_event_run(out, prefix + "}\r\n\r\n", key, prefix, 3, "\"x\"") == 0);
    CHECK(append_event_run(out, prefix + "}\n\r\n", key, prefix, 3, "\"x\"") == 0);
    CHECK(append_event_run(out, prefix + "}\ndata: 2\n\n", key, prefix, 3, "\"x\"") == 0);
    CHECK(append_event_run(out, "\n" + e1, key) == 0);
    CHECK(append_event_run(out, prefix + "}\n", key, prefix, 3, "\"x\"") == 0);
    CHECK(out.empty());
  }
  SECTION("a prefix of more than one line, or with the pair, takes nothing") {
    CHECK(append_event_run(out, e1, key, "data: {\n\"id\"", 0, {}) == 0);
    CHECK(append_event_run(out, e1, key, R"(data: {"usage")", 0, {}) == 0);
  }
  SECTION("a long new name on many short events") {
    const std::string p = "d\"m\"";
    std::string bytes;
    for (int i = 0; i < 1000; ++i) bytes += p + "\n\n";
    const std::string to = "\"" + std::string(1000, 'n') + "\"";
    CHECK(append_event_run(out, bytes, key, p, 3, to) == bytes.size());
    std::string expected;
    for (int i = 0; i < 1000; ++i) expected += "d" + to + "\n\n";
    CHECK(out == expected);
  }
  SECTION("one stream's runs: a prefix is checked again when it changes") {
    tollgate::protocol::event_runs runs(key);
    CHECK(runs.append(out, e1, prefix, 3, R"("x")") == e1.size());
    const std::string keyed = R"(data: {"usage":{},"model":"m")";
    CHECK(runs.append(out, keyed + "}\n\n", keyed, 3, R"("x")") == 0);
    const std::string two_lines = "data: {\"id\":\"c1\",\ndata: \"model\":\"m\"";
    CHECK(runs.append(out, two_lines + "}\n\n", two_lines, 3, R"("x")") == 0);
    CHECK(runs.append(out, e1 + e1, prefix, 3, R"("x")") == 2 * e1.size());
    // As long as the last one, with the pair in it.
    const std::string paired = R"(data: {"id":"u1","model":"m")";
    REQUIRE(paired.size() == prefix.size());
    CHECK(runs.append(out, paired + "}\n\n", paired, 3, R"("x")") == 0);
    CHECK(runs.append(out, e1) == e1.size());
  }
  SECTION("bad arguments") {
    CHECK_THROWS_AS(append_event_run(out, e1, "\""), std::invalid_argument);
    CHECK_THROWS_AS(append_event_run(out, e1, "\n\""), std::invalid_argument);
    CHECK_THROWS_AS(append_event_run(out, e1, key, "ab", 3, "x"), std::invalid_argument);
  }
}
