// Compiled alone as C++23 when the compiler takes it (protocol/CMakeLists.txt); only this
// function uses what C++23 adds. std::string is the same type in every mode.
#include "protocol/unfilled_string.hpp"

namespace tollgate::protocol {

void resize_unfilled(std::string& s, std::size_t n) {
#if defined(__cpp_lib_string_resize_and_overwrite)
  s.resize_and_overwrite(n, [](char*, std::size_t size) { return size; });
#else
  s.resize(n);
#endif
}

bool resize_unfilled_skips_fill() {
#if defined(__cpp_lib_string_resize_and_overwrite)
  return true;
#else
  return false;
#endif
}

}  // namespace tollgate::protocol
