#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <thread>

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

TEST_CASE("a large body's storage is kept by its thread for the next large body", "[request_body]") {
  // On threads of their own, whose shelves start empty.
  std::thread([] {
    constexpr std::size_t mb = 1024 * 1024;
    CHECK(request_body::shelved_bytes() == 0);
    // A small block is given back to malloc, whose own free lists serve its size.
    request_body small;
    small.overwrite(10000);
    small.clear(4096);
    CHECK(request_body::shelved_bytes() == 0);

    request_body a;
    char* const first = a.overwrite(mb + 10);
    std::memset(first, 'a', mb + 10);
    a.clear(4096);
    const std::size_t kept = request_body::shelved_bytes();
    CHECK(kept >= mb + 10);
    CHECK(kept < mb + 128 * 1024);  // its size rounded up, not doubled

    // Another thread's shelf is its own: the block kept here is not found there.
    std::thread([first] {
      CHECK(request_body::shelved_bytes() == 0);
      request_body c;
      CHECK(c.overwrite(1024 * 1024) != first);
    }).join();

    // A body of about that size here takes it, whichever body it is.
    request_body b;
    CHECK(b.overwrite(mb - 100) == first);
    CHECK(request_body::shelved_bytes() == 0);
    std::memset(first, 'b', mb - 100);
    CHECK(b.view() == std::string(mb - 100, 'b'));

    // Growing past it: the block goes back to the shelf before another is made.
    char* const second = b.overwrite(2 * mb);
    CHECK(second != first);
    CHECK(request_body::shelved_bytes() == kept);
    b.clear(4096);
    CHECK(request_body::shelved_bytes() == kept + 2 * mb);

    // The smallest block that fits is taken.
    request_body d;
    CHECK(d.overwrite(mb) == first);
    request_body e;
    CHECK(e.overwrite(mb) == second);
    d.clear(4096);
    e.clear(4096);

    // A block over the thread's bound is given back instead.
    request_body f;
    f.overwrite(17 * mb);
    f.clear(4096);
    CHECK(request_body::shelved_bytes() == kept + 2 * mb);

    // At most four blocks: six bodies take the two kept and four new ones, and give back six.
    request_body g[6];
    for (auto& body : g) body.overwrite(256 * 1024);
    CHECK(request_body::shelved_bytes() == 0);
    for (auto& body : g) body.clear(4096);
    CHECK(request_body::shelved_bytes() == kept + 2 * mb + 2 * 256 * 1024);
  }).join();
}
