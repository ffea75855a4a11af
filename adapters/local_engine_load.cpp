// load_engine(): the local engine library behind the serving layer's engine_port.
#include <filesystem>
#include <stdexcept>

#include "adapters/local_engine_backend.hpp"
#include "local_engine/engine.hpp"

namespace tollgate::adapters {

namespace {

class engine_binding final : public engine_port {
 public:
  explicit engine_binding(std::shared_ptr<const engine::model> m, std::string name)
      : model_(std::move(m)), name_(std::move(name)), tok_(engine::model_tokenizer(*model_)) {}

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

  class seq final : public sequence {
   public:
    explicit seq(std::unique_ptr<engine::sequence> s) : s_(std::move(s)) {}
    std::int32_t step() override { return s_->step(); }

   private:
    std::unique_ptr<engine::sequence> s_;
  };
  std::unique_ptr<sequence> start(std::vector<std::int32_t> prompt, const engine_sampling& s) const override {
    engine::sampling e;
    e.temperature = s.temperature;
    e.top_p = s.top_p;
    e.top_k = s.top_k;
    e.seed = s.seed;
    return std::make_unique<seq>(engine::start(model_, std::move(prompt), e));
  }

 private:
  std::shared_ptr<const engine::model> model_;
  std::string name_;
  std::shared_ptr<const engine::tokenizer> tok_;
};

}  // namespace

std::shared_ptr<const engine_port> load_engine(const config::backend_config& cfg) {
  auto m = engine::load_model(cfg.checkpoint, cfg.device);
  return std::make_shared<engine_binding>(std::move(m), std::filesystem::path(cfg.checkpoint).filename().string());
}

}  // namespace tollgate::adapters
