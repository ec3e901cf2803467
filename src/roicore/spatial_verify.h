// roicore — batched fast spatial verification (Philbin et al., CVPR 2007): tentative
// correspondences by visual word, one similarity hypothesis per correspondence, then local
// optimisation to an affine transform.
#pragma once

#include <cstddef>
#include <cstdint>

namespace roicore {

// The query image: nq unquantised features.
struct SvQuery {
  const std::uint32_t* words;  // nq visual words, any order
  const float* xy;             // nq * 2: (x, y) in pixels
  const float* sizes;          // nq keypoint diameters in pixels, > 0 and finite
  const float* angles;         // nq orientations in degrees (OpenCV SIFT), finite
  std::size_t n;               // nq < 2**31
};

// Quantised features of all indexed images; image g owns rows [offsets[g], offsets[g + 1]),
// sorted by word ascending (checked for every visited image).
struct SvDatabase {
  const std::uint32_t* words;   // n
  const std::uint16_t* xy;      // n * 2: x = xq / 65535 * L, y = yq / 65535 * L
  const std::uint8_t* scales;   // n: size = 2^(sq / 16 - 2)
  const std::uint8_t* angles;   // n: degrees = aq * 360 / 256
  std::size_t n;
  const std::int64_t* offsets;  // n_images + 1: first 0, non-decreasing, last n
  const float* sides;           // n_images: longest side L in pixels, > 0 and finite (visited rows)
  std::size_t n_images;
};

struct SvParams {
  std::size_t max_per_word = 2;           // P >= 1
  std::size_t max_correspondences = 1000; // >= 3
  double inlier_threshold = 0.03;         // > 0, finite, times L
  double scale_tolerance = 2.0;           // > 1, finite
  double angle_tolerance = 30.0;          // degrees, 0 < angle_tolerance <= 180 (NaN refused)
  std::size_t lo_iterations = 3;          // >= 0
};

// Caller-allocated outputs, R rows each.
struct SvOutput {
  std::int32_t* inliers;          // R
  double* affine;                 // R * 6 (2 x 3, row-major)
  float* query_boxes;             // R * 4: (x1, y1, x2, y2)
  float* db_boxes;                // R * 4
  std::int32_t* correspondences;  // R: M, the tentative correspondences of step 1
};

// For each r = rows[i] (i < R, each in [0, n_images), repeats allowed), independently:
//  1. Correspondences: the query features sorted by (word, index) are merge-joined with the
//     image's words; for each common word the first min(cq, P) query features (in that
//     order) are paired with the first min(cd, P) image features (stored order), query-major,
//     appended until M reaches max_correspondences (correspondences[i] = M, whatever follows).
//  2. M < 3: inliers 0, affine and both boxes NaN (likewise when no correspondence is an
//     inlier of its own hypothesis, i.e. thr2 below underflows to 0).
//  3. With, per correspondence j (all in double precision):
//       xq, yq = query xy;  xd = xq_d / 65535.0 * L, yd likewise (L = sides[r]);
//       s_j = pow(2.0, sq / 16.0 - 2.0) / size_q;  ls_j = log(s_j);
//       t_j = (aq * 360.0 / 256.0 - angle_q) * (pi / 180.0);  a_j = s_j * cos(t_j), b_j = s_j * sin(t_j);
//       w_j = fmod(t_j, 2pi) (exact, |w_j| < 2pi), with 2pi = 2.0 * pi and pi = math.pi;
//     the angle test of j against a rotation theta (radians):
//       d = w_j - theta;  e = d - rint(d * (1.0 / 2pi)) * 2pi  (rint: to nearest, ties to
//       even; |d * (1.0 / 2pi)| < 2 here, so this wraps d into [-pi, pi] up to rounding);
//       passes when |e| < tol, tol = angle_tolerance * (pi / 180.0)
//     (tol = pi, i.e. 180 degrees, refuses only e = +-pi and rounding at the boundary: no
//     orientation test in practice);
//     hypothesis h maps p to (a_h * dx - b_h * dy + xd_h, b_h * dx + a_h * dy + yd_h) with
//     dx = x - xq_h, dy = y - yq_h; j is an inlier of h when ex * ex + ey * ey < thr2
//     (ex = mapped x - xd_j, ey likewise; thr2 = (inlier_threshold * L)^2) and
//     ls_j - ls_h < log(scale_tolerance) and ls_h - ls_j < log(scale_tolerance) and j
//     passes the angle test against theta = w_h.
//     The best h has the most inliers (ties: the smallest h).
//  4. Local optimisation, at most lo_iterations times while the inlier set has >= 3
//     correspondences: least-squares affine A (query -> image pixels; points centred on
//     their means, sums accumulated in ascending correspondence order); stop when
//     det <= 1e-6 * trace^2 of the 2 x 2 normal matrix (points (nearly) collinear or
//     coincident) or A is not finite. A's closest similarity:
//       s_A = sqrt(|A00 * A11 - A01 * A10|); stop when s_A is 0 or not finite;
//       ls_A = log(s_A);  theta_A = atan2(A10 - A01, A00 + A11).
//     Inliers of A: ex * ex + ey * ey < thr2 with ex = A00 * x + A01 * y + A02 - xd (ey
//     likewise) and ls_j - ls_A < log(scale_tolerance) and ls_A - ls_j < log(scale_tolerance)
//     and j passes the angle test against theta = theta_A. More inliers: accept, continue;
//     as many: accept, stop; fewer: stop, keep the previous set and model.
//  5. inliers = number of distinct query features in the final inlier set; affine = its
//     model (the similarity [[a, -b, xd - (a xq - b yq)], [b, a, yd - (b xq + a yq)]] of h
//     when LO accepted nothing); boxes = (min x, min y, max x, max y) of the inlier
//     query points and of the inlier image points (as float32).
// Everything is validated before any work (InvalidArgument naming the first bad value, in
// this order: parameters, offsets, rows, sides and word order of visited images, query).
// Results do not depend on `threads` (<= 0: the default) nor on the SIMD level: the
// hypotheses are visited by increasing ls with the scale window as a sliding range, each
// hypothesis' count stops once it cannot beat the best so far (the same rule as above),
// and the inner loop (spatial_verify_kernels.h) does the same double operations per lane.
void spatial_verify(const SvQuery& query, const SvDatabase& db, const std::int64_t* rows, std::size_t R,
                    const SvParams& params, const SvOutput& out, int threads);

}  // namespace roicore
