// load_engine(): the local engine library behind the serving layer's engine_port.
#include <filesystem>
#include <iostream>
#include <stdexcept>

#include "adapters/local_engine_backend.hpp"
#include "local_engine/engine.hpp"

namespace tollgate::adapters {

namespace {

engine_port::end_reason reason_of(engine::stream_end why) {
  if (why == engine::stream_end::failed) return engine_port::end_reason::failed;
  if (why == engine::stream_end::overloaded) return engine_port::end_reason::overloaded;
  return engine_port::end_reason::done;
}

class engine_binding final : public engine_port {
 public:
  explicit engine_binding(std::shared_ptr<const engine::model> m, std::string name)
      : name_(std::move(name)), tok_(engine::model_tokenizer(*m)), model_(std::move(m)) {}

  std::string model_name() const override { return name_; }
  bool has_tokenizer() const override { return tok_ != nullptr; }
  std::vector<std::int32_t> encode(std::string_view text) const override { return tok_->encode(text); }
  std::vector<std::int32_t> chat_prompt(const std::vector<std::pair<std::string, std::string>>& messages) const override {
    std::vector<engine::chat_message> m;
    for (const auto& [role, content] : messages) m.push_back({role, content});
    return engine::apply_chat_template(*model_, m, true);
  }
  std::string token_bytes(std::int32_t id) const override {
    if (!tok_ || tok_->is_special(id)) return {};
    const std::int32_t one[] = {id};
    return tok_->decode(one);
  }
  std::optional<std::int32_t> eos() const override { return engine::eos_token(*model_); }
  std::size_t max_positions() const override { return engine::max_positions(*model_); }
  std::size_t vocab_size() const override { return engine::vocab_size(*model_); }

  class handle final : public stream {
   public:
    explicit handle(std::shared_ptr<engine::stream> s) : s_(std::move(s)) {}
    void cancel() override { s_->cancel(); }

   private:
    std::shared_ptr<engine::stream> s_;
  };
  std::shared_ptr<stream> submit(std::vector<std::int32_t> prompt, const engine_sampling& s, std::size_t max_tokens,
                                 callbacks cb, const engine_admission& admission) const override {
    engine::sampling e;
    e.temperature = s.temperature;
    e.top_p = s.top_p;
    e.top_k = s.top_k;
    e.seed = s.seed;
    engine::stream_callbacks ec;
    ec.on_token = std::move(cb.on_token);
    ec.on_end = [end = std::move(cb.on_end)](engine::stream_end why, const std::string& message) {
      if (end) end(reason_of(why), message);
    };
    engine::queue_options q;
    q.priority = admission.priority;
    q.max_queue = admission.max_queue;
    q.queue_timeout = admission.queue_timeout;
    try {
      return std::make_shared<handle>(engine::submit(model_, std::move(prompt), e, max_tokens, std::move(ec), q));
    } catch (const engine::queue_full& full) {
      throw engine_queue_full(full.what());
    }
  }

  engine_stats stats() const override {
    const auto e = engine::stats(*model_);
    engine_stats st;
    st.running = e.running;
    st.queued = e.waiting;
    st.batch_sequences = e.last_batch_sequences;
    st.batch_tokens = e.last_batch_tokens;
    st.tokens_per_s = e.tokens_per_s;
    st.kv_blocks_used = e.kv_blocks_used;
    st.kv_blocks_free = e.kv_blocks_free;
    st.kv_blocks_cached = e.kv_blocks_cached;
    st.prefix_cache_lookup_tokens = e.prefix_cache_lookup_tokens;
    st.prefix_cache_hit_tokens = e.prefix_cache_hit_tokens;
    st.preemptions = e.preemptions;
    st.steps = e.steps;
    for (std::size_t p = 0; p < st.queued_by_priority.size(); ++p) {
      st.queued_by_priority[p] = e.waiting_by_priority[p];
      st.shed_by_priority[p] = e.shed_by_priority[p];
    }
    return st;
  }

 private:
  std::string name_;
  std::shared_ptr<const tokenizer::tokenizer> tok_;
  // Last: destroyed first, so that the engine thread stops while the tokenizer is still there.
  std::shared_ptr<const engine::model> model_;
};

}  // namespace

std::shared_ptr<const engine_port> load_engine(const config::backend_config& cfg) {
  const config::local_engine_config& local = *cfg.local_engine();
  engine::backend_options bo;
  bo.device = local.device;
  bo.dtype = local.dtype;
  bo.kv_cache_memory = local.kv_cache_memory;
  engine::set_fp8_experts(bo, local.fp8_experts);
  engine::scheduler_options so;
  so.max_batch = local.max_batch;
  so.max_batch_tokens = local.max_batch_tokens;
  so.prefix_caching = local.prefix_caching;
  so.priority_aging = config::queue_aging_of(cfg);
  auto m = engine::load_model(local.checkpoint, bo, so);
  std::cerr << "tollgate: backend " << cfg.name << ": " << engine::model_describe(*m) << std::endl;
  return std::make_shared<engine_binding>(std::move(m), std::filesystem::path(local.checkpoint).filename().string());
}

}  // namespace tollgate::adapters
