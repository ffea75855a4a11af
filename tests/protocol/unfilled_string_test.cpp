#include "protocol/unfilled_string.hpp"

#include <catch2/catch.hpp>

#include <string>

using tollgate::protocol::resize_unfilled;
using tollgate::protocol::resize_unfilled_skips_fill;

TEST_CASE("resize_unfilled keeps a string's bytes and sizes it up and down", "[unfilled_string]") {
  std::string s = "prefix";
  resize_unfilled(s, 6 + 4096);  // past the short-string storage: a new block
  REQUIRE(s.size() == 6 + 4096);
  REQUIRE(s.compare(0, 6, "prefix") == 0);
  REQUIRE(s.data()[s.size()] == '\0');
  s.replace(6, 4096, std::string(4096, 'a'));
  resize_unfilled(s, 3);
  REQUIRE(s == "pre");
  REQUIRE(s.data()[3] == '\0');
}

TEST_CASE("resize_unfilled leaves what is past the old size unwritten where the library allows it", "[unfilled_string]") {
  // The bytes past size() are the block's old ones: a filling resize would have zeroed them.
  std::string s(1000, 'x');
  const char* const block = s.data();
  s.resize(10);  // shrinking keeps the block; only s[10] becomes the terminator
  resize_unfilled(s, 1000);
  REQUIRE(s.data() == block);
  REQUIRE(s.size() == 1000);
  const std::string past = s.substr(11);
  if (resize_unfilled_skips_fill()) {
    CHECK(past == std::string(989, 'x'));
  } else {
    WARN("this build's library has no resize_and_overwrite: resize_unfilled zeroes");
    CHECK(past == std::string(989, '\0'));
  }
}
