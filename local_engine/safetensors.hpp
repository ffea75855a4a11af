// Safetensors files: memory-mapped reading (one file, a folder of shards, or an index) with
// conversion of bf16 / fp16 / fp32 / fp8 (e4m3, with block scales) to fp32, and writing (for generated checkpoints and tests).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace tollgate::engine {

enum class dtype { f32, f16, bf16, f8_e4m3, other };

/// A tensor in fp32: either a view into a mapped file (fp32 on disk, aligned) or its own copy.
/// The view keeps its file mapped while any tensor from it lives.
struct f32_tensor {
  std::vector<int64_t> shape;
  const float* data = nullptr;
  std::shared_ptr<const void> owner;

  int64_t numel() const;
  std::span<const float> span() const { return {data, static_cast<size_t>(numel())}; }
};

/// A tensor's bytes as stored, a view into its mapped file (kept mapped while the view lives): for
/// copying a tensor whose stored dtype is the one wanted without converting it.
struct raw_tensor {
  dtype type = dtype::other;
  std::vector<int64_t> shape;
  const unsigned char* data = nullptr;
  size_t bytes = 0;
  std::shared_ptr<const void> owner;
};

/// One mapped .safetensors file. Throws std::runtime_error naming the file for a bad header.
class safetensors_file : public std::enable_shared_from_this<safetensors_file> {
 public:
  struct entry {
    dtype type = dtype::other;
    std::string dtype_name;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  ///< byte range inside the data section
  };

  static std::shared_ptr<const safetensors_file> open(const std::string& path);
  ~safetensors_file();

  const std::string& path() const { return path_; }
  const std::map<std::string, entry>& entries() const { return entries_; }
  /// The tensor converted to fp32 (a view when it is fp32 on disk; F8_E4M3 values as they are, without
  /// their scales). Throws for an unknown name or a dtype other than F32, F16, BF16 and F8_E4M3.
  f32_tensor read(const std::string& name) const;
  /// The tensor's stored bytes; throws for an unknown name.
  raw_tensor raw(const std::string& name) const;

 private:
  safetensors_file() = default;
  std::string path_;
  const unsigned char* map_ = nullptr;
  size_t size_ = 0;
  size_t data_start_ = 0;
  std::map<std::string, entry> entries_;
};

/// The tensors of a checkpoint folder: `model.safetensors.index.json` when present, else every
/// `*.safetensors` file in it.
class tensor_store {
 public:
  static tensor_store open_dir(const std::string& dir);

  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  /// The block of an FP8 checkpoint's scales (config.json's quantization_config.weight_block_size);
  /// 0 when it has none.
  void set_fp8_block(int rows, int cols) {
    fp8_rows_ = rows;
    fp8_cols_ = cols;
  }
  /// Whether a tensor is stored as F8_E4M3. Throws naming it when absent.
  bool is_fp8(const std::string& name) const;
  /// Shape of a tensor; throws naming it when absent.
  const std::vector<int64_t>& shape(const std::string& name) const;
  /// The tensor in fp32, checked against `expected` shape; throws naming the tensor on a mismatch.
  /// An F8_E4M3 matrix is dequantised with its `<name>_scale_inv` (one float per block of the
  /// fp8 block, as DeepSeek-V3's checkpoints store them): value * scale_inv[row / br][col / bc].
  f32_tensor read(const std::string& name, const std::vector<int64_t>& expected) const;
  /// The tensor's stored bytes, checked against `expected` shape like read().
  raw_tensor raw(const std::string& name, const std::vector<int64_t>& expected) const;
  size_t size() const { return where_.size(); }

 private:
  std::string dir_;
  std::map<std::string, std::shared_ptr<const safetensors_file>> where_;
  int fp8_rows_ = 0, fp8_cols_ = 0;
};

/// A tensor to write: values in fp32, stored as `type` (f32, f16, bf16 or f8_e4m3, rounded to nearest
/// even; e4m3 saturates at +-448).
struct tensor_to_write {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
  dtype type = dtype::f32;
};
/// Writes a .safetensors file (header padded to 8 bytes). Throws std::runtime_error on I/O failure.
void write_safetensors(const std::string& path, const std::vector<tensor_to_write>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);
/// e4m3 as float8_e4m3fn: no infinities, 0x7f / 0xff are NaN, largest finite 448.
uint8_t f32_to_e4m3(float f);
float e4m3_to_f32(uint8_t v);
std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace tollgate::engine
