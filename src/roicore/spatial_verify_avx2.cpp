// count_close with 256-bit vectors (-mavx2). Only called after cpuid reports AVX2.
#define ROICORE_SV_VECTOR_BYTES 32
#include "roicore/spatial_verify_count_impl.h"

namespace roicore {
namespace detail {

std::size_t count_close_avx2(const double* x, const double* y, const double* xd, const double* yd, const double* w,
                             std::size_t n, const SimilarityTest& t, std::size_t need) {
  return count_close_impl(x, y, xd, yd, w, n, t, need);
}

}  // namespace detail
}  // namespace roicore
