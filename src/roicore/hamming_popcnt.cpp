// x86-64-v2 kernels: scalar loops with the hardware POPCNT instruction (-mpopcnt).
#include "roicore/hamming_scalar_impl.h"

namespace roicore {
namespace detail {

const HammingKernels& kernels_popcnt() {
  static const HammingKernels k{&dist_1xn_scalar<HwPop>, &argmin_scalar, &min_update_scalar, nullptr,
                                &accumulate_level<HwPop, &dist_1xn_scalar<HwPop>>};
  return k;
}

}  // namespace detail
}  // namespace roicore
