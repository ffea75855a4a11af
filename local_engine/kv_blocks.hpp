// The KV block allocator: which blocks of a backend's paged KV pool each sequence holds, and the
// prefix cache over them.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

namespace tollgate::engine {

/// A free list over `blocks` blocks of `block_size` positions, and a block table per sequence
/// (block i of a table holds positions [i * block_size, (i + 1) * block_size)). Not thread-safe:
/// the scheduler's thread owns it; used(), free(), cached() and total() may be read from any thread.
///
/// With prefix caching, a full block whose positions are all computed is registered (commit())
/// under the chain hash of its whole token prefix: hash(hash of the previous block, this block's
/// tokens). A later sequence whose prompt starts with the same tokens gets those blocks in its
/// table (find_prefix(), attach_prefix()) instead of computing them again. Blocks are counted by
/// reference: a cached block that no sequence holds stays cached and counts as free; reserve()
/// takes never-used blocks first and then evicts the least recently released cached ones. A shared
/// block is only read: its sequences write positions after their cached prefix, in blocks of
/// their own. A lookup compares the block's tokens and its parent's hash as well as its own hash,
/// so a wrong hit needs two prefixes whose 64-bit chain hashes collide.
class kv_block_allocator {
 public:
  /// Throws std::invalid_argument for block_size < 1 or more blocks than an int32 id can name.
  kv_block_allocator(std::size_t blocks, int block_size, bool prefix_caching = false);

  int block_size() const { return block_size_; }
  bool prefix_caching() const { return caching_; }
  std::size_t total() const { return total_; }
  /// Blocks reserve() can hand out: never used, or cached and held by no sequence.
  std::size_t free() const { return free_count_.load(std::memory_order_relaxed); }
  /// Blocks held by at least one sequence.
  std::size_t used() const { return total_ - free(); }
  /// Cached blocks held by no sequence (counted in free()).
  std::size_t cached() const { return cached_count_.load(std::memory_order_relaxed); }

  /// Blocks that `positions` positions take.
  std::size_t blocks_for(std::size_t positions) const;
  /// Blocks `seq` still needs to cover `positions` (0 when its table already does).
  std::size_t missing(std::uint64_t seq, std::size_t positions) const;
  /// Grows the table of `seq` (making it when new) to cover `positions`. Takes nothing and returns
  /// false when too few blocks are free.
  bool reserve(std::uint64_t seq, std::size_t positions);
  /// The block table of `seq`; empty for a sequence that holds nothing.
  std::span<const std::int32_t> table(std::uint64_t seq) const;
  /// Gives every block of `seq` back at once (cached ones stay cached, the last block of the table
  /// first in line for eviction). Does nothing for a sequence that holds none.
  void release(std::uint64_t seq);
  /// Sequences that hold blocks.
  std::size_t sequences() const { return tables_.size(); }

  /// The longest run of cached blocks that `tokens` starts with, at most max_blocks of them.
  struct prefix_match {
    std::vector<std::int32_t> blocks;
    std::vector<std::uint64_t> hashes;  ///< the chain hash of each
    std::size_t unreferenced = 0;       ///< how many of them no sequence holds (they leave free())
    std::size_t positions(int block_size) const { return blocks.size() * static_cast<std::size_t>(block_size); }
  };
  /// Empty without prefix caching. Changes nothing.
  prefix_match find_prefix(std::span<const std::int32_t> tokens, std::size_t max_blocks) const;
  /// Makes a match of find_prefix() (with nothing changed in between) the start of the table of
  /// `seq`, which must hold no block yet. Returns the positions it covers.
  std::size_t attach_prefix(std::uint64_t seq, const prefix_match& match);
  /// Registers the full blocks of the table of `seq` among its first `computed` positions, whose
  /// tokens are tokens[0, computed), so that later sequences can reuse them. A block whose prefix
  /// another block holds already stays private to `seq`. Does nothing without prefix caching.
  void commit(std::uint64_t seq, std::span<const std::int32_t> tokens, std::size_t computed);

  /// The chain hash of a block: seeded by the previous block's hash (or 0 for the first block).
  static std::uint64_t chain_hash(std::uint64_t parent, std::span<const std::int32_t> tokens);

 private:
  struct seq_state {
    std::vector<std::int32_t> table;
    std::size_t hashed = 0;         // blocks of the table whose chain hash is known
    std::uint64_t last_hash = 0;    // the chain hash of block hashed - 1 (0 when none)
  };
  std::int32_t take();  // a free block: never used first, then the least recently released cached one
  void uncache(std::int32_t b);
  void update_counts();

  int block_size_;
  std::size_t total_;
  bool caching_;
  std::vector<std::int32_t> free_list_;  // a stack: the lowest ids are handed out first
  std::atomic<std::size_t> free_count_{0};
  std::atomic<std::size_t> cached_count_{0};
  std::unordered_map<std::uint64_t, seq_state> tables_;

  // Prefix cache, per block.
  std::vector<std::int32_t> refs_;
  std::vector<std::uint8_t> is_cached_;
  std::vector<std::uint64_t> hash_, parent_hash_;
  std::vector<std::int32_t> tokens_;  // [blocks][block_size]: what a cached block holds
  std::unordered_map<std::uint64_t, std::int32_t> by_hash_;
  std::list<std::int32_t> lru_;  // cached blocks no sequence holds, least recently released first
  std::vector<std::list<std::int32_t>::iterator> lru_at_;
};

}  // namespace tollgate::engine
