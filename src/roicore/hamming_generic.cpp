// Portable kernels: SWAR popcount, no instruction-set assumptions.
#include "roicore/hamming_scalar_impl.h"

namespace roicore {
namespace detail {
namespace {

struct SwarPop {
  static inline unsigned count(std::uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return static_cast<unsigned>((x * 0x0101010101010101ULL) >> 56);
  }
};

}  // namespace

const HammingKernels& kernels_generic() {
  static const HammingKernels k{&dist_1xn_scalar<SwarPop>, &argmin_scalar, &min_update_scalar, nullptr,
                                &accumulate_level<SwarPop, &dist_1xn_scalar<SwarPop>>};
  return k;
}

}  // namespace detail
}  // namespace roicore
