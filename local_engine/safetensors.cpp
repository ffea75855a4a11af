#include "local_engine/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace tollgate::engine {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw std::runtime_error(where + ": " + what);
}

dtype parse_dtype(const std::string& s) {
  if (s == "F32") return dtype::f32;
  if (s == "F16") return dtype::f16;
  if (s == "BF16") return dtype::bf16;
  if (s == "F8_E4M3") return dtype::f8_e4m3;
  return dtype::other;
}

size_t dtype_size(const std::string& s) {
  if (s == "F64" || s == "I64" || s == "U64") return 8;
  if (s == "F32" || s == "I32" || s == "U32") return 4;
  if (s == "F16" || s == "BF16" || s == "I16" || s == "U16") return 2;
  if (s == "I8" || s == "U8" || s == "BOOL" || s == "F8_E4M3" || s == "F8_E5M2") return 1;
  return 0;
}

const char* dtype_name(dtype t) {
  switch (t) {
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
    case dtype::f8_e4m3: return "F8_E4M3";
    default: return "?";
  }
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t f32_tensor::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float bf16_to_f32(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign << 31;
    } else {  // subnormal: normalise
      int e = -1;
      uint32_t m = mant;
      do {
        ++e;
        m <<= 1;
      } while ((m & 0x400u) == 0);
      u = (sign << 31) | static_cast<uint32_t>(127 - 15 - e) << 23 | (m & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    u = (sign << 31) | 0x7f800000u | (mant << 13);
  } else {
    u = (sign << 31) | (exp + 112) << 23 | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to infinity
  if (a < 0x38800000u) {  // subnormal or zero in half precision
    const float af = std::fabs(f);
    const float scaled = af * 16777216.0f;  // 2^24: units of the smallest subnormal
    const auto r = static_cast<uint32_t>(std::nearbyint(scaled));
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t v = a - 0x38000000u;  // rebias exponent 127 -> 15
  v += 0x0fffu + ((v >> 13) & 1u);
  return static_cast<uint16_t>(sign | (v >> 13));
}

float e4m3_to_f32(uint8_t v) {
  const int sign = v >> 7, exp = (v >> 3) & 0xf, mant = v & 0x7;
  float f;
  if (exp == 0xf && mant == 0x7) f = std::numeric_limits<float>::quiet_NaN();
  else if (exp == 0) f = std::ldexp(static_cast<float>(mant), -9);  // subnormal: mant/8 * 2^-6
  else f = std::ldexp(static_cast<float>(8 + mant), exp - 10);     // (1 + mant/8) * 2^(exp-7)
  return sign ? -f : f;
}

uint8_t f32_to_e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  // The 127 finite magnitudes in order: the nearest one, ties to the even code (its last mantissa
  // bit clear), which is round-to-nearest-even; beyond 448 it saturates.
  static const auto table = [] {
    std::vector<float> t(127);
    for (int i = 0; i < 127; ++i) t[static_cast<size_t>(i)] = e4m3_to_f32(static_cast<uint8_t>(i));
    return t;
  }();
  if (a >= table[126]) return static_cast<uint8_t>(sign | 126);
  const auto hi = static_cast<int>(std::upper_bound(table.begin(), table.end(), a) - table.begin());  // table[hi] > a
  const int lo = hi - 1;                                                                               // table[lo] <= a
  const float dl = a - table[static_cast<size_t>(lo)], dh = table[static_cast<size_t>(hi)] - a;
  const int code = dl < dh ? lo : dh < dl ? hi : (lo % 2 == 0 ? lo : hi);
  return static_cast<uint8_t>(sign | code);
}

std::shared_ptr<const safetensors_file> safetensors_file::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail(path, std::string("cannot stat: ") + std::strerror(e));
  }
  const auto size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail(path, "not a safetensors file: shorter than its 8-byte header length");
  }
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (m == MAP_FAILED) fail(path, std::string("cannot map: ") + std::strerror(map_errno));

  std::shared_ptr<safetensors_file> f(new safetensors_file());
  f->path_ = path;
  f->map_ = static_cast<const unsigned char*>(m);
  f->size_ = size;

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | f->map_[i];
  if (header_len == 0 || header_len > size - 8 || header_len > (100u << 20))
    fail(path, "bad header length " + std::to_string(header_len) + " for a file of " + std::to_string(size) + " bytes");
  f->data_start_ = 8 + header_len;
  const size_t data_size = size - f->data_start_;

  json h;
  try {
    h = json::parse(reinterpret_cast<const char*>(f->map_ + 8), reinterpret_cast<const char*>(f->map_ + 8 + header_len));
  } catch (const json::exception& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!h.is_object()) fail(path, "header is not a JSON object");
  for (const auto& [name, v] : h.items()) {
    if (name == "__metadata__") continue;
    const std::string where = path + ": tensor '" + name + "'";
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      throw std::runtime_error(where + " needs dtype, shape and data_offsets");
    const auto& dt = v.at("dtype");
    const auto& sh = v.at("shape");
    const auto& off = v.at("data_offsets");
    if (!dt.is_string() || !sh.is_array() || !off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      throw std::runtime_error(where + " has a malformed dtype, shape or data_offsets");
    entry e;
    e.dtype_name = dt.get<std::string>();
    e.type = parse_dtype(e.dtype_name);
    uint64_t numel = 1;
    for (const auto& d : sh) {
      if (!d.is_number_unsigned()) throw std::runtime_error(where + " has a negative or non-integer dimension");
      const auto x = d.get<uint64_t>();
      if (x != 0 && numel > std::numeric_limits<uint64_t>::max() / 8 / x)
        throw std::runtime_error(where + " is too large");
      numel *= x;
      e.shape.push_back(static_cast<int64_t>(x));
    }
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.begin > e.end || e.end > data_size)
      throw std::runtime_error(where + " has data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                               "] outside the " + std::to_string(data_size) + "-byte data section");
    const size_t es = dtype_size(e.dtype_name);
    if (es == 0) throw std::runtime_error(where + " has an unknown dtype '" + e.dtype_name + "'");
    if (numel * es != e.end - e.begin)
      throw std::runtime_error(where + " holds " + std::to_string(e.end - e.begin) + " bytes, but " + e.dtype_name +
                               " " + shape_string(e.shape) + " needs " + std::to_string(numel * es));
    f->entries_.emplace(name, std::move(e));
  }
  return f;
}

safetensors_file::~safetensors_file() {
  if (map_) ::munmap(const_cast<unsigned char*>(map_), size_);
}

raw_tensor safetensors_file::raw(const std::string& name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) fail(path_, "no tensor '" + name + "'");
  const entry& e = it->second;
  return raw_tensor{e.type, e.shape, map_ + data_start_ + e.begin, static_cast<size_t>(e.end - e.begin), shared_from_this()};
}

f32_tensor safetensors_file::read(const std::string& name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) fail(path_, "no tensor '" + name + "'");
  const entry& e = it->second;
  f32_tensor t;
  t.shape = e.shape;
  const unsigned char* src = map_ + data_start_ + e.begin;
  const size_t n = static_cast<size_t>(t.numel());
  if (e.type == dtype::f32 && reinterpret_cast<uintptr_t>(src) % alignof(float) == 0) {
    t.data = reinterpret_cast<const float*>(src);
    t.owner = shared_from_this();
    return t;
  }
  auto buf = std::make_shared<std::vector<float>>(n);
  float* out = buf->data();
  switch (e.type) {
    case dtype::f32:
      std::memcpy(out, src, n * 4);
      break;
    case dtype::bf16:
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(static_cast<uint16_t>(src[2 * i] | src[2 * i + 1] << 8));
      break;
    case dtype::f16:
      for (size_t i = 0; i < n; ++i) out[i] = f16_to_f32(static_cast<uint16_t>(src[2 * i] | src[2 * i + 1] << 8));
      break;
    case dtype::f8_e4m3:
      for (size_t i = 0; i < n; ++i) out[i] = e4m3_to_f32(src[i]);
      break;
    default:
      fail(path_, "tensor '" + name + "' has dtype " + e.dtype_name + "; only F32, F16, BF16 and F8_E4M3 are read");
  }
  t.data = out;
  t.owner = std::shared_ptr<const void>(buf, buf.get());
  return t;
}

tensor_store tensor_store::open_dir(const std::string& dir) {
  tensor_store s;
  s.dir_ = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw std::runtime_error(dir + ": not a checkpoint folder");
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::map<std::string, std::shared_ptr<const safetensors_file>> files;
  auto file = [&](const std::string& fname) {
    auto& f = files[fname];
    if (!f) f = safetensors_file::open((fs::path(dir) / fname).string());
    return f;
  };
  if (fs::exists(index, ec)) {
    json j;
    try {
      j = json::parse(read_text_file(index.string()));
    } catch (const json::exception& e) {
      fail(index.string(), std::string("not valid JSON: ") + e.what());
    }
    if (!j.is_object() || !j.contains("weight_map") || !j.at("weight_map").is_object())
      fail(index.string(), "needs a 'weight_map' object");
    for (const auto& [name, fv] : j.at("weight_map").items()) {
      if (!fv.is_string()) fail(index.string(), "weight_map entry '" + name + "' is not a file name");
      const auto fname = fv.get<std::string>();
      if (fname.find('/') != std::string::npos || fname.find("..") != std::string::npos)
        fail(index.string(), "weight_map entry '" + name + "' names a file outside the folder: " + fname);
      auto f = file(fname);
      if (!f->entries().count(name)) fail(f->path(), "has no tensor '" + name + "' (the index lists it there)");
      s.where_[name] = f;
    }
  } else {
    std::vector<std::string> names;
    for (const auto& de : fs::directory_iterator(dir, ec))
      if (de.path().extension() == ".safetensors") names.push_back(de.path().filename().string());
    std::sort(names.begin(), names.end());
    if (names.empty()) throw std::runtime_error(dir + ": no *.safetensors files and no model.safetensors.index.json");
    for (const auto& n : names) {
      auto f = file(n);
      for (const auto& [tn, e] : f->entries()) {
        if (s.where_.count(tn)) fail(f->path(), "tensor '" + tn + "' is also in " + s.where_[tn]->path());
        s.where_[tn] = f;
      }
    }
  }
  return s;
}

const std::vector<int64_t>& tensor_store::shape(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) throw std::runtime_error(dir_ + ": checkpoint has no tensor '" + name + "'");
  return it->second->entries().at(name).shape;
}

f32_tensor tensor_store::read(const std::string& name, const std::vector<int64_t>& expected) const {
  const auto& got = shape(name);
  if (got != expected)
    throw std::runtime_error(dir_ + ": tensor '" + name + "' has shape " + shape_string(got) + ", expected " +
                             shape_string(expected));
  if (!is_fp8(name)) return where_.at(name)->read(name);
  // An FP8 matrix: dequantised here with its block scales.
  const std::string scale_name = name + "_scale_inv";
  if (expected.size() != 2)
    throw std::runtime_error(dir_ + ": tensor '" + name + "' is F8_E4M3 with shape " + shape_string(got) +
                             "; only FP8 matrices (two dimensions) are read");
  if (fp8_rows_ < 1 || fp8_cols_ < 1)
    throw std::runtime_error(dir_ + ": tensor '" + name +
                             "' is F8_E4M3, but config.json has no quantization_config with a weight_block_size");
  if (!contains(scale_name)) throw std::runtime_error(dir_ + ": tensor '" + name + "' is F8_E4M3 but '" + scale_name + "' is missing");
  const int64_t R = expected[0], C = expected[1];
  const int64_t sr = (R + fp8_rows_ - 1) / fp8_rows_, sc = (C + fp8_cols_ - 1) / fp8_cols_;
  if (shape(scale_name) != std::vector<int64_t>{sr, sc})
    throw std::runtime_error(dir_ + ": tensor '" + scale_name + "' has shape " + shape_string(shape(scale_name)) + ", expected " +
                             shape_string({sr, sc}) + " (blocks of " + std::to_string(fp8_rows_) + " x " +
                             std::to_string(fp8_cols_) + ")");
  const f32_tensor q = where_.at(name)->read(name);
  const f32_tensor s = where_.at(scale_name)->read(scale_name);
  auto buf = std::make_shared<std::vector<float>>(static_cast<size_t>(R * C));
  for (int64_t r = 0; r < R; ++r) {
    const float* srow = s.data + (r / fp8_rows_) * sc;
    const float* qrow = q.data + r * C;
    float* out = buf->data() + r * C;
    for (int64_t c = 0; c < C; ++c) out[c] = qrow[c] * srow[c / fp8_cols_];
  }
  f32_tensor t;
  t.shape = expected;
  t.data = buf->data();
  t.owner = std::shared_ptr<const void>(buf, buf->data());
  return t;
}

bool tensor_store::is_fp8(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) throw std::runtime_error(dir_ + ": checkpoint has no tensor '" + name + "'");
  return it->second->entries().at(name).type == dtype::f8_e4m3;
}

raw_tensor tensor_store::raw(const std::string& name, const std::vector<int64_t>& expected) const {
  const auto& got = shape(name);
  if (got != expected)
    throw std::runtime_error(dir_ + ": tensor '" + name + "' has shape " + shape_string(got) + ", expected " +
                             shape_string(expected));
  return where_.at(name)->raw(name);
}

void write_safetensors(const std::string& path, const std::vector<tensor_to_write>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    int64_t n = 1;
    for (auto d : t.shape) n *= d;
    if (n != static_cast<int64_t>(t.values.size()))
      throw std::runtime_error(path + ": tensor '" + t.name + "' has " + std::to_string(t.values.size()) +
                               " values for shape " + shape_string(t.shape));
    const uint64_t bytes = static_cast<uint64_t>(n) * (t.type == dtype::f32 ? 4 : t.type == dtype::f8_e4m3 ? 1 : 2);
    h[t.name] = {{"dtype", dtype_name(t.type)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string header = h.dump();
  while (header.size() % 8 != 0) header.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error(path + ": cannot create");
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(static_cast<uint64_t>(header.size()) >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  std::vector<unsigned char> buf;
  for (const auto& t : tensors) {
    const size_t es = t.type == dtype::f32 ? 4 : t.type == dtype::f8_e4m3 ? 1 : 2;
    buf.resize(t.values.size() * es);
    for (size_t i = 0; i < t.values.size(); ++i) {
      if (t.type == dtype::f8_e4m3) {
        buf[i] = f32_to_e4m3(t.values[i]);
      } else if (t.type == dtype::f32) {
        std::memcpy(&buf[4 * i], &t.values[i], 4);  // little-endian hosts only, as the format is
      } else {
        const uint16_t v = t.type == dtype::bf16 ? f32_to_bf16(t.values[i]) : f32_to_f16(t.values[i]);
        buf[2 * i] = static_cast<unsigned char>(v & 0xff);
        buf[2 * i + 1] = static_cast<unsigned char>(v >> 8);
      }
    }
    out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
  }
  if (!out) throw std::runtime_error(path + ": write failed");
}

}  // namespace tollgate::engine
