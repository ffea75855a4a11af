// kept_blocks: a block given back is the next one made on that thread, up to the number kept; a
// block given back on another thread goes to that thread; what a thread keeps is freed when it
// ends (the sanitizer build's leak check sees it otherwise).
#include <catch2/catch.hpp>

#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "adapters/kept_blocks.hpp"

using namespace tollgate::adapters;

namespace {

struct large {
  explicit large(int v) : value(v) {}
  int value;
  char bytes[2200]{};
};

using kept_large = kept_blocks<large, 4>;

}  // namespace

TEST_CASE("kept blocks: a block given back is the next one made, up to the number kept", "[adapters][kept_blocks]") {
  std::thread([] {
    kept_large a;
    CHECK(kept_large::kept() == 0);
    large* first = a.allocate(1);
    a.deallocate(first, 1);
    CHECK(kept_large::kept() == 1);
    CHECK(a.allocate(1) == first);  // the same memory again
    CHECK(kept_large::kept() == 0);

    std::vector<large*> made;
    made.push_back(first);
    for (int i = 0; i < 5; ++i) made.push_back(a.allocate(1));
    CHECK(std::set<large*>(made.begin(), made.end()).size() == made.size());
    for (large* p : made) a.deallocate(p, 1);
    CHECK(kept_large::kept() == 4);  // two of the six freed as usual

    // Arrays are not kept.
    large* many = a.allocate(3);
    a.deallocate(many, 3);
    CHECK(kept_large::kept() == 4);
  }).join();
}

TEST_CASE("kept blocks: shared objects made with it, given back on another thread", "[adapters][kept_blocks]") {
  using state_blocks = kept_blocks<large, 8>;
  std::shared_ptr<large> made_here;
  std::thread([&] {
    made_here = std::allocate_shared<large>(state_blocks{}, 7);
    CHECK(made_here->value == 7);
  }).join();
  const void* memory = nullptr;
  std::thread([&] {
    std::shared_ptr<large> other = std::move(made_here);
    memory = other.get();
    other.reset();  // its block kept by this thread
    const auto again = std::allocate_shared<large>(state_blocks{}, 8);
    CHECK(static_cast<const void*>(again.get()) == memory);
    CHECK(again->value == 8);
  }).join();
}
