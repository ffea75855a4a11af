// make_backend(): the backend that a device names; and the CUDA entry points of a build without CUDA.
#include <stdexcept>
#include <string>

#include "local_engine/cpu_forward.hpp"
#include "local_engine/forward_backend.hpp"

namespace tollgate::engine {

namespace {

// "cuda" or "cuda:N" with N a plain decimal number.
bool is_cuda_device(const std::string& d) {
  if (d == "cuda") return true;
  if (d.rfind("cuda:", 0) != 0 || d.size() == 5) return false;
  for (size_t i = 5; i < d.size(); ++i)
    if (d[i] < '0' || d[i] > '9') return false;
  return d.size() <= 8;
}

}  // namespace

std::unique_ptr<forward_backend> make_backend(const model_config& config, const std::string& checkpoint_dir,
                                              const backend_options& options) {
  if (options.device == "cpu") return make_cpu_backend(config, checkpoint_dir, options);
  if (is_cuda_device(options.device)) {
    if (!built_with_cuda())
      throw std::runtime_error("device '" + options.device + "': this build has no CUDA backend (built without nvcc)");
    return make_cuda_backend(config, checkpoint_dir, options);
  }
  throw std::runtime_error("device '" + options.device + "' is not known (cpu or cuda:N)");
}

#ifndef TOLLGATE_CUDA
bool built_with_cuda() { return false; }

std::unique_ptr<forward_backend> make_cuda_backend(const model_config&, const std::string&, const backend_options& options) {
  throw std::runtime_error("device '" + options.device + "': this build has no CUDA backend (built without nvcc)");
}
#endif

}  // namespace tollgate::engine
