// The CPU reference forward in fp32: MLA attention over a paged latent KV pool read through block
// tables, dense MLP and
// DeepSeekMoE layers, as transformers' DeepSeek-V2/V3 modeling computes them.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "local_engine/forward_backend.hpp"
#include "local_engine/safetensors.hpp"

namespace tollgate::engine {

/// Gives the fp32 tensor of a name with the given shape, or throws naming it.
using tensor_source = std::function<f32_tensor(const std::string& name, const std::vector<int64_t>& shape)>;
/// Whether the source holds a tensor (used for the optional fused-expert layout).
using tensor_probe = std::function<bool(const std::string& name)>;

/// The CPU backend over tensors from any source (the checkpoint, or random weights for a bench).
std::unique_ptr<forward_backend> make_cpu_backend(const model_config& config, const tensor_source& source,
                                                  const tensor_probe& probe, const backend_options& options = {});

/// Expert routing of one token, exposed for tests: indices and weights of the chosen experts, in
/// the order they were chosen (highest selection score first).
struct routing {
  std::vector<int> experts;
  std::vector<float> weights;
};
routing route_token(const model_config& c, const float* router_logits, const float* score_correction_bias);

}  // namespace tollgate::engine
