// roicore — internal: the per-SIMD-level inner loop of spatial verification.
//
// One implementation (spatial_verify_count_impl.h, GCC/Clang vector extensions) compiled
// in one translation unit per instruction set; each lane does the same IEEE-754 double
// operations in the same order as the scalar definition (no FMA: -ffp-contract=off), so
// every level returns the same counts.
#pragma once

#include <cstddef>

namespace roicore {
namespace detail {

// A similarity hypothesis h: p -> (a dx - b dy + xdh, b dx + a dy + ydh), dx = x - xh,
// dy = y - yh, and the squared reprojection threshold.
struct SimilarityTest {
  double a, b, xh, yh, xdh, ydh, thr2;
};

// The number of k < n with ex * ex + ey * ey < thr2, where (left to right)
// ex = a * (x[k] - xh) - b * (y[k] - yh) + xdh - xd[k], ey = b * (x[k] - xh) + a * (y[k] - yh) + ydh - yd[k],
// when it is >= need; otherwise any value < need (counting stops once need is out of reach).
using CountCloseFn = std::size_t (*)(const double* x, const double* y, const double* xd, const double* yd,
                                     std::size_t n, const SimilarityTest& t, std::size_t need);

std::size_t count_close_generic(const double* x, const double* y, const double* xd, const double* yd, std::size_t n,
                                const SimilarityTest& t, std::size_t need);
#if defined(ROICORE_X86)
std::size_t count_close_avx2(const double* x, const double* y, const double* xd, const double* yd, std::size_t n,
                             const SimilarityTest& t, std::size_t need);
std::size_t count_close_avx512(const double* x, const double* y, const double* xd, const double* yd, std::size_t n,
                               const SimilarityTest& t, std::size_t need);
#endif

// The variant for the active SIMD level (generic and popcnt share the portable one).
CountCloseFn active_count_close();

}  // namespace detail
}  // namespace roicore
