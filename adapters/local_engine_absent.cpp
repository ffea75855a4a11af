// load_engine() for a build without the local engine library.
#include <stdexcept>

#include "adapters/local_engine_backend.hpp"

namespace tollgate::adapters {

std::shared_ptr<const engine_port> load_engine(const config::backend_config&) {
  throw std::runtime_error("this tollgate was built without the local engine");
}

}  // namespace tollgate::adapters
