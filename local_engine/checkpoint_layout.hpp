// The tensors a DeepSeek-V2/V3 checkpoint holds, by name and shape, in the layout published
// checkpoints use (one tensor per expert projection). The loader checks a folder against it and
// the tiny-checkpoint generator writes it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "local_engine/model_config.hpp"

namespace tollgate::engine {

struct tensor_spec {
  enum class kind { matrix, norm, bias, score_correction };
  std::string name;
  std::vector<int64_t> shape;
  kind role = kind::matrix;
};

std::vector<tensor_spec> checkpoint_tensors(const model_config& c);

/// Name prefix of layer l: "model.layers.<l>.".
std::string layer_prefix(int l);

/// Bytes the weights of `c` take on a device that holds every matrix at `matrix_value_bytes` a
/// value and the norms, biases and score corrections in float32 (a tied lm_head is not counted
/// twice). With fp8_expert_block_cols > 0 the routed experts are counted as kept in FP8: a byte a
/// value and a float scale a row for each block of that many columns.
std::uint64_t device_weight_bytes(const model_config& c, std::size_t matrix_value_bytes, int fp8_expert_block_cols = 0);

/// Throws std::runtime_error naming the bytes needed and available when `needed` bytes of weights
/// do not fit in `available` bytes of free memory on `device` (checked before anything is uploaded).
void check_weights_fit(std::uint64_t needed, std::uint64_t available, const std::string& device);

}  // namespace tollgate::engine
