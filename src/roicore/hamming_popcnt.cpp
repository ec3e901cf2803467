// x86-64-v2 kernels: scalar loops with the hardware POPCNT instruction (-mpopcnt).
#include <nmmintrin.h>

#include "roicore/hamming_scalar_impl.h"

namespace roicore {
namespace detail {
namespace {

struct HwPop {
  static inline unsigned count(std::uint64_t x) { return static_cast<unsigned>(_mm_popcnt_u64(x)); }
};

}  // namespace

const HammingKernels& kernels_popcnt() {
  static const HammingKernels k{&dist_1xn_scalar<HwPop>, &argmin_scalar, &min_update_scalar, nullptr};
  return k;
}

}  // namespace detail
}  // namespace roicore
