// count_close with 512-bit vectors (-mavx512f). Only called at the avx512 level.
#define ROICORE_SV_VECTOR_BYTES 64
#include "roicore/spatial_verify_count_impl.h"

namespace roicore {
namespace detail {

std::size_t count_close_avx512(const double* x, const double* y, const double* xd, const double* yd, const double* w,
                               std::size_t n, const SimilarityTest& t, std::size_t need) {
  return count_close_impl(x, y, xd, yd, w, n, t, need);
}

}  // namespace detail
}  // namespace roicore
