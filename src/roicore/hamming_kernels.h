// roicore — internal: the per-SIMD-level Hamming kernel table.
#pragma once

#include <cstddef>
#include <cstdint>

#include "roicore/cpu.h"

namespace roicore {
namespace detail {

struct HammingKernels {
  // out[j] = popcount((q ^ db_j) masked by tail on the last word), j < n.
  // q: words, db: n * words. `tail` masks the last word (all ones if nbits % 64 == 0).
  void (*dist_1xn)(const std::uint64_t* q, const std::uint64_t* db, std::size_t n,
                   std::size_t words, std::uint64_t tail, std::uint32_t* out);
  // Index of the first minimum of d[0..n), n >= 1.
  std::size_t (*argmin_u32)(const std::uint32_t* d, std::size_t n);
  // Running element-wise minimum with its argument: where d[j] < best[j],
  // best[j] = d[j] and who[j] = tag (strict: an earlier tag keeps ties).
  void (*min_update)(const std::uint32_t* d, std::size_t n, std::uint32_t tag, std::uint32_t* best,
                     std::uint32_t* who);
};

const HammingKernels& kernels_generic();
#if defined(ROICORE_X86)
const HammingKernels& kernels_popcnt();
const HammingKernels& kernels_avx2();
const HammingKernels& kernels_avx512();
#endif

// The table for the active SIMD level.
const HammingKernels& active_kernels();

}  // namespace detail
}  // namespace roicore
