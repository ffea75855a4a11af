// Long strings carried across a translation as spans of its input. The translations between API
// dialects work on nlohmann's tree, which reads and writes every byte of a string one at a time
// (about 20 ns a byte over both). Message texts, the bulk of a large request, only pass through a
// translation unchanged (copied, or joined with other texts): so they are taken out of the input
// before the tree is built, a short marker standing in for each, and their bytes put back into the
// translated text where the markers came out.
#pragma once

#include <cstddef>
#include <functional>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tollgate::protocol {

/// One step of a JSON path: an object member's key (its bytes as written), or an array item.
struct path_step {
  std::string_view key;
  bool item = false;
};

/// Which string values a translation only copies or joins: a path from the top-level object.
using string_paths = std::function<bool(std::span<const path_step>)>;

/// Whether path is pattern, where "[]" stands for an array item and anything else for a key.
inline bool path_is(std::span<const path_step> path, std::initializer_list<std::string_view> pattern) {
  if (path.size() != pattern.size()) return false;
  std::size_t i = 0;
  for (const std::string_view want : pattern) {
    const path_step& step = path[i++];
    if (want == "[]" ? !step.item : (step.item || step.key != want)) return false;
  }
  return true;
}

/// Finds the string values of a JSON object text whose contents (between the quotes) are at least
/// min_bytes long, at paths `wanted` accepts, as [begin, end) offsets of their literals, quotes
/// included. A string a strict parser would refuse or read otherwise than its bytes say
/// (invalid UTF-8, a surrogate escape) is not taken, nor is a key. false (out empty) when the
/// text is no object or does not scan as JSON: a parser is to say what is wrong with it.
bool find_long_strings(std::string_view text, std::size_t min_bytes, const string_paths& wanted,
                       std::vector<std::pair<std::size_t, std::size_t>>& out);

/// The long strings of one translation's input: take_out() before the translation, put_back()
/// on its output. Markers are a DEL byte (0x7F, which JSON writers leave as it is), an index and
/// another DEL, so an input that holds a DEL anywhere is not taken apart.
class string_spans {
 public:
  /// Strings shorter than this cost the tree little; a marker costs a few bytes.
  static constexpr std::size_t min_bytes = 128;

  /// true when some string of text was taken out: small() is text with a marker literal in place
  /// of each. false: translate text as it is. text must outlive this object.
  bool take_out(std::string_view text, const string_paths& wanted);
  const std::string& small() const { return small_; }
  /// translated with every marker (inside a string literal of it) replaced by the contents of
  /// the literal it stands for, escapes as written.
  std::string put_back(std::string_view translated) const;

 private:
  std::string_view source_;
  std::vector<std::pair<std::size_t, std::size_t>> spans_;
  std::string small_;
};

/// Translates body with translate, its long strings at `wanted` paths carried across as spans
/// (above). R has a std::string body and an ok(); the body is put back together only when ok.
template <class R, class F>
R with_string_spans(std::string_view body, const string_paths& wanted, F&& translate) {
  string_spans spans;
  if (!spans.take_out(body, wanted)) return translate(body);
  R r = translate(std::string_view(spans.small()));
  if (r.ok()) r.body = spans.put_back(r.body);
  return r;
}

}  // namespace tollgate::protocol
