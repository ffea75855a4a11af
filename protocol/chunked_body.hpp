// A chunked response body (RFC 9112 section 7.1) read as it arrives, in any fragmentation: the
// chunks' data as views of the bytes given, the chunk lines, extensions and trailer fields checked
// and skipped. For the upstream client's one-pass reading of a streamed answer (adapters/http1_call),
// in place of Beast's parser once the head was read by protocol/http1_head.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace tollgate::protocol {

class chunked_reader {
 public:
  /// The longest chunk line (size and extensions) and trailer section it takes.
  static constexpr std::size_t max_line = 4096;
  static constexpr std::size_t max_trailers = 8192;

  /// The next piece of chunk data at the front of bytes, which then start after it: as much of
  /// the current chunk as bytes hold. The chunk lines before it are read on the way. nullopt when
  /// bytes are all read and more are needed, or the body ended (done(), bytes then start after
  /// it), or it is malformed (failed(), error()).
  std::optional<std::string_view> next(std::string_view& bytes);

  bool done() const { return at_ == at::done; }
  bool failed() const { return at_ == at::failed; }
  /// What was wrong, once failed().
  const char* error() const { return error_; }

 private:
  enum class at { size, ext, ext_quoted, ext_escape, size_lf, data, data_cr, data_lf, field, field_lf, end_lf, done, failed };
  std::optional<std::string_view> fail(const char* why);

  at at_ = at::size;
  std::uint64_t left_ = 0;   // the chunk's data bytes not read yet, or its size while reading it
  std::size_t digits_ = 0;   // hex digits of the size read
  std::size_t line_ = 0;     // bytes of the current chunk line, or of the trailer section
  int field_part_ = 0;       // in a trailer line: 0 at its start, 1 in its name, 2 in its value
  const char* error_ = "";
};

}  // namespace tollgate::protocol
