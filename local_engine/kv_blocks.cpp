#include "local_engine/kv_blocks.hpp"

#include <limits>
#include <stdexcept>
#include <string>

namespace tollgate::engine {

kv_block_allocator::kv_block_allocator(std::size_t blocks, int block_size) : block_size_(block_size), total_(blocks) {
  if (block_size < 1) throw std::invalid_argument("kv block size must be >= 1, got " + std::to_string(block_size));
  if (blocks > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
    throw std::invalid_argument("too many kv blocks: " + std::to_string(blocks));
  free_list_.reserve(blocks);
  for (std::size_t i = blocks; i-- > 0;) free_list_.push_back(static_cast<std::int32_t>(i));
  free_count_.store(blocks, std::memory_order_relaxed);
}

std::size_t kv_block_allocator::blocks_for(std::size_t positions) const {
  const auto bs = static_cast<std::size_t>(block_size_);
  return (positions + bs - 1) / bs;
}

std::size_t kv_block_allocator::missing(std::uint64_t seq, std::size_t positions) const {
  const std::size_t need = blocks_for(positions);
  const auto it = tables_.find(seq);
  const std::size_t have = it == tables_.end() ? 0 : it->second.size();
  return need > have ? need - have : 0;
}

bool kv_block_allocator::reserve(std::uint64_t seq, std::size_t positions) {
  const std::size_t more = missing(seq, positions);
  if (more > free_list_.size()) return false;
  if (more == 0 && blocks_for(positions) == 0) return true;
  auto& t = tables_[seq];
  for (std::size_t i = 0; i < more; ++i) {
    t.push_back(free_list_.back());
    free_list_.pop_back();
  }
  free_count_.store(free_list_.size(), std::memory_order_relaxed);
  return true;
}

std::span<const std::int32_t> kv_block_allocator::table(std::uint64_t seq) const {
  const auto it = tables_.find(seq);
  if (it == tables_.end()) return {};
  return it->second;
}

void kv_block_allocator::release(std::uint64_t seq) {
  const auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  // Given back in reverse so that the next sequence gets the same low ids first.
  for (auto b = it->second.rbegin(); b != it->second.rend(); ++b) free_list_.push_back(*b);
  tables_.erase(it);
  free_count_.store(free_list_.size(), std::memory_order_relaxed);
}

}  // namespace tollgate::engine
