// The tensors a DeepSeek-V2/V3 checkpoint holds, by name and shape, in the layout published
// checkpoints use (one tensor per expert projection). The loader checks a folder against it and
// the tiny-checkpoint generator writes it.
#pragma once

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

}  // namespace tollgate::engine
