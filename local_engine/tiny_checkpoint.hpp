// Deterministic small checkpoints from a recipe, so tests and demos need no downloaded weights.
//
// A recipe is JSON: {"config": {...a transformers config.json...}, "seed": 1, "dtype": "float32" |
// "bfloat16" | "float16" | "float8_e4m3", "init_std": 0.02, "norm_std": 0.1, "bias_std": 0.05,
// "shards": 1, "tokenizer": false, "fp8_block_size": [128, 128], "dequantize_fp8": false}. With
// "tokenizer": true a byte-level tokenizer.json (one token per byte and DeepSeek's special tokens)
// is written too.
// "float8_e4m3" writes an FP8 checkpoint as DeepSeek-V3 publishes one: the projection matrices
// (attention, dense MLP, experts; not the embeddings, lm_head or router) as e4m3 with a float32
// `<name>_scale_inv` per block of fp8_block_size values (the block's largest magnitude maps to
// 448), everything else in bfloat16, and a quantization_config in config.json. "dequantize_fp8":
// true with another dtype writes the same model dequantised: the FP8 checkpoint's values exactly
// (the bfloat16 tensors as bfloat16 rounds them), stored in that dtype, without quantization_config.
// Each tensor is drawn from its own generator seeded by the seed and the tensor's name, so the
// values do not depend on the order of tensors or on the platform.
#pragma once

#include <string>

namespace tollgate::engine {

/// Writes config.json and model.safetensors (or N shards plus model.safetensors.index.json) into
/// out_dir, creating it. Throws std::runtime_error naming the recipe field or file on failure.
void make_tiny_checkpoint(const std::string& recipe_json_text, const std::string& out_dir);

/// A byte-level tokenizer.json whose every id below vocab_size is a token (bytes, DeepSeek's special
/// tokens, then merged runs of lowercase letters), for serving a random checkpoint of a real model's
/// shapes: whatever it samples decodes to text. Throws for vocab_size < 261.
std::string generated_tokenizer_json(int vocab_size);

}  // namespace tollgate::engine
