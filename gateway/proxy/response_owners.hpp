// Which backend holds a response that the Responses API stored upstream, and for which key: the
// calls that read a stored response back (GET and DELETE /v1/responses/{id}, its input_items,
// cancel) go to the backend that made it, and only for the key that made it.
#pragma once

#include <array>
#include <cstddef>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace tollgate::gateway {

/// Response ids remembered when a response created through a `responses: native` backend is
/// relayed, in memory and bounded: past the capacity the least recently used is forgotten. Each
/// replica remembers the responses it relayed. Thread-safe: shared by the worker threads, one
/// lock per shard of ids.
class response_owners {
 public:
  struct owner {
    std::string backend;   ///< the backend's name (stable across reloads)
    std::string key_name;  ///< the key that created it
    std::string model;           ///< the model name the client asked for
    std::string upstream_model;  ///< the name the backend was sent (its answers use it)
  };

  /// capacity: ids kept in all (0: none are remembered).
  explicit response_owners(std::size_t capacity = 100000) { set_capacity(capacity); }

  /// Remembers (or refreshes) who holds id.
  void remember(std::string_view id, owner who);
  /// Who holds id, if remembered (it becomes the most recently used).
  std::optional<owner> find(std::string_view id);
  void forget(std::string_view id);
  /// A new bound, applied at once (a reload may lower it).
  void set_capacity(std::size_t capacity);
  std::size_t size() const;

 private:
  static constexpr std::size_t shard_count = 16;
  struct shard {
    mutable std::mutex mutex;
    std::list<std::pair<std::string, owner>> order;  // most recently used first
    std::unordered_map<std::string_view, std::list<std::pair<std::string, owner>>::iterator> index;  // keys view order's
    std::size_t capacity = 0;
    void trim();
  };
  shard& shard_of(std::string_view id);

  std::array<shard, shard_count> shards_;
};

}  // namespace tollgate::gateway
