// load_model(), submit(), sequences, the chat template and generate(): the public API over a
// model's scheduler and forward backend.
#include "local_engine/engine.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <stdexcept>

#include "local_engine/forward_backend.hpp"
#include "local_engine/sampler.hpp"
#include "local_engine/scheduler.hpp"

namespace tollgate::engine {

void set_fp8_experts(backend_options& o, std::string_view mode) {
  if (mode == "tensor_cores") o.keep_fp8 = true, o.fp8_tensor_cores = true;
  else if (mode == "dequantise_on_read") o.keep_fp8 = true, o.fp8_tensor_cores = false;
  else if (mode == "dequantise_at_load") o.keep_fp8 = false, o.fp8_tensor_cores = false;
  else
    throw std::invalid_argument("fp8_experts must be tensor_cores, dequantise_on_read or dequantise_at_load, got '" +
                                std::string(mode) + "'");
}

namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error(p.string() + ": cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Checks what start() and submit() take; throws std::invalid_argument naming the problem.
void check_request(const model& m, const std::vector<int32_t>& prompt, const sampling& s) {
  check_sampling(s);
  if (prompt.empty()) throw std::invalid_argument("the prompt is empty");
  const auto V = m.config.vocab_size;
  for (int32_t id : prompt)
    if (id < 0 || id >= V)
      throw std::invalid_argument("prompt token " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(V));
  if (prompt.size() > static_cast<size_t>(m.config.max_position_embeddings))
    throw std::invalid_argument("the prompt of " + std::to_string(prompt.size()) + " tokens is longer than the context of " +
                                std::to_string(m.config.max_position_embeddings));
  // A prompt the whole KV pool cannot hold would wait for ever: refuse it now.
  const kv_pool_shape pool = m.backend->kv_pool();
  const size_t bs = static_cast<size_t>(std::max(pool.block_size, 1));
  const size_t need = (prompt.size() + bs - 1) / bs;
  if (need > pool.blocks)
    throw std::invalid_argument("the prompt of " + std::to_string(prompt.size()) + " tokens needs " + std::to_string(need) +
                                " KV blocks; the pool holds " + std::to_string(pool.blocks) + " (raise kv_cache_memory)");
}

// Holds the model weakly: a handle may be released on the engine thread (inside a callback's
// captures), which must never be where the model, and so the engine thread, is destroyed.
class stream_impl final : public stream {
 public:
  stream_impl(const std::shared_ptr<const model>& m, std::shared_ptr<sched_sequence> s) : m_(m), s_(std::move(s)) {}
  void cancel() override {
    if (auto m = m_.lock()) m->sched->cancel(*s_);  // a model that is gone has ended its sequences
  }

 private:
  std::weak_ptr<const model> m_;
  std::shared_ptr<sched_sequence> s_;
};

// What a stepped sequence's engine callbacks leave for step().
struct step_box {
  std::mutex m;
  std::condition_variable cv;
  std::deque<int32_t> tokens;
  bool ended = false;
  stream_end reason = stream_end::length;
  std::string message;
};

class sequence_impl final : public sequence {
 public:
  sequence_impl(std::shared_ptr<const model> m, std::vector<int32_t> prompt, const sampling& s)
      : m_(std::move(m)), prompt_tokens_(prompt.size()), box_(std::make_shared<step_box>()) {
    sched_request r;
    r.prompt = std::move(prompt);
    r.sample = s;
    r.max_tokens = std::numeric_limits<size_t>::max();
    r.paced = true;
    r.callbacks.on_token = [b = box_](int32_t t) {
      std::lock_guard lock(b->m);
      b->tokens.push_back(t);
      b->cv.notify_all();
      return true;
    };
    r.callbacks.on_end = [b = box_](stream_end why, const std::string& msg) {
      std::lock_guard lock(b->m);
      b->ended = true;
      b->reason = why;
      b->message = msg;
      b->cv.notify_all();
    };
    seq_ = m_->sched->submit(std::move(r));
  }
  ~sequence_impl() override { m_->sched->cancel(*seq_); }

  int32_t step() override {
    std::unique_lock lock(box_->m);
    if (box_->tokens.empty() && !box_->ended) {
      m_->sched->grant(*seq_, 1);
      box_->cv.wait(lock, [&] { return !box_->tokens.empty() || box_->ended; });
    }
    if (!box_->tokens.empty()) {
      const int32_t t = box_->tokens.front();
      box_->tokens.pop_front();
      ++generated_;
      return t;
    }
    if (box_->reason == stream_end::context_full)
      throw std::runtime_error("the context of " + std::to_string(m_->config.max_position_embeddings) + " positions is full");
    throw std::runtime_error("the sequence ended: " + (box_->message.empty() ? std::string("cancelled") : box_->message));
  }
  size_t prompt_tokens() const override { return prompt_tokens_; }
  size_t generated_tokens() const override { return generated_; }

 private:
  std::shared_ptr<const model> m_;
  size_t prompt_tokens_;
  std::shared_ptr<step_box> box_;
  std::shared_ptr<sched_sequence> seq_;
  size_t generated_ = 0;
};

}  // namespace

sequence::~sequence() = default;
stream::~stream() = default;
model::model() = default;
model::~model() { sched.reset(); }

std::shared_ptr<const model> make_model(model_config config, std::unique_ptr<forward_backend> backend,
                                        std::shared_ptr<const tokenizer::tokenizer> tok, const scheduler_options& sched, std::string name) {
  if (!backend) throw std::invalid_argument("make_model: no backend");
  auto m = std::make_shared<model>();
  m->config = std::move(config);
  m->tok = std::move(tok);
  m->name = std::move(name);
  m->backend = std::move(backend);
  m->sched = std::make_unique<scheduler>(*m->backend, m->config, sched);
  return m;
}

std::shared_ptr<const model> load_model(const std::string& checkpoint_dir, const backend_options& options,
                                        const scheduler_options& sched) {
  const fs::path dir(checkpoint_dir);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw std::runtime_error(checkpoint_dir + ": not a checkpoint folder");
  const fs::path cfg_path = dir / "config.json";
  if (!fs::exists(cfg_path, ec)) throw std::runtime_error(checkpoint_dir + ": no config.json");
  if (sched.max_batch < 1) throw std::invalid_argument("max_batch must be >= 1");
  if (sched.max_batch_tokens < 1) throw std::invalid_argument("max_batch_tokens must be >= 1");
  auto config = parse_model_config(read_file(cfg_path), cfg_path.string());
  std::string name = fs::absolute(dir, ec).lexically_normal().filename().string();
  if (name.empty()) name = fs::absolute(dir, ec).lexically_normal().parent_path().filename().string();
  std::shared_ptr<const tokenizer::tokenizer> tok;
  const fs::path tok_path = dir / "tokenizer.json";
  if (fs::exists(tok_path, ec)) tok = tokenizer::tokenizer::load(tok_path.string());
  auto backend = make_backend(config, checkpoint_dir, options);
  auto m = std::const_pointer_cast<model>(make_model(std::move(config), std::move(backend), std::move(tok), sched, std::move(name)));
  m->dir = checkpoint_dir;
  return m;
}

std::shared_ptr<stream> submit(const std::shared_ptr<const model>& m, std::vector<int32_t> prompt, const sampling& s,
                               std::size_t max_tokens, stream_callbacks callbacks, int priority) {
  queue_options q;
  q.priority = priority;
  return submit(m, std::move(prompt), s, max_tokens, std::move(callbacks), q);
}

std::shared_ptr<stream> submit(const std::shared_ptr<const model>& m, std::vector<int32_t> prompt, const sampling& s,
                               std::size_t max_tokens, stream_callbacks callbacks, const queue_options& queue) {
  if (!m) throw std::invalid_argument("submit: no model");
  check_request(*m, prompt, s);
  if (queue.queue_timeout.count() < 0) throw std::invalid_argument("queue_timeout must not be negative");
  sched_request r;
  r.priority = queue.priority;
  r.max_queue = queue.max_queue;
  r.queue_timeout = queue.queue_timeout;
  r.prompt = std::move(prompt);
  r.sample = s;
  r.max_tokens = max_tokens;
  r.callbacks = std::move(callbacks);
  return std::make_shared<stream_impl>(m, m->sched->submit(std::move(r)));
}

engine_stats stats(const model& m) { return m.sched->stats(); }

std::unique_ptr<sequence> start(const std::shared_ptr<const model>& m, std::vector<int32_t> prompt, const sampling& s) {
  if (!m) throw std::invalid_argument("start: no model");
  check_request(*m, prompt, s);
  return std::make_unique<sequence_impl>(m, std::move(prompt), s);
}

std::shared_ptr<const tokenizer::tokenizer> model_tokenizer(const model& m) { return m.tok; }
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
std::string model_describe(const model& m) { return m.backend->describe(); }

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
  for (int32_t id : tokens)
    if (id < 0 || id >= m.config.vocab_size)
      throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary of " +
                                  std::to_string(m.config.vocab_size));
  struct box {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<float> logits;
    bool done = false;
    stream_end reason = stream_end::length;
    std::string message;
  };
  auto b = std::make_shared<box>();
  sched_request r;
  r.prompt.assign(tokens.begin(), tokens.end());
  r.max_tokens = 0;
  r.all_logits = true;
  r.callbacks.on_logits = [b](std::span<const float> l) { b->logits.insert(b->logits.end(), l.begin(), l.end()); };
  r.callbacks.on_end = [b](stream_end why, const std::string& msg) {
    std::lock_guard lock(b->mu);
    b->done = true;
    b->reason = why;
    b->message = msg;
    b->cv.notify_all();
  };
  m.sched->submit(std::move(r));
  std::unique_lock lock(b->mu);
  b->cv.wait(lock, [&] { return b->done; });
  if (b->reason != stream_end::length) throw std::runtime_error("forward_logits: " + b->message);
  return std::move(b->logits);
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
