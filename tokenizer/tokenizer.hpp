// Byte-level BPE tokenizer loaded from a Hugging Face `tokenizer.json` (DeepSeek-V3's by default).
// The gateway meters with it when an upstream reports no usage; the local engine encodes prompts
// and decodes samples with it. A loaded tokenizer is immutable and safe to share across threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tollgate::tokenizer {

class tokenizer {
 public:
  // Reads and checks a tokenizer.json (model BPE, byte-level pre-tokenizer, Split regexes).
  // Throws std::runtime_error naming the file and what is wrong with it.
  static std::shared_ptr<const tokenizer> load(const std::string& tokenizer_json_path);
  static std::shared_ptr<const tokenizer> from_json_text(std::string_view json_text);

  virtual ~tokenizer() = default;

  // Token ids of `text`. Added tokens written in the text (special ones too) become their ids;
  // nothing is prepended or appended. Invalid UTF-8 is read as U+FFFD.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // The number of ids encode() would return, without keeping them.
  virtual size_t count(std::string_view text) const = 0;
  // Bytes of the ids; `skip_special` leaves out special added tokens. Unknown ids are skipped.
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special = false) const = 0;
  // The id of a token, by its text (added tokens) or its vocabulary form.
  virtual std::optional<int32_t> token_id(std::string_view token) const = 0;
  // One past the largest id known (vocabulary and added tokens).
  virtual size_t vocab_size() const = 0;
  // Whether the id is an added token marked special.
  virtual bool is_special(int32_t id) const = 0;
};

}  // namespace tollgate::tokenizer
