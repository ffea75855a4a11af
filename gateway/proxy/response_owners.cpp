#include "gateway/proxy/response_owners.hpp"

#include <functional>

namespace tollgate::gateway {

response_owners::shard& response_owners::shard_of(std::string_view id) {
  return shards_[std::hash<std::string_view>{}(id) % shard_count];
}

void response_owners::shard::trim() {
  while (order.size() > capacity) {
    index.erase(order.back().first);
    order.pop_back();
  }
}

void response_owners::remember(std::string_view id, owner who) {
  shard& s = shard_of(id);
  std::lock_guard lock(s.mutex);
  if (s.capacity == 0) return;
  if (auto it = s.index.find(id); it != s.index.end()) {
    it->second->second = std::move(who);
    s.order.splice(s.order.begin(), s.order, it->second);
    return;
  }
  s.order.emplace_front(std::string(id), std::move(who));
  s.index.emplace(s.order.front().first, s.order.begin());
  s.trim();
}

std::optional<response_owners::owner> response_owners::find(std::string_view id) {
  shard& s = shard_of(id);
  std::lock_guard lock(s.mutex);
  const auto it = s.index.find(id);
  if (it == s.index.end()) return std::nullopt;
  s.order.splice(s.order.begin(), s.order, it->second);
  return it->second->second;
}

void response_owners::forget(std::string_view id) {
  shard& s = shard_of(id);
  std::lock_guard lock(s.mutex);
  const auto it = s.index.find(id);
  if (it == s.index.end()) return;
  const auto node = it->second;
  s.index.erase(it);
  s.order.erase(node);
}

void response_owners::set_capacity(std::size_t capacity) {
  // Spread over the shards, rounded up: a bound of 1 still remembers something.
  const std::size_t each = (capacity + shard_count - 1) / shard_count;
  for (shard& s : shards_) {
    std::lock_guard lock(s.mutex);
    s.capacity = each;
    s.trim();
  }
}

std::size_t response_owners::size() const {
  std::size_t n = 0;
  for (const shard& s : shards_) {
    std::lock_guard lock(s.mutex);
    n += s.order.size();
  }
  return n;
}

}  // namespace tollgate::gateway
