// roicore — common types and error classes. No Python in this library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace roicore {

// A caller passed an argument that violates a documented precondition
// (wrong size, out-of-range value, NaN). Bindings map it to ValueError.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A file is not a valid roiret file: wrong magic, newer version, truncated, checksum
// mismatch, inconsistent contents. Bindings map it to roiret.errors.IndexFormatError.
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An operating-system call failed (open, write, rename, ...). Carries errno and the path.
// Bindings map it to OSError with errno and filename set.
class IoError : public std::runtime_error {
 public:
  IoError(int err, std::string path, const std::string& what)
      : std::runtime_error(what), errno_(err), path_(std::move(path)) {}
  int error_number() const noexcept { return errno_; }
  const std::string& path() const noexcept { return path_; }

 private:
  int errno_;
  std::string path_;
};

// Number of 64-bit words that hold `nbits` bits.
inline std::size_t words_for_bits(std::size_t nbits) { return (nbits + 63) / 64; }

// Mask of the significant bits of the last word of an `nbits`-bit code
// (all ones when nbits is a multiple of 64).
inline std::uint64_t tail_mask_for_bits(std::size_t nbits) {
  const unsigned r = static_cast<unsigned>(nbits % 64);
  return r == 0 ? ~std::uint64_t{0} : ((std::uint64_t{1} << r) - 1);
}

}  // namespace roicore
