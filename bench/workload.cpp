#include "bench/workload.hpp"

#include <nlohmann/json.hpp>

#include <array>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

#include "tokenizer/tokenizer.hpp"

namespace tollgate::bench {

namespace {

// Common English words that byte-level BPE vocabularies hold as one token each (with the
// leading space), so a prompt of n words is close to n tokens before it is trimmed.
constexpr std::array<std::string_view, 48> words = {
    " the", " of", " and", " to", " in", " is", " that", " for", " it", " as", " was", " with",
    " be", " by", " on", " not", " he", " this", " are", " or", " his", " from", " at", " which",
    " but", " have", " an", " had", " they", " you", " were", " their", " one", " all", " we",
    " can", " her", " has", " there", " been", " if", " more", " when", " will", " would", " who",
    " so", " no"};

std::int64_t count(const tokenizer::tokenizer* tok, std::string_view text) {
  if (tok != nullptr) return static_cast<std::int64_t>(tok->count(text));
  std::int64_t n = 0;
  bool in_word = false;
  for (char c : text) {
    const bool space = c == ' ' || c == '\n' || c == '\t';
    if (!space && !in_word) ++n;
    in_word = !space;
  }
  return n;
}

}  // namespace

std::string synthetic_text(std::int64_t tokens, std::uint64_t salt, const tokenizer::tokenizer* tok) {
  std::mt19937_64 rng(salt * 0x9E3779B97F4A7C15ULL + 1);
  // A distinct start per prompt, so that no two prompts share a cached prefix.
  std::string head = "Request " + std::to_string(salt) + ":";
  std::vector<std::string_view> body;
  auto build = [&] {
    std::string s = head;
    for (auto w : body) s += w;
    return s;
  };
  const std::int64_t head_tokens = count(tok, head);
  for (std::int64_t i = head_tokens; i < tokens; ++i) body.push_back(words[rng() % words.size()]);
  std::string text = build();
  // Words merge or split at times; a few passes bring the count to the target.
  for (int pass = 0; pass < 8; ++pass) {
    const std::int64_t n = count(tok, text);
    if (n == tokens) break;
    if (n < tokens) {
      for (std::int64_t i = n; i < tokens; ++i) body.push_back(words[rng() % words.size()]);
    } else {
      for (std::int64_t i = tokens; i < n && !body.empty(); ++i) body.pop_back();
    }
    text = build();
  }
  return text;
}

std::vector<prompt> make_prompts(const bench_options& o, const tokenizer::tokenizer* tok, std::size_t wanted) {
  std::mt19937_64 rng(o.seed);
  std::vector<prompt> out;
  if (o.dataset.empty()) {
    out.reserve(wanted);
    for (std::size_t i = 0; i < wanted; ++i) {
      prompt p;
      const std::int64_t n = o.prompt_tokens.sample(rng);
      p.text = synthetic_text(n, o.seed * 1'000'003 + i, tok);
      p.tokens = count(tok, p.text);
      p.max_tokens = o.max_tokens ? o.max_tokens->sample(rng) : 128;
      out.push_back(std::move(p));
    }
    return out;
  }
  std::ifstream in(o.dataset);
  if (!in) throw std::runtime_error(o.dataset + ": cannot read the dataset");
  std::stringstream text;
  text << in.rdbuf();
  const auto doc = nlohmann::json::parse(text.str(), nullptr, false);
  if (doc.is_discarded()) throw std::runtime_error(o.dataset + ": not valid JSON");
  if (!doc.is_array()) throw std::runtime_error(o.dataset + ": expected a JSON array of conversations");
  for (const auto& item : doc) {
    if (out.size() >= wanted) break;
    if (!item.is_object()) continue;
    std::string question, answer;
    if (const auto c = item.find("conversations"); c != item.end() && c->is_array()) {
      // ShareGPT: the first human turn and the reply that follows it.
      for (std::size_t t = 0; t < c->size(); ++t) {
        const auto& turn = (*c)[t];
        if (!turn.is_object() || !turn.contains("value") || !turn["value"].is_string()) continue;
        const std::string from = turn.value("from", "");
        if (question.empty() && (from == "human" || from == "user")) {
          question = turn["value"].get<std::string>();
          if (t + 1 < c->size() && (*c)[t + 1].is_object() && (*c)[t + 1].contains("value") &&
              (*c)[t + 1]["value"].is_string())
            answer = (*c)[t + 1]["value"].get<std::string>();
          break;
        }
      }
    } else if (const auto p = item.find("prompt"); p != item.end() && p->is_string()) {
      question = p->get<std::string>();
      if (const auto a = item.find("completion"); a != item.end() && a->is_string()) answer = a->get<std::string>();
    }
    if (question.empty()) continue;
    prompt p;
    p.text = std::move(question);
    p.tokens = count(tok, p.text);
    if (o.max_tokens) p.max_tokens = o.max_tokens->sample(rng);
    else p.max_tokens = answer.empty() ? 128 : std::max<std::int64_t>(1, count(tok, answer));
    out.push_back(std::move(p));
  }
  if (out.empty())
    throw std::runtime_error(o.dataset +
                             ": no usable entry (expected [{\"conversations\": [{\"from\": \"human\", \"value\": ...}, ...]}, ...] "
                             "or [{\"prompt\": ...}, ...])");
  return out;
}

std::string request_body(const bench_options& o, const std::string& model, const prompt& p) {
  nlohmann::json body = {
      {"model", model},
      {"messages", nlohmann::json::array({{{"role", "user"}, {"content", p.text}}})},
      {"max_tokens", p.max_tokens},
  };
  if (o.stream) {
    body["stream"] = true;
    if (o.api == api_kind::openai) body["stream_options"] = {{"include_usage", true}};
  }
  if (o.ignore_eos) body["ignore_eos"] = true;
  return body.dump();
}

}  // namespace tollgate::bench
