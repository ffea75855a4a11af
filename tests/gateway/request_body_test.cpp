#include <catch2/catch.hpp>

#include <cstring>
#include <string>

#include "gateway/server/client_request.hpp"

using tollgate::gateway::request_body;

TEST_CASE("a request body is written in place, taken from a string, and emptied", "[request_body]") {
  request_body b;
  CHECK(b.empty());
  CHECK(b.view().empty());

  char* at = b.overwrite(10);
  std::memcpy(at, "0123456789", 10);
  CHECK(b.view() == "0123456789");
  CHECK(b.size() == 10);

  // Shorter: the same storage, only the bytes asked for.
  CHECK(b.overwrite(4) == at);
  std::memcpy(at, "abcd", 4);
  CHECK(b.view() == "abcd");

  // Longer: other storage, all of it the caller's to write.
  at = b.overwrite(5000);
  std::memset(at, 'q', 5000);
  CHECK(b.view() == std::string(5000, 'q'));

  // A string moved in, then written in place again.
  b = std::string("{\"model\":\"m\"}");
  CHECK(b.view() == "{\"model\":\"m\"}");
  const std::string_view as_view = b;
  CHECK(as_view == "{\"model\":\"m\"}");
  at = b.overwrite(3);
  std::memcpy(at, "xyz", 3);
  CHECK(b.view() == "xyz");

  // Emptied: storage up to the bound is kept for the next request, larger is given back.
  b.clear(8192);
  CHECK(b.empty());
  CHECK(b.view().empty());
  CHECK(b.overwrite(5000) == at);
  b.clear(4096);
  CHECK(b.size() == 0);
  at = b.overwrite(1);
  *at = '!';
  CHECK(b.view() == "!");
  b = std::string(10000, 's');
  b.clear(4096);
  CHECK(b.view().empty());
  b = std::string();
  CHECK(b.empty());
}
