// Helpers shared by the engine tests: temporary folders and tiny checkpoints made from recipes.
#pragma once

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>

#include <unistd.h>

#include "local_engine/engine.hpp"
#include "local_engine/tiny_checkpoint.hpp"

namespace tollgate::engine::test {

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void write_text(const std::filesystem::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

/// A fresh folder under the system's temporary directory, removed with everything in it.
class temp_dir {
 public:
  temp_dir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("tollgate-engine-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

inline std::filesystem::path recipe_path(const std::string& name) {
  return std::filesystem::path(TOLLGATE_SOURCE_DIR) / "tests/engine/recipes" / (name + ".json");
}

/// Writes the checkpoint of tests/engine/recipes/<name>.json into dir.
inline void make_recipe_checkpoint(const std::string& name, const std::filesystem::path& dir) {
  make_tiny_checkpoint(read_text(recipe_path(name)), dir.string());
}

/// The backend the golden and scheduler tests load: TOLLGATE_TEST_DEVICE (default cpu) and
/// TOLLGATE_TEST_DTYPE (default float32, the exactness mode), so that the same tests run on a GPU.
inline backend_options test_backend_options() {
  backend_options o;
  if (const char* d = std::getenv("TOLLGATE_TEST_DEVICE"); d != nullptr && *d != 0) o.device = d;
  o.dtype = "float32";
  if (const char* t = std::getenv("TOLLGATE_TEST_DTYPE"); t != nullptr && *t != 0) o.dtype = t;
  return o;
}

}  // namespace tollgate::engine::test
