#include "local_engine/kv_blocks.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

namespace tollgate::engine {

namespace {

inline std::uint64_t mix(std::uint64_t x) {  // splitmix64's finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

std::uint64_t kv_block_allocator::chain_hash(std::uint64_t parent, std::span<const std::int32_t> tokens) {
  std::uint64_t h = mix(parent ^ (0x5bd1e9955bd1e995ull + tokens.size()));
  for (std::int32_t t : tokens) h = mix(h ^ static_cast<std::uint32_t>(t));
  return h;
}

kv_block_allocator::kv_block_allocator(std::size_t blocks, int block_size, bool prefix_caching)
    : block_size_(block_size), total_(blocks), caching_(prefix_caching) {
  if (block_size < 1) throw std::invalid_argument("kv block size must be >= 1, got " + std::to_string(block_size));
  if (blocks > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
    throw std::invalid_argument("too many kv blocks: " + std::to_string(blocks));
  free_list_.reserve(blocks);
  for (std::size_t i = blocks; i-- > 0;) free_list_.push_back(static_cast<std::int32_t>(i));
  refs_.assign(blocks, 0);
  if (caching_) {
    is_cached_.assign(blocks, 0);
    hash_.assign(blocks, 0);
    parent_hash_.assign(blocks, 0);
    tokens_.assign(blocks * static_cast<std::size_t>(block_size), 0);
    lru_at_.resize(blocks);
  }
  update_counts();
}

void kv_block_allocator::update_counts() {
  free_count_.store(free_list_.size() + lru_.size(), std::memory_order_relaxed);
  cached_count_.store(lru_.size(), std::memory_order_relaxed);
}

std::size_t kv_block_allocator::blocks_for(std::size_t positions) const {
  const auto bs = static_cast<std::size_t>(block_size_);
  return (positions + bs - 1) / bs;
}

std::size_t kv_block_allocator::missing(std::uint64_t seq, std::size_t positions) const {
  const std::size_t need = blocks_for(positions);
  const auto it = tables_.find(seq);
  const std::size_t have = it == tables_.end() ? 0 : it->second.table.size();
  return need > have ? need - have : 0;
}

void kv_block_allocator::uncache(std::int32_t b) {
  const auto i = static_cast<std::size_t>(b);
  if (!caching_ || !is_cached_[i]) return;
  const auto it = by_hash_.find(hash_[i]);
  if (it != by_hash_.end() && it->second == b) by_hash_.erase(it);
  is_cached_[i] = 0;
}

std::int32_t kv_block_allocator::take() {
  if (!free_list_.empty()) {
    const std::int32_t b = free_list_.back();
    free_list_.pop_back();
    return b;
  }
  // Evict the cached block released longest ago.
  const std::int32_t b = lru_.front();
  lru_.pop_front();
  uncache(b);
  return b;
}

bool kv_block_allocator::reserve(std::uint64_t seq, std::size_t positions) {
  const std::size_t more = missing(seq, positions);
  if (more > free_list_.size() + lru_.size()) return false;
  if (more == 0 && blocks_for(positions) == 0) return true;
  auto& t = tables_[seq].table;
  for (std::size_t i = 0; i < more; ++i) {
    const std::int32_t b = take();
    refs_[static_cast<std::size_t>(b)] = 1;
    t.push_back(b);
  }
  update_counts();
  return true;
}

std::span<const std::int32_t> kv_block_allocator::table(std::uint64_t seq) const {
  const auto it = tables_.find(seq);
  if (it == tables_.end()) return {};
  return it->second.table;
}

void kv_block_allocator::release(std::uint64_t seq) {
  const auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  // Given back in reverse: the next sequence gets the same low ids first, and of a cached chain
  // the deepest blocks (the least shared) are evicted first.
  for (auto b = it->second.table.rbegin(); b != it->second.table.rend(); ++b) {
    const auto i = static_cast<std::size_t>(*b);
    if (--refs_[i] > 0) continue;
    if (caching_ && is_cached_[i]) lru_at_[i] = lru_.insert(lru_.end(), *b);
    else free_list_.push_back(*b);
  }
  tables_.erase(it);
  update_counts();
}

kv_block_allocator::prefix_match kv_block_allocator::find_prefix(std::span<const std::int32_t> tokens,
                                                                  std::size_t max_blocks) const {
  prefix_match m;
  if (!caching_) return m;
  const auto bs = static_cast<std::size_t>(block_size_);
  const std::size_t n = std::min(max_blocks, tokens.size() / bs);
  std::uint64_t parent = 0;
  for (std::size_t k = 0; k < n; ++k) {
    const auto part = tokens.subspan(k * bs, bs);
    const std::uint64_t h = chain_hash(parent, part);
    const auto it = by_hash_.find(h);
    if (it == by_hash_.end()) break;
    const auto b = static_cast<std::size_t>(it->second);
    if (parent_hash_[b] != parent || !std::equal(part.begin(), part.end(), tokens_.begin() + static_cast<std::ptrdiff_t>(b * bs)))
      break;
    m.blocks.push_back(it->second);
    m.hashes.push_back(h);
    if (refs_[b] == 0) ++m.unreferenced;
    parent = h;
  }
  return m;
}

std::size_t kv_block_allocator::attach_prefix(std::uint64_t seq, const prefix_match& match) {
  if (match.blocks.empty()) return 0;
  auto& st = tables_[seq];
  if (!st.table.empty()) throw std::logic_error("attach_prefix: the sequence holds blocks already");
  for (std::int32_t b : match.blocks) {
    const auto i = static_cast<std::size_t>(b);
    if (refs_[i]++ == 0) lru_.erase(lru_at_[i]);
    st.table.push_back(b);
  }
  st.hashed = match.blocks.size();
  st.last_hash = match.hashes.back();
  update_counts();
  return match.positions(block_size_);
}

void kv_block_allocator::commit(std::uint64_t seq, std::span<const std::int32_t> tokens, std::size_t computed) {
  if (!caching_) return;
  const auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  auto& st = it->second;
  const auto bs = static_cast<std::size_t>(block_size_);
  const std::size_t full = std::min({computed / bs, tokens.size() / bs, st.table.size()});
  for (std::size_t k = st.hashed; k < full; ++k) {
    const auto part = tokens.subspan(k * bs, bs);
    const std::uint64_t h = chain_hash(st.last_hash, part);
    const std::int32_t b = st.table[k];
    const auto i = static_cast<std::size_t>(b);
    if (!is_cached_[i] && by_hash_.emplace(h, b).second) {
      is_cached_[i] = 1;
      hash_[i] = h;
      parent_hash_[i] = st.last_hash;
      std::copy(part.begin(), part.end(), tokens_.begin() + static_cast<std::ptrdiff_t>(i * bs));
    }
    st.last_hash = h;
    st.hashed = k + 1;
  }
}

}  // namespace tollgate::engine
