// The KV block allocator: tables grow block by block, blocks come back at once, counts add up.
#include <catch2/catch.hpp>

#include <algorithm>
#include <set>

#include "local_engine/kv_blocks.hpp"

namespace eng = tollgate::engine;

TEST_CASE("kv blocks: tables, free list and counts", "[engine][kv]") {
  eng::kv_block_allocator a(10, 4);
  CHECK(a.total() == 10);
  CHECK(a.free() == 10);
  CHECK(a.used() == 0);
  CHECK(a.blocks_for(0) == 0);
  CHECK(a.blocks_for(1) == 1);
  CHECK(a.blocks_for(4) == 1);
  CHECK(a.blocks_for(5) == 2);

  REQUIRE(a.reserve(1, 5));  // two blocks
  CHECK(a.table(1).size() == 2);
  CHECK(a.used() == 2);
  REQUIRE(a.reserve(1, 8));  // still two
  CHECK(a.table(1).size() == 2);
  CHECK(a.missing(1, 9) == 1);
  REQUIRE(a.reserve(2, 12));
  CHECK(a.used() == 5);
  CHECK(a.sequences() == 2);
  // No block is in two tables.
  std::set<int32_t> seen;
  for (uint64_t s : {1, 2})
    for (int32_t b : a.table(s)) {
      CHECK(b >= 0);
      CHECK(b < 10);
      CHECK(seen.insert(b).second);
    }
  // Too few free: nothing is taken.
  CHECK_FALSE(a.reserve(3, 4 * 6));
  CHECK(a.table(3).empty());
  CHECK(a.free() == 5);
  REQUIRE(a.reserve(3, 4 * 5));
  CHECK(a.free() == 0);
  CHECK_FALSE(a.reserve(1, 9));
  CHECK(a.table(1).size() == 2);

  // A sequence's blocks all come back at once, and are handed out again.
  a.release(2);
  CHECK(a.free() == 3);
  CHECK(a.table(2).empty());
  a.release(2);  // twice is harmless
  a.release(42);
  CHECK(a.free() == 3);
  REQUIRE(a.reserve(1, 4 * 5));
  CHECK(a.table(1).size() == 5);
  a.release(1);
  a.release(3);
  CHECK(a.free() == 10);
  CHECK(a.used() == 0);
  CHECK(a.sequences() == 0);

  CHECK_THROWS_AS(eng::kv_block_allocator(4, 0), std::invalid_argument);
  eng::kv_block_allocator none(0, 16);
  CHECK_FALSE(none.reserve(1, 1));
  CHECK(none.reserve(1, 0));
}
