// The remembered owners of stored responses: bounded, least recently used forgotten first,
// safe to share between threads.
#include <catch2/catch.hpp>

#include <string>
#include <thread>
#include <vector>

#include "gateway/proxy/response_owners.hpp"

using tollgate::gateway::response_owners;

TEST_CASE("response_owners remembers, refreshes and forgets", "[gateway][responses]") {
  response_owners owners(1000);
  owners.remember("resp_1", {"native-a", "alice"});
  owners.remember("resp_2", {"native-b", "bob"});
  auto who = owners.find("resp_1");
  REQUIRE(who);
  CHECK(who->backend == "native-a");
  CHECK(who->key_name == "alice");
  CHECK(!owners.find("resp_3"));
  owners.remember("resp_1", {"native-c", "alice"});  // the same id again: replaced, not added
  CHECK(owners.find("resp_1")->backend == "native-c");
  CHECK(owners.size() == 2);
  owners.forget("resp_1");
  owners.forget("resp_unknown");
  CHECK(!owners.find("resp_1"));
  CHECK(owners.size() == 1);
}

TEST_CASE("response_owners stays within its capacity, forgetting the least recently used", "[gateway][responses]") {
  // 16 shards of 2 each.
  response_owners owners(32);
  for (int i = 0; i < 1000; ++i) owners.remember("resp_" + std::to_string(i), {"b", "k"});
  CHECK(owners.size() <= 32);
  CHECK(owners.find("resp_999"));
  CHECK(!owners.find("resp_0"));

  // A looked-up id outlives those of its shard that were not.
  response_owners lru(32);
  std::vector<std::string> ids;
  for (int i = 0; i < 200; ++i) ids.push_back("resp_x" + std::to_string(i));
  lru.remember(ids[0], {"b", "k"});
  for (int i = 1; i < 200; ++i) {
    lru.find(ids[0]);
    lru.remember(ids[i], {"b", "k"});
  }
  CHECK(lru.find(ids[0]));

  owners.set_capacity(0);
  CHECK(owners.size() == 0);
  owners.remember("resp_new", {"b", "k"});
  CHECK(!owners.find("resp_new"));
}

TEST_CASE("response_owners is shared by threads", "[gateway][responses]") {
  response_owners owners(100000);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&owners, t] {
      for (int i = 0; i < 5000; ++i) {
        const std::string id = "resp_" + std::to_string(t) + "_" + std::to_string(i);
        owners.remember(id, {"b" + std::to_string(t), "k"});
        if (i % 3 == 0) owners.forget(id);
        owners.find("resp_0_" + std::to_string(i / 2));
      }
    });
  }
  for (auto& th : threads) th.join();
  std::size_t expect = 0;
  for (int i = 0; i < 5000; ++i) expect += i % 3 == 0 ? 0 : 1;
  CHECK(owners.size() == 4 * expect);
  CHECK(owners.find("resp_3_4999")->backend == "b3");
}
