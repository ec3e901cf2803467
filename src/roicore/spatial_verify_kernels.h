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

constexpr double kTwoPi = 2.0 * 3.14159265358979323846;  // 2 * math.pi
constexpr double kInvTwoPi = 1.0 / kTwoPi;                 // 1 / (2 * math.pi), rounded once
// (q + kRoundMagic) - kRoundMagic is rint(q) (ties to even) for |q| < 2^51: the sum lands in
// [2^52, 2^53), where the doubles are the integers, and kRoundMagic is even.
constexpr double kRoundMagic = 6755399441055744.0;  // 1.5 * 2^52

// |wrap(w - theta)| < tol with d = w - theta, wrap(d) = d - rint(d * kInvTwoPi) * kTwoPi
// (|d * kInvTwoPi| < 2 wherever it is used). The scalar definition of every lane's test.
inline bool angle_close(double w, double theta, double tol) {
  const double d = w - theta;
  const double e = d - ((d * kInvTwoPi + kRoundMagic) - kRoundMagic) * kTwoPi;
  return e < tol && -tol < e;
}

// A similarity hypothesis h: p -> (a dx - b dy + xdh, b dx + a dy + ydh), dx = x - xh,
// dy = y - yh, the squared reprojection threshold, h's wrapped rotation wh (radians) and
// the angle tolerance tol (radians).
struct SimilarityTest {
  double a, b, xh, yh, xdh, ydh, thr2, wh, tol;
};

// The number of k < n with ex * ex + ey * ey < thr2 and angle_close(w[k], wh, tol), where
// (left to right) ex = a * (x[k] - xh) - b * (y[k] - yh) + xdh - xd[k],
// ey = b * (x[k] - xh) + a * (y[k] - yh) + ydh - yd[k], when it is >= need; otherwise any
// value < need (counting stops once need is out of reach).
using CountCloseFn = std::size_t (*)(const double* x, const double* y, const double* xd, const double* yd,
                                     const double* w, std::size_t n, const SimilarityTest& t, std::size_t need);

std::size_t count_close_generic(const double* x, const double* y, const double* xd, const double* yd,
                                const double* w, std::size_t n, const SimilarityTest& t, std::size_t need);
#if defined(ROICORE_X86)
std::size_t count_close_avx2(const double* x, const double* y, const double* xd, const double* yd, const double* w,
                             std::size_t n, const SimilarityTest& t, std::size_t need);
std::size_t count_close_avx512(const double* x, const double* y, const double* xd, const double* yd, const double* w,
                               std::size_t n, const SimilarityTest& t, std::size_t need);
#endif

// The variant for the active SIMD level (generic and popcnt share the portable one).
CountCloseFn active_count_close();

}  // namespace detail
}  // namespace roicore
