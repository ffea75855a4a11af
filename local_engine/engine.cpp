// load_model(), sequences, the chat template and generate(): the public API over a forward backend.
#include "local_engine/engine.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "local_engine/forward_backend.hpp"
#include "local_engine/sampler.hpp"

namespace tollgate::engine {

namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error(p.string() + ": cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class sequence_impl final : public sequence {
 public:
  sequence_impl(std::shared_ptr<const model> m, std::vector<int32_t> prompt, const sampling& s)
      : m_(std::move(m)), prompt_(std::move(prompt)), sampler_(s), cache_(m_->backend->new_cache()) {}

  int32_t step() override {
    const size_t limit = static_cast<size_t>(m_->config.max_position_embeddings);
    if (!started_) {
      m_->backend->forward(*cache_, prompt_, false, logits_);
      started_ = true;
    } else {
      if (cache_->length() + 1 > limit)
        throw std::runtime_error("the context of " + std::to_string(limit) + " positions is full");
      const int32_t one[] = {last_};
      m_->backend->forward(*cache_, one, false, logits_);
    }
    last_ = sampler_.pick(logits_);
    ++generated_;
    return last_;
  }
  size_t prompt_tokens() const override { return prompt_.size(); }
  size_t generated_tokens() const override { return generated_; }

 private:
  std::shared_ptr<const model> m_;
  std::vector<int32_t> prompt_;
  sampler sampler_;
  std::unique_ptr<kv_cache> cache_;
  std::vector<float> logits_;
  bool started_ = false;
  int32_t last_ = -1;
  size_t generated_ = 0;
};

}  // namespace

sequence::~sequence() = default;

std::shared_ptr<const model> load_model(const std::string& checkpoint_dir, const std::string& device) {
  if (device.rfind("cuda", 0) == 0)
    throw std::runtime_error("device '" + device + "': the engine has no CUDA forward yet (only the CPU reference path); use device cpu");
  if (device != "cpu") throw std::runtime_error("device '" + device + "' is not known (cpu or cuda:N)");
  const fs::path dir(checkpoint_dir);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw std::runtime_error(checkpoint_dir + ": not a checkpoint folder");
  const fs::path cfg_path = dir / "config.json";
  if (!fs::exists(cfg_path, ec)) throw std::runtime_error(checkpoint_dir + ": no config.json");
  auto m = std::make_shared<model>();
  m->config = parse_model_config(read_file(cfg_path), cfg_path.string());
  m->dir = checkpoint_dir;
  m->name = fs::absolute(dir, ec).lexically_normal().filename().string();
  if (m->name.empty()) m->name = fs::absolute(dir, ec).lexically_normal().parent_path().filename().string();
  const fs::path tok = dir / "tokenizer.json";
  if (fs::exists(tok, ec)) m->tok = tokenizer::load(tok.string());
  m->backend = make_cpu_backend(m->config, checkpoint_dir);
  return m;
}

std::unique_ptr<sequence> start(const std::shared_ptr<const model>& m, std::vector<int32_t> prompt, const sampling& s) {
  if (!m) throw std::invalid_argument("start: no model");
  check_sampling(s);
  if (prompt.empty()) throw std::invalid_argument("the prompt is empty");
  const auto V = m->config.vocab_size;
  for (int32_t id : prompt)
    if (id < 0 || id >= V)
      throw std::invalid_argument("prompt token " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(V));
  if (prompt.size() > static_cast<size_t>(m->config.max_position_embeddings))
    throw std::invalid_argument("the prompt of " + std::to_string(prompt.size()) + " tokens is longer than the context of " +
                                std::to_string(m->config.max_position_embeddings));
  return std::make_unique<sequence_impl>(m, std::move(prompt), s);
}

std::shared_ptr<const tokenizer> model_tokenizer(const model& m) { return m.tok; }
std::optional<int32_t> eos_token(const model& m) {
  if (m.config.eos_token_ids.empty()) return std::nullopt;
  return m.config.eos_token_ids.front();
}
std::optional<int32_t> bos_token(const model& m) { return m.config.bos_token_id; }
size_t vocab_size(const model& m) { return static_cast<size_t>(m.config.vocab_size); }
size_t max_positions(const model& m) { return static_cast<size_t>(m.config.max_position_embeddings); }
std::string model_name(const model& m) { return m.name; }
std::string model_architecture(const model& m) { return m.config.model_type; }
std::string model_device(const model& m) { return m.backend->device(); }

std::string apply_chat_template_text(const std::vector<chat_message>& messages, bool add_generation_prompt) {
  // DeepSeek-V3's published template: every system message (joined by a blank line) right after
  // BOS, then the turns in order.
  std::string system;
  bool first_system = true;
  for (const auto& msg : messages) {
    if (msg.role == "system" || msg.role == "developer") {
      if (!first_system) system += "\n\n";
      system += msg.content;
      first_system = false;
    }
  }
  std::string out = "<｜begin▁of▁sentence｜>" + system;
  for (const auto& msg : messages) {
    if (msg.role == "system" || msg.role == "developer") continue;
    if (msg.role == "user") out += "<｜User｜>" + msg.content;
    else if (msg.role == "assistant") out += "<｜Assistant｜>" + msg.content + "<｜end▁of▁sentence｜>";
    else throw std::invalid_argument("chat template: unsupported role '" + msg.role + "' (system, user or assistant)");
  }
  if (add_generation_prompt) out += "<｜Assistant｜>";
  return out;
}

std::vector<int32_t> apply_chat_template(const model& m, const std::vector<chat_message>& messages,
                                         bool add_generation_prompt) {
  if (!m.tok) throw std::runtime_error(m.dir + ": the checkpoint has no tokenizer.json for the chat template");
  return m.tok->encode(apply_chat_template_text(messages, add_generation_prompt));
}

std::vector<float> forward_logits(const model& m, std::span<const int32_t> tokens) {
  if (tokens.empty()) return {};
  if (tokens.size() > static_cast<size_t>(m.config.max_position_embeddings))
    throw std::invalid_argument("forward_logits: more tokens than the context holds");
  auto cache = m.backend->new_cache();
  std::vector<float> logits;
  m.backend->forward(*cache, tokens, true, logits);
  return logits;
}

generate_result generate(const std::shared_ptr<const model>& m, std::vector<int32_t> prompt, const sampling& s,
                         const generate_options& opts) {
  if (!m) throw std::invalid_argument("generate: no model");
  const auto tok = m->tok;
  if (!opts.stop.empty() && !tok) throw std::invalid_argument("stop strings need a tokenizer; the checkpoint has none");
  for (const auto& st : opts.stop)
    if (st.empty()) throw std::invalid_argument("a stop string is empty");
  generate_result r;
  r.finish_reason = "length";
  if (opts.max_tokens == 0) return r;
  const size_t room = static_cast<size_t>(m->config.max_position_embeddings);
  auto seq = start(m, std::move(prompt), s);
  const auto& eos = m->config.eos_token_ids;
  while (r.tokens.size() < opts.max_tokens) {
    if (seq->prompt_tokens() + r.tokens.size() >= room) break;  // no position left for another token
    const int32_t id = seq->step();
    if (opts.stop_at_eos && std::find(eos.begin(), eos.end(), id) != eos.end()) {
      r.finish_reason = "stop";
      break;
    }
    r.tokens.push_back(id);
    if (!opts.stop.empty()) {
      const std::string text = tok->decode(r.tokens, true);
      size_t cut = std::string::npos;
      for (const auto& st : opts.stop) cut = std::min(cut, text.find(st));
      if (cut != std::string::npos) {
        r.text = text.substr(0, cut);
        r.finish_reason = "stop";
        return r;
      }
    }
  }
  if (tok) r.text = tok->decode(r.tokens, true);
  return r;
}

}  // namespace tollgate::engine
