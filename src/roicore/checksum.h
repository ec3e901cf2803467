// roicore — CRC-32 (the zlib / ISO-HDLC polynomial, reflected 0xEDB88320), so that a
// file's sections can be checked independently with Python's zlib.crc32.
#pragma once

#include <cstddef>
#include <cstdint>

namespace roicore {

// Continue a CRC-32 over `len` bytes at `data`; start with crc = 0.
std::uint32_t crc32_update(std::uint32_t crc, const void* data, std::size_t len);

}  // namespace roicore
