#pragma once
// Sizing a std::string without filling it: for storage that a read writes next.

#include <cstddef>
#include <string>

namespace tollgate::protocol {

/// Sizes s to n bytes; bytes past its old size are left as they are, for the caller to write
/// (all of them) before they are read. std::string::resize would write zeros over them first: a
/// memset as long as the new part. Built on C++23's resize_and_overwrite where the library has it
/// (its source file is compiled as C++23 when the compiler takes that); elsewhere it zeroes.
void resize_unfilled(std::string& s, std::size_t n);

/// Whether resize_unfilled() leaves the bytes unfilled in this build.
bool resize_unfilled_skips_fill();

}  // namespace tollgate::protocol
