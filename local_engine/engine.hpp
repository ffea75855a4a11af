// The local inference engine's one public header: load a DeepSeek-V2/V3-style checkpoint, start
// sequences and step them token by token, apply the chat template, and (for tests) read full logits.
//
// A model is immutable once loaded and may be shared by any number of threads. A sequence is one
// request's state (its KV cache and random generator); it is used by one thread at a time.
// Everything here throws std::runtime_error (or std::invalid_argument for bad arguments) with a
// message that names what is wrong; nothing aborts the process on bad input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "local_engine/tokenizer.hpp"

namespace tollgate::engine {

/// How the next token is picked. temperature <= 0 or top_k == 1 is greedy (the first largest logit).
struct sampling {
  float temperature = 0;  ///< logits are divided by it before the softmax
  float top_p = 1;        ///< nucleus: the smallest set of most likely tokens whose mass reaches top_p
  int top_k = 0;          ///< keep the k most likely tokens; 0 keeps all
  uint64_t seed = 0;      ///< the same seed, prompt and model give the same tokens
};

struct chat_message {
  std::string role;  ///< "system", "user" or "assistant" ("developer" is read as "system")
  std::string content;
};

class model;  ///< a loaded checkpoint; defined inside the engine

/// Loads a Hugging Face checkpoint folder (config.json, *.safetensors, optional tokenizer.json).
/// device: "cpu"; "cuda:N" is refused ("no CUDA forward yet") until the CUDA forward exists.
std::shared_ptr<const model> load_model(const std::string& checkpoint_dir, const std::string& device = "cpu");

/// One request's decoding state. Created by start(); owns its KV cache.
class sequence {
 public:
  virtual ~sequence();
  /// The first call runs the prompt (prefill); each call returns the next sampled token id, which
  /// the following call feeds back. Throws std::runtime_error once the context is full.
  virtual int32_t step() = 0;
  virtual size_t prompt_tokens() const = 0;
  virtual size_t generated_tokens() const = 0;
};

/// Starts a sequence. Throws std::invalid_argument for an empty prompt, ids outside the vocabulary,
/// a prompt longer than the context, or sampling values out of range (temperature < 0, top_p outside
/// (0, 1], top_k < 0).
std::unique_ptr<sequence> start(const std::shared_ptr<const model>& m, std::vector<int32_t> prompt, const sampling& s);

// Accessors.
std::shared_ptr<const tokenizer> model_tokenizer(const model& m);  ///< null when the folder has no tokenizer.json
std::optional<int32_t> eos_token(const model& m);                  ///< config.json's eos_token_id (the first one)
std::optional<int32_t> bos_token(const model& m);                  ///< config.json's bos_token_id
size_t vocab_size(const model& m);
size_t max_positions(const model& m);  ///< config.json's max_position_embeddings
std::string model_name(const model& m);  ///< the checkpoint folder's name
std::string model_architecture(const model& m);  ///< "deepseek_v2" or "deepseek_v3"
std::string model_device(const model& m);  ///< "cpu"

/// The DeepSeek-V3 chat template: BOS, the system messages joined by blank lines, then
/// `<｜User｜>user` and `<｜Assistant｜>assistant<｜end▁of▁sentence｜>` turns, and `<｜Assistant｜>`
/// when add_generation_prompt. Throws std::invalid_argument for an unknown role.
std::string apply_chat_template_text(const std::vector<chat_message>& messages, bool add_generation_prompt);
/// The same, encoded with the model's tokenizer. Throws std::runtime_error when it has none.
std::vector<int32_t> apply_chat_template(const model& m, const std::vector<chat_message>& messages,
                                         bool add_generation_prompt);

/// Logits of every position of `tokens` run from an empty cache: [tokens.size() * vocab_size].
std::vector<float> forward_logits(const model& m, std::span<const int32_t> tokens);

/// A whole generation: step() until max_tokens, EOS (not included in the output), a stop string
/// in the decoded text (the text is cut before it), or the end of the context.
struct generate_options {
  size_t max_tokens = 256;
  std::vector<std::string> stop;  ///< needs a tokenizer
  bool stop_at_eos = true;
};
struct generate_result {
  std::vector<int32_t> tokens;
  std::string text;           ///< empty without a tokenizer
  std::string finish_reason;  ///< "stop" (EOS or a stop string) or "length"
};
generate_result generate(const std::shared_ptr<const model>& m, std::vector<int32_t> prompt, const sampling& s,
                         const generate_options& opts);

}  // namespace tollgate::engine
