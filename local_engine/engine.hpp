// The local inference engine's one public header: load a DeepSeek-V2/V3-style checkpoint, submit
// sequences to its continuous-batching scheduler (token callbacks, cancellation) or step them token
// by token, apply the chat template, and (for tests) read full logits.
//
// A model is immutable once loaded and may be shared by any number of threads. Each loaded model
// has one engine thread: every step it runs ONE forward over all running sequences (their next
// token plus chunks of waiting prompts), so concurrent users batch together. A sequence object is
// used by one thread at a time.
// Everything here throws std::runtime_error (or std::invalid_argument for bad arguments) with a
// message that names what is wrong; nothing aborts the process on bad input.
#pragma once

#include <chrono>
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.hpp"

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

/// How a forward backend is built (see forward_backend.hpp). Checked by load_model().
struct backend_options {
  std::string device = "cpu";  ///< "cpu" or "cuda:N"
  std::string dtype;           ///< "float32" or "bfloat16"; empty: float32 on the CPU, bfloat16 on a GPU
  /// Size of the KV pool: bytes when > 1, else a fraction of the device's free memory after the
  /// weights (GPU) or of the CPU default of 256 MiB; 0 takes the backend's default (0.9 on a GPU,
  /// 256 MiB on the CPU).
  double kv_cache_memory = 0;
  int kv_block_size = 64;  ///< positions per KV block
  /// Benchmarks: weights drawn on the device from this seed instead of read (the checkpoint
  /// folder's config.json and tokenizer are still used). CUDA backend only.
  std::optional<uint64_t> random_weights_seed;
  /// bf16 on a GPU: dense products of up to this many rows (decode steps; at most 64) run on the
  /// engine's own tensor-core kernel, larger ones on cuBLAS; 0 leaves all to cuBLAS. Since every
  /// kernel is launched behind the one before, cuBLAS is 3 to 6% faster at 4 to 16 rows and equal
  /// at 1 on an H200 (tests/perf/README.md item 17), so only single rows take the kernel.
  int skinny_rows = 1;
  /// Prompt chunks of at least this many tokens, in batches too large to be graphed (over 256
  /// tokens), attend un-absorbed: the cached latents are expanded to per-head keys and values and
  /// attention is three cuBLAS products and a softmax (about 3.4x fewer FLOPs than the absorbed
  /// kernel at DeepSeek's shapes). 0 keeps every token on the absorbed kernel.
  int dense_prefill_tokens = 128;
  /// bf16 on a GPU with FP8 (sm_89 and later): an FP8 checkpoint's routed experts stay in FP8 on
  /// the GPU and are dequantised as the products read them (same results as dequantising at load,
  /// half the bytes); false dequantises them at load.
  bool keep_fp8 = true;
  /// With FP8 experts in DeepSeek's 128-column scale blocks: their decode products run on FP8
  /// tensor cores, activations quantised per block of 128 as DeepSeek's inference does (within
  /// FP8 tolerance of the dequantised model); false dequantises each weight as it is read instead
  /// (the dequantised model's bits, slower).
  bool fp8_tensor_cores = true;
  /// Benchmarks with random_weights_seed: the routed experts drawn in FP8 (with block scales).
  bool random_fp8_experts = false;
};

/// The names of the FP8 expert modes (config key `fp8_experts`, flag `--fp8-experts`):
/// "tensor_cores" (keep_fp8 and fp8_tensor_cores, the default), "dequantise_on_read" (keep_fp8
/// only) and "dequantise_at_load" (neither). Throws std::invalid_argument naming the choices.
void set_fp8_experts(backend_options& o, std::string_view mode);

/// The continuous-batching scheduler's limits.
struct scheduler_options {
  std::size_t max_batch = 64;          ///< sequences running (holding KV blocks) at once
  std::size_t max_batch_tokens = 2048; ///< tokens in one forward: decode tokens plus prefill chunks
  /// Reuse the KV blocks of a prompt's cached prefix (a shared system prompt, earlier turns of a
  /// conversation) instead of computing them again; see kv_block_allocator.
  bool prefix_caching = true;
  /// Aging: a sequence ranks one priority higher (submit()'s priority) for each priority_aging
  /// since it was submitted, for admission and for preemption, so that a low-priority sequence is
  /// never held back forever by a steady stream of higher ones. 0: ranks are priorities alone.
  std::chrono::milliseconds priority_aging{0};
};

/// Loads a Hugging Face checkpoint folder (config.json, *.safetensors, optional tokenizer.json) onto
/// the device that `options` names and starts its engine thread. Throws std::runtime_error naming
/// what is wrong: a missing file, an unknown device, "device 'cuda:0': this build has no CUDA
/// backend (built without nvcc)", a dtype the device cannot run, a KV pool too small for a block.
std::shared_ptr<const model> load_model(const std::string& checkpoint_dir, const backend_options& options = {},
                                        const scheduler_options& sched = {});

/// What the scheduler of one model is doing; a snapshot, safe to read from any thread.
struct engine_stats {
  std::size_t running = 0;              ///< sequences admitted (holding KV blocks)
  std::size_t waiting = 0;              ///< submitted or preempted, not admitted yet
  std::size_t last_batch_sequences = 0; ///< sequences in the last forward
  std::size_t last_batch_tokens = 0;    ///< tokens in the last forward
  double tokens_per_s = 0;              ///< tokens forwarded per second over the last few seconds
  std::size_t kv_blocks_total = 0;
  std::size_t kv_blocks_used = 0;
  std::size_t kv_blocks_free = 0;       ///< free or cached-and-unheld (reclaimable at once)
  std::size_t kv_blocks_cached = 0;     ///< cached blocks no sequence holds (counted in kv_blocks_free)
  int kv_block_size = 0;
  std::uint64_t prefix_cache_lookup_tokens = 0;  ///< prompt positions looked up in the prefix cache at admission
  std::uint64_t prefix_cache_hit_tokens = 0;     ///< of them, positions found cached (not computed again)
  std::uint64_t steps = 0;              ///< forwards run
  std::uint64_t prompt_tokens = 0;      ///< prompt positions forwarded (recomputation after a preemption included)
  std::uint64_t generated_tokens = 0;   ///< tokens sampled
  std::uint64_t preemptions = 0;        ///< sequences sent back to the queue to free KV blocks
  std::uint64_t finished = 0;           ///< ended by max_tokens or by their callback
  std::uint64_t cancelled = 0;          ///< ended by cancel()
  std::uint64_t failed = 0;             ///< ended by an error (context full, pool too small, a failed forward)
  std::uint64_t overloaded = 0;         ///< ended while waiting: displaced by a higher priority, or past queue_timeout
  std::uint64_t refused = 0;            ///< submissions refused at once (queue_full)
  /// By priority (0 to 9, clamped): sequences waiting now, and sequences refused overloaded, by
  /// why: [0] at once (the queue full), [1] displaced by a higher priority, [2] past queue_timeout.
  std::array<std::size_t, 10> waiting_by_priority{};
  std::array<std::array<std::uint64_t, 3>, 10> shed_by_priority{};
};
engine_stats stats(const model& m);

/// How a submitted sequence ended.
enum class stream_end {
  length,        ///< max_tokens reached
  stopped,       ///< on_token returned false
  context_full,  ///< no position left in the model's context for another token
  cancelled,     ///< cancel() was called
  failed,        ///< an error; the message says which
  /// Refused before its first admission, nothing generated (see queue_options): displaced from a
  /// full queue by a newer sequence of higher priority, or still waiting at queue_timeout. The
  /// message says which; the caller may try again later.
  overloaded,
};

/// What the scheduler calls back for a submitted sequence. Both run on the engine thread: keep
/// them short and never call back into the engine from them (submit() and cancel() are fine).
struct stream_callbacks {
  /// Each token as soon as it is sampled; return false to end the sequence (a stop string, EOS).
  std::function<bool(int32_t token)> on_token;
  /// Exactly once, last; message is empty unless reason is failed.
  std::function<void(stream_end reason, const std::string& message)> on_end;
  /// Optional: the logits ([vocab_size]) each token was sampled from, just before on_token.
  std::function<void(std::span<const float> logits)> on_logits;
};

/// A submitted sequence. Destroying the handle does not cancel it; cancel() does. The handle does
/// not keep the model alive: a model that is destroyed ends its sequences (failed, "the engine
/// stopped"), so keep the model while you want its sequences to run.
class stream {
 public:
  virtual ~stream();
  /// Ends the sequence at the engine's next step (its KV blocks are freed then; on_end gets
  /// cancelled). Thread-safe; does nothing once the sequence has ended.
  virtual void cancel() = 0;
};

/// Queues a sequence: the prompt is prefilled (in chunks when long) once KV blocks allow, then
/// one token per engine step goes to on_token until max_tokens, a false from on_token, the end of
/// the context, cancel(), or a failure. Throws std::invalid_argument, as start() does, for a bad
/// prompt or sampling; nothing is called back then. priority: larger is admitted first and may
/// preempt running sequences of lower priority when KV blocks run out (they are recomputed later,
/// their output unchanged); 1 is normal.
std::shared_ptr<stream> submit(const std::shared_ptr<const model>& m, std::vector<int32_t> prompt, const sampling& s,
                               std::size_t max_tokens, stream_callbacks callbacks, int priority = 1);

/// Admission control of a submitted sequence: its priority, and how long a queue it accepts.
struct queue_options {
  int priority = 1;  ///< as submit() takes it: larger first, 1 normal
  /// Sequences that may wait beyond the scheduler's max_batch. When max_batch + max_queue
  /// sequences of the model are already in flight (submitted and not ended, running or waiting),
  /// the newcomer displaces the oldest of the lowest priority below its own among those never
  /// admitted yet (it ends overloaded); with none below it, submit() throws queue_full. A sequence
  /// never displaces one of its own priority or higher, nor one that has started. Default: no limit.
  std::size_t max_queue = std::numeric_limits<std::size_t>::max();
  /// The longest wait for a first admission: a sequence still waiting then ends overloaded (aging,
  /// scheduler_options::priority_aging, still lets a long waiter go first where there is room).
  /// A sequence that has started is never timed out (a preempted one waits to be recomputed).
  /// 0: no limit.
  std::chrono::milliseconds queue_timeout{0};
};

/// submit() refused a sequence at once: max_queue sequences already wait beyond max_batch and
/// none of them has a lower priority. Nothing is called back.
struct queue_full : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// submit() with admission control (see queue_options). Throws as submit() does, and queue_full.
std::shared_ptr<stream> submit(const std::shared_ptr<const model>& m, std::vector<int32_t> prompt, const sampling& s,
                               std::size_t max_tokens, stream_callbacks callbacks, const queue_options& queue);

/// One request's decoding state, stepped by its caller: a sequence of the model's scheduler that
/// produces one token per step() call (concurrent step() calls of several sequences share one
/// forward). Destroying it frees its KV blocks.
class sequence {
 public:
  virtual ~sequence();
  /// The first call runs the prompt (prefill); each call returns the next sampled token id, which
  /// the following call feeds back. Blocks until the token is there. Throws std::runtime_error once
  /// the context is full or when the engine failed the sequence.
  virtual int32_t step() = 0;
  virtual size_t prompt_tokens() const = 0;
  virtual size_t generated_tokens() const = 0;
};

/// Starts a sequence. Throws std::invalid_argument for an empty prompt, ids outside the vocabulary,
/// a prompt longer than the context or than the whole KV pool holds, or sampling values out of range (temperature < 0, top_p outside
/// (0, 1], top_k < 0).
std::unique_ptr<sequence> start(const std::shared_ptr<const model>& m, std::vector<int32_t> prompt, const sampling& s);

// Accessors.
std::shared_ptr<const tokenizer::tokenizer> model_tokenizer(const model& m);  ///< null when the folder has no tokenizer.json
std::optional<int32_t> eos_token(const model& m);                  ///< config.json's eos_token_id (the first one)
std::optional<int32_t> bos_token(const model& m);                  ///< config.json's bos_token_id
size_t vocab_size(const model& m);
size_t max_positions(const model& m);  ///< config.json's max_position_embeddings
std::string model_name(const model& m);  ///< the checkpoint folder's name
std::string model_architecture(const model& m);  ///< "deepseek_v2" or "deepseek_v3"
std::string model_device(const model& m);  ///< "cpu" or "cuda:N"
std::string model_describe(const model& m);  ///< the backend's line for the log: device, dtype, memory

/// The DeepSeek-V3 chat template: BOS, the system messages joined by blank lines, then
/// `<｜User｜>user` and `<｜Assistant｜>assistant<｜end▁of▁sentence｜>` turns, and `<｜Assistant｜>`
/// when add_generation_prompt. Throws std::invalid_argument for an unknown role.
std::string apply_chat_template_text(const std::vector<chat_message>& messages, bool add_generation_prompt);
/// The same, encoded with the model's tokenizer. Throws std::runtime_error when it has none.
std::vector<int32_t> apply_chat_template(const model& m, const std::vector<chat_message>& messages,
                                         bool add_generation_prompt);

/// Logits of every position of `tokens` run from an empty cache: [tokens.size() * vocab_size].
/// Runs through the scheduler (in chunks of at most max_batch_tokens, batched with whatever else runs).
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
