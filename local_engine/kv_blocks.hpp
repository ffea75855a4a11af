// The KV block allocator: which blocks of a backend's paged KV pool each sequence holds.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

namespace tollgate::engine {

/// A free list over `blocks` blocks of `block_size` positions, and a block table per sequence
/// (block i of a table holds positions [i * block_size, (i + 1) * block_size)). Not thread-safe:
/// the scheduler's thread owns it; used(), free() and total() may be read from any thread.
class kv_block_allocator {
 public:
  /// Throws std::invalid_argument for block_size < 1 or more blocks than an int32 id can name.
  kv_block_allocator(std::size_t blocks, int block_size);

  int block_size() const { return block_size_; }
  std::size_t total() const { return total_; }
  std::size_t free() const { return free_count_.load(std::memory_order_relaxed); }
  std::size_t used() const { return total_ - free(); }

  /// Blocks that `positions` positions take.
  std::size_t blocks_for(std::size_t positions) const;
  /// Blocks `seq` still needs to cover `positions` (0 when its table already does).
  std::size_t missing(std::uint64_t seq, std::size_t positions) const;
  /// Grows the table of `seq` (making it when new) to cover `positions`. Takes nothing and returns
  /// false when too few blocks are free.
  bool reserve(std::uint64_t seq, std::size_t positions);
  /// The block table of `seq`; empty for a sequence that holds nothing.
  std::span<const std::int32_t> table(std::uint64_t seq) const;
  /// Gives every block of `seq` back at once. Does nothing for a sequence that holds none.
  void release(std::uint64_t seq);
  /// Sequences that hold blocks.
  std::size_t sequences() const { return tables_.size(); }

 private:
  int block_size_;
  std::size_t total_;
  std::vector<std::int32_t> free_list_;  // a stack: the lowest ids are handed out first
  std::atomic<std::size_t> free_count_{0};
  std::unordered_map<std::uint64_t, std::vector<std::int32_t>> tables_;
};

}  // namespace tollgate::engine
