#include "tokenizer/tokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <fstream>
#include <queue>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

namespace tollgate::tokenizer {
namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error("tokenizer: " + what); }

// The byte-level alphabet: each byte has one printable code point standing for it in the
// vocabulary (printable Latin-1 bytes stand for themselves, the rest move to U+0100 and up).
std::array<char32_t, 256> byte_alphabet() {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    table[b] = printable ? char32_t(b) : next++;
  }
  return table;
}

// Decodes one UTF-8 code point at s[i]; returns its length, or 0 when the bytes there are not
// well-formed UTF-8 (overlong forms, surrogates and values past U+10FFFF included).
size_t utf8_decode(std::string_view s, size_t i, char32_t& cp) {
  auto c = static_cast<unsigned char>(s[i]);
  size_t n;
  char32_t min;
  if (c < 0x80) { cp = c; return 1; }
  if ((c & 0xE0) == 0xC0) { n = 2; cp = c & 0x1F; min = 0x80; }
  else if ((c & 0xF0) == 0xE0) { n = 3; cp = c & 0x0F; min = 0x800; }
  else if ((c & 0xF8) == 0xF0) { n = 4; cp = c & 0x07; min = 0x10000; }
  else return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    auto cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

// Returns `s` if it is valid UTF-8, else a copy with each bad byte replaced by U+FFFD.
std::string_view valid_utf8(std::string_view s, std::string& storage) {
  char32_t cp;
  size_t i = 0;
  while (i < s.size()) {
    size_t n = utf8_decode(s, i, cp);
    if (n == 0) break;
    i += n;
  }
  if (i == s.size()) return s;
  storage.assign(s.substr(0, i));
  while (i < s.size()) {
    size_t n = utf8_decode(s, i, cp);
    if (n == 0) { storage += "\xEF\xBF\xBD"; ++i; }
    else { storage.append(s.substr(i, n)); i += n; }
  }
  return storage;
}

struct regex_deleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
using regex_ptr = std::unique_ptr<pcre2_code, regex_deleter>;

struct match_data_deleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

regex_ptr compile_regex(const std::string& pattern) {
  int code = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                 PCRE2_UTF | PCRE2_UCP, &code, &offset, nullptr);
  if (!re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(code, msg, sizeof msg);
    fail("pre-tokenizer pattern does not compile at offset " + std::to_string(offset) + ": " +
         reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is absent
  return regex_ptr(re);
}

struct added_token {
  std::string content;
  int32_t id;
  bool special;
};

class bpe_tokenizer final : public tokenizer {
 public:
  explicit bpe_tokenizer(const json& doc) {
    const json& model = doc.at("model");
    if (model.value("type", std::string()) != "BPE") fail("model.type must be BPE");
    if (model.contains("byte_fallback") && model["byte_fallback"].is_boolean() &&
        model["byte_fallback"].get<bool>())
      fail("byte_fallback BPE is not supported (only byte-level BPE)");

    alphabet_ = byte_alphabet();
    for (int b = 0; b < 256; ++b) from_alphabet_[alphabet_[b]] = static_cast<unsigned char>(b);

    // Vocabulary, kept by raw bytes.
    for (const auto& [text, id_json] : model.at("vocab").items()) {
      int32_t id = id_json.get<int32_t>();
      std::string bytes = to_bytes(text);
      vocab_.emplace(bytes, id);
      grow(id);
      id_bytes_[id] = std::move(bytes);
    }
    for (int b = 0; b < 256; ++b) {
      auto it = vocab_.find(std::string(1, char(b)));
      if (it == vocab_.end()) fail("the vocabulary lacks byte " + std::to_string(b));
      byte_ids_[b] = it->second;
    }

    // Merges: "a b" strings or ["a", "b"] pairs, best first.
    const json& merges = model.at("merges");
    merges_.reserve(merges.size() * 2);
    int32_t rank = 0;
    for (const auto& m : merges) {
      std::string left, right;
      if (m.is_string()) {
        const auto& s = m.get_ref<const std::string&>();
        auto sp = s.find(' ');
        if (sp == std::string::npos) fail("merge without a space: " + s);
        left = s.substr(0, sp);
        right = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2) {
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      } else {
        fail("a merge must be \"a b\" or [\"a\", \"b\"]");
      }
      std::string lb = to_bytes(left), rb = to_bytes(right);
      auto li = vocab_.find(lb), ri = vocab_.find(rb), mi = vocab_.find(lb + rb);
      if (li == vocab_.end() || ri == vocab_.end() || mi == vocab_.end())
        fail("merge of tokens not in the vocabulary: " + left + " " + right);
      merges_.try_emplace(pair_key(li->second, ri->second), merge{rank, mi->second});
      ++rank;
    }

    // Added tokens: matched in the text before anything else, longest first.
    if (doc.contains("added_tokens") && doc["added_tokens"].is_array()) {
      for (const auto& t : doc["added_tokens"]) {
        added_token a{t.at("content").get<std::string>(), t.at("id").get<int32_t>(),
                      t.value("special", false)};
        if (a.content.empty()) continue;
        grow(a.id);
        id_bytes_[a.id] = a.content;
        if (a.special) special_.insert(a.id);
        added_by_text_[a.content] = a.id;
        added_.push_back(std::move(a));
      }
    }
    for (const auto& a : added_) {
      auto c = static_cast<unsigned char>(a.content[0]);
      added_first_[c] = true;
    }

    // Pre-tokenizer: a Sequence of Split regexes (Isolated) and one ByteLevel, or a lone ByteLevel.
    if (doc.contains("normalizer") && !doc["normalizer"].is_null()) {
      const json& n = doc["normalizer"];
      if (!(n.value("type", std::string()) == "Sequence" && n.value("normalizers", json::array()).empty()))
        fail("normalizers are not supported");
    }
    const json& pre = doc.at("pre_tokenizer");
    std::vector<json> steps;
    if (pre.value("type", std::string()) == "Sequence") {
      for (const auto& p : pre.at("pretokenizers")) steps.push_back(p);
    } else {
      steps.push_back(pre);
    }
    for (const auto& p : steps) {
      std::string type = p.value("type", std::string());
      if (type == "Split") {
        if (p.value("behavior", std::string()) != "Isolated" || p.value("invert", false))
          fail("only Split with behavior Isolated is supported");
        const json& pat = p.at("pattern");
        if (pat.contains("Regex")) {
          splits_.push_back(compile_regex(pat["Regex"].get<std::string>()));
        } else {
          fail("only Split with a Regex pattern is supported");
        }
      } else if (type == "ByteLevel") {
        if (p.value("add_prefix_space", false)) fail("ByteLevel add_prefix_space is not supported");
        if (p.value("use_regex", true)) {
          // The GPT-2 pattern that ByteLevel applies when asked to.
          splits_.push_back(compile_regex(
              R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"));
        }
        byte_level_ = true;
      } else {
        fail("pre-tokenizer " + type + " is not supported");
      }
    }
    if (!byte_level_) fail("the pre-tokenizer has no ByteLevel step");
  }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> out;
    run(text, [&](int32_t id) { out.push_back(id); });
    return out;
  }

  size_t count(std::string_view text) const override {
    size_t n = 0;
    run(text, [&](int32_t) { ++n; });
    return n;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id < 0 || static_cast<size_t>(id) >= id_bytes_.size()) continue;
      if (skip_special && special_.count(id)) continue;
      out += id_bytes_[id];
    }
    return out;
  }

  std::optional<int32_t> token_id(std::string_view token) const override {
    if (auto it = added_by_text_.find(std::string(token)); it != added_by_text_.end()) return it->second;
    if (auto it = vocab_.find(to_bytes(token)); it != vocab_.end()) return it->second;
    return std::nullopt;
  }

  size_t vocab_size() const override { return id_bytes_.size(); }
  bool is_special(int32_t id) const override { return special_.count(id) != 0; }

 private:
  struct merge {
    int32_t rank;
    int32_t id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
  }

  void grow(int32_t id) {
    if (id < 0) fail("negative token id");
    if (static_cast<size_t>(id) >= id_bytes_.size()) id_bytes_.resize(size_t(id) + 1);
  }

  // The raw bytes a vocabulary string stands for (each code point is one byte of the alphabet).
  std::string to_bytes(std::string_view text) const {
    std::string out;
    out.reserve(text.size());
    size_t i = 0;
    while (i < text.size()) {
      char32_t cp;
      size_t n = utf8_decode(text, i, cp);
      if (n == 0) fail("vocabulary entry is not UTF-8");
      auto it = from_alphabet_.find(cp);
      if (it == from_alphabet_.end()) {
        // Not a byte-level symbol: keep its UTF-8 bytes (such entries are never produced by
        // byte-level pre-tokenization, so they only matter for decoding).
        out.append(text.substr(i, n));
      } else {
        out += char(it->second);
      }
      i += n;
    }
    return out;
  }

  template <class Sink>
  void run(std::string_view raw, Sink&& sink) const {
    std::string storage;
    std::string_view text = valid_utf8(raw, storage);
    std::unique_ptr<pcre2_match_data, match_data_deleter> md(pcre2_match_data_create(4, nullptr));
    size_t plain_start = 0, i = 0;
    while (i < text.size()) {
      if (added_first_[static_cast<unsigned char>(text[i])]) {
        if (const added_token* a = added_at(text, i)) {
          pre_tokenize(text.substr(plain_start, i - plain_start), md.get(), sink);
          sink(a->id);
          i += a->content.size();
          plain_start = i;
          continue;
        }
      }
      ++i;
    }
    pre_tokenize(text.substr(plain_start), md.get(), sink);
  }

  const added_token* added_at(std::string_view text, size_t i) const {
    const added_token* best = nullptr;
    for (const auto& a : added_) {
      if (a.content.size() > text.size() - i) continue;
      if (best && a.content.size() <= best->content.size()) continue;
      if (text.compare(i, a.content.size(), a.content) == 0) best = &a;
    }
    return best;
  }

  // Applies the Split regexes in order, each to every piece the previous one left.
  template <class Sink>
  void pre_tokenize(std::string_view text, pcre2_match_data* md, Sink& sink) const {
    if (text.empty()) return;
    split(text, 0, md, sink);
  }

  template <class Sink>
  void split(std::string_view piece, size_t level, pcre2_match_data* md, Sink& sink) const {
    if (level == splits_.size()) {
      bpe(piece, sink);
      return;
    }
    const pcre2_code* re = splits_[level].get();
    auto subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
    size_t pos = 0, emitted = 0;
    while (pos <= piece.size()) {
      int rc = pcre2_match(re, subject, piece.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) break;
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      size_t start = ov[0], end = ov[1];
      if (end == start) {  // an empty match isolates nothing; step over one code point
        if (start >= piece.size()) break;
        char32_t cp;
        size_t n = utf8_decode(piece, start, cp);
        pos = start + (n ? n : 1);
        continue;
      }
      if (start > emitted) split(piece.substr(emitted, start - emitted), level + 1, md, sink);
      split(piece.substr(start, end - start), level + 1, md, sink);
      emitted = end;
      pos = end;
    }
    if (emitted < piece.size()) split(piece.substr(emitted), level + 1, md, sink);
  }

  // Byte-pair merging of one pre-token: the lowest-ranked adjacent pair merges first.
  template <class Sink>
  void bpe(std::string_view word, Sink& sink) const {
    if (word.empty()) return;
    if (word.size() == 1) {
      sink(byte_ids_[static_cast<unsigned char>(word[0])]);
      return;
    }
    struct symbol {
      int32_t id;
      int32_t prev, next;
      bool alive;
    };
    std::vector<symbol> syms(word.size());
    for (size_t k = 0; k < word.size(); ++k) {
      syms[k] = {byte_ids_[static_cast<unsigned char>(word[k])], int32_t(k) - 1,
                 k + 1 < word.size() ? int32_t(k + 1) : -1, true};
    }
    struct candidate {
      int32_t rank, left, left_id, right_id;
      bool operator>(const candidate& o) const {
        return rank != o.rank ? rank > o.rank : left > o.left;
      }
    };
    std::priority_queue<candidate, std::vector<candidate>, std::greater<>> heap;
    auto push = [&](int32_t left) {
      if (left < 0) return;
      int32_t right = syms[left].next;
      if (right < 0) return;
      auto it = merges_.find(pair_key(syms[left].id, syms[right].id));
      if (it != merges_.end()) heap.push({it->second.rank, left, syms[left].id, syms[right].id});
    };
    for (size_t k = 0; k + 1 < word.size(); ++k) push(int32_t(k));
    while (!heap.empty()) {
      candidate c = heap.top();
      heap.pop();
      symbol& l = syms[c.left];
      if (!l.alive || l.id != c.left_id || l.next < 0) continue;
      symbol& r = syms[l.next];
      if (r.id != c.right_id) continue;
      l.id = merges_.at(pair_key(c.left_id, c.right_id)).id;
      r.alive = false;
      l.next = r.next;
      if (r.next >= 0) syms[r.next].prev = c.left;
      push(l.prev);
      push(c.left);
    }
    for (int32_t k = 0; k >= 0; k = syms[k].next) sink(syms[k].id);
  }

  std::array<char32_t, 256> alphabet_{};
  std::unordered_map<char32_t, unsigned char> from_alphabet_;
  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_bytes_;
  std::array<int32_t, 256> byte_ids_{};
  std::unordered_map<uint64_t, merge> merges_;
  std::vector<added_token> added_;
  std::unordered_map<std::string, int32_t> added_by_text_;
  std::array<bool, 256> added_first_{};
  std::unordered_set<int32_t> special_;
  std::vector<regex_ptr> splits_;
  bool byte_level_ = false;
};

}  // namespace

std::shared_ptr<const tokenizer> tokenizer::from_json_text(std::string_view json_text) {
  json doc;
  try {
    doc = json::parse(json_text);
  } catch (const json::exception& e) {
    fail(std::string("not valid JSON: ") + e.what());
  }
  try {
    return std::make_shared<bpe_tokenizer>(doc);
  } catch (const json::exception& e) {
    fail(std::string("unexpected shape: ") + e.what());
  }
}

std::shared_ptr<const tokenizer> tokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("tokenizer: cannot read " + path);
  std::ostringstream buf;
  buf << in.rdbuf();
  try {
    return from_json_text(buf.str());
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

}  // namespace tollgate::tokenizer
