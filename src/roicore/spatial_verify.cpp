#include "roicore/spatial_verify.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "roicore/common.h"
#include "roicore/cpu.h"
#include "roicore/hamming.h"  // validate_offsets
#include "roicore/parallel.h"
#include "roicore/spatial_verify_kernels.h"

#define ROICORE_SV_VECTOR_BYTES 16
#include "roicore/spatial_verify_count_impl.h"

namespace roicore {

namespace detail {

std::size_t count_close_generic(const double* x, const double* y, const double* xd, const double* yd,
                                const double* w, std::size_t n, const SimilarityTest& t, std::size_t need) {
  return count_close_impl(x, y, xd, yd, w, n, t, need);
}

CountCloseFn active_count_close() {
#if defined(ROICORE_X86)
  switch (active_simd_level()) {
    case SimdLevel::kAvx512:
      return count_close_avx512;
    case SimdLevel::kAvx2:
      return count_close_avx2;
    default:
      break;
  }
#endif
  return count_close_generic;
}

}  // namespace detail

namespace {

constexpr double kDegToRad = 3.14159265358979323846 / 180.0;  // the double of Python's math.radians
constexpr double kMinRcond = 1e-6;  // det / trace^2 of the normal matrix below this: no affine fit

// size of a quantised scale: 2^(s / 16 - 2), s = 0..255
const std::array<double, 256>& db_sizes() {
  static const std::array<double, 256> table = [] {
    std::array<double, 256> t{};
    for (int s = 0; s < 256; ++s) t[s] = std::pow(2.0, static_cast<double>(s) / 16.0 - 2.0);
    return t;
  }();
  return table;
}

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

// The query features sorted by (word, original index), as runs of equal words.
struct SortedQuery {
  std::vector<std::uint32_t> index;  // original index, in sorted order
  std::vector<double> x, y, size, angle;
  std::vector<std::uint32_t> run_word;
  std::vector<std::size_t> run_begin;  // runs + 1 positions into the sorted order
};

SortedQuery sort_query(const SvQuery& q) {
  SortedQuery s;
  s.index.resize(q.n);
  std::iota(s.index.begin(), s.index.end(), 0u);
  std::stable_sort(s.index.begin(), s.index.end(),
                   [&](std::uint32_t a, std::uint32_t b) { return q.words[a] < q.words[b]; });
  s.x.resize(q.n);
  s.y.resize(q.n);
  s.size.resize(q.n);
  s.angle.resize(q.n);
  for (std::size_t i = 0; i < q.n; ++i) {
    const std::uint32_t o = s.index[i];
    s.x[i] = q.xy[2 * o];
    s.y[i] = q.xy[2 * o + 1];
    s.size[i] = q.sizes[o];
    s.angle[i] = q.angles[o];
    if (i == 0 || q.words[o] != s.run_word.back()) {
      s.run_word.push_back(q.words[o]);
      s.run_begin.push_back(i);
    }
  }
  s.run_begin.push_back(q.n);
  return s;
}

// Per-thread scratch: the correspondences of one image (structure of arrays, the first m
// entries of each; the arrays only grow).
struct Scratch {
  std::size_t m = 0;
  std::vector<std::pair<std::uint32_t, std::size_t>> pairs;  // (sorted query position, image feature)
  std::vector<std::uint32_t> qi;                              // original query index
  std::vector<double> xq, yq, xd, yd, s, t, w, ls;  // t: rotation in radians, w = fmod(t, 2 pi)
  std::vector<std::uint64_t> key, key2;       // ls as order-preserving integers (radix sort)
  std::vector<std::uint32_t> order, order2;   // correspondences by (ls, index)
  std::vector<double> ols, oxq, oyq, oxd, oyd, ow;  // the correspondences in that order
  std::vector<std::uint8_t> cur, tmp;           // inlier masks
  std::vector<std::uint32_t> mark;              // distinct query features: mark[qi] == stamp
  std::uint32_t stamp = 0;

  std::size_t size() const { return m; }
  void resize(std::size_t n) {
    m = n;
    if (qi.size() >= n) return;
    for (auto* v : {&xq, &yq, &xd, &yd, &s, &t, &w, &ls, &ols, &oxq, &oyq, &oxd, &oyd, &ow}) v->resize(n);
    for (auto* v : {&qi, &order, &order2}) v->resize(n);
    for (auto* v : {&key, &key2}) v->resize(n);
    for (auto* v : {&cur, &tmp}) v->resize(n);
  }
};

struct Row {
  const SortedQuery& q;
  const SvDatabase& db;
  const SvParams& p;
  double thr2;  // (inlier_threshold * L)^2
  double ln_tol;
  double angle_tol;  // radians
  detail::CountCloseFn count_close;
};

// Step 1: tentative correspondences of image rows [begin, end).
void correspondences(const Row& c, std::size_t begin, std::size_t end, double L, Scratch& s) {
  const std::size_t n_runs = c.q.run_word.size(), P = c.p.max_per_word, max_m = c.p.max_correspondences;
  s.pairs.clear();
  std::size_t r = 0, k = begin;
  while (r < n_runs && k < end && s.pairs.size() < max_m) {
    const std::uint32_t wq = c.q.run_word[r], wd = c.db.words[k];
    if (wq < wd) {
      ++r;
      continue;
    }
    if (wd < wq) {
      ++k;
      continue;
    }
    std::size_t k_end = k + 1;
    while (k_end < end && c.db.words[k_end] == wd) ++k_end;
    const std::size_t q0 = c.q.run_begin[r];
    const std::size_t cq = std::min(c.q.run_begin[r + 1] - q0, P), cd = std::min(k_end - k, P);
    for (std::size_t i = q0; i < q0 + cq && s.pairs.size() < max_m; ++i)
      for (std::size_t j = k; j < k + cd && s.pairs.size() < max_m; ++j) s.pairs.emplace_back(i, j);
    ++r;
    k = k_end;
  }
  s.resize(s.pairs.size());
  const auto& sizes = db_sizes();
  for (std::size_t n = 0; n < s.m; ++n) {
    const std::size_t i = s.pairs[n].first, j = s.pairs[n].second;
    const double sj = sizes[c.db.scales[j]] / c.q.size[i];
    s.qi[n] = c.q.index[i];
    s.xq[n] = c.q.x[i];
    s.yq[n] = c.q.y[i];
    s.xd[n] = static_cast<double>(c.db.xy[2 * j]) / 65535.0 * L;
    s.yd[n] = static_cast<double>(c.db.xy[2 * j + 1]) / 65535.0 * L;
    s.s[n] = sj;
    s.ls[n] = std::log(sj);
    s.t[n] = (static_cast<double>(c.db.angles[j]) * 360.0 / 256.0 - c.q.angle[i]) * kDegToRad;
    s.w[n] = std::fmod(s.t[n], detail::kTwoPi);  // exact; |w| < 2 pi
  }
}

// Reprojection test of j under the similarity (a, b) anchored at (xh, yh) -> (xdh, ydh).
inline bool sim_close(double a, double b, double xh, double yh, double xdh, double ydh, double x, double y, double xd,
                      double yd, double thr2) {
  const double dx = x - xh, dy = y - yh;
  const double ex = a * dx - b * dy + xdh - xd;
  const double ey = b * dx + a * dy + ydh - yd;
  return ex * ex + ey * ey < thr2;
}

// s.order = the correspondences sorted by (ls, index): a stable LSD radix sort (8-bit
// digits; a digit that all keys share is skipped) of ls mapped to integers of the same
// order (ls is never NaN or -0.0).
void sort_by_log_scale(Scratch& s) {
  const std::size_t M = s.size();
  for (std::size_t j = 0; j < M; ++j) {
    std::uint64_t b;
    std::memcpy(&b, &s.ls[j], sizeof b);
    s.key[j] = (b >> 63) ? ~b : b | (std::uint64_t{1} << 63);
    s.order[j] = static_cast<std::uint32_t>(j);
  }
  for (unsigned shift = 0; shift < 64; shift += 8) {
    std::size_t count[256] = {};
    for (std::size_t j = 0; j < M; ++j) ++count[(s.key[j] >> shift) & 255];
    if (count[(s.key[0] >> shift) & 255] == M) continue;
    std::size_t pos = 0;
    for (auto& n : count) {
      const std::size_t c = n;
      n = pos;
      pos += c;
    }
    for (std::size_t j = 0; j < M; ++j) {
      const std::size_t p = count[(s.key[j] >> shift) & 255]++;
      s.key2[p] = s.key[j];
      s.order2[p] = s.order[j];
    }
    s.key.swap(s.key2);
    s.order.swap(s.order2);
  }
}

// Step 3: the hypothesis with the most inliers (ties: the smallest index). Hypotheses are
// visited by increasing log-scale: the scale test then keeps a sliding window [lo, hi) of
// the correspondences sorted the same way. A hypothesis whose window, or whose count plus
// what is left of it, cannot beat the best so far (more inliers, or as many and a smaller
// index) is not counted further.
std::size_t best_hypothesis(const Row& c, Scratch& s) {
  const std::size_t M = s.size();
  sort_by_log_scale(s);
  for (std::size_t i = 0; i < M; ++i) {
    const std::uint32_t j = s.order[i];
    s.ols[i] = s.ls[j];
    s.oxq[i] = s.xq[j];
    s.oyq[i] = s.yq[j];
    s.oxd[i] = s.xd[j];
    s.oyd[i] = s.yd[j];
    s.ow[i] = s.w[j];
  }
  const double T = c.ln_tol;
  std::size_t best = 0, best_h = M;  // M: none yet
  std::size_t lo = 0, hi = 0;
  for (std::size_t i = 0; i < M; ++i) {
    const double lh = s.ols[i];
    const std::size_t h = s.order[i];
    while (!(lh - s.ols[lo] < T)) ++lo;  // ends at i at the latest (0 < T)
    while (hi < M && s.ols[hi] - lh < T) ++hi;
    const std::size_t need = h < best_h ? best : best + 1;  // the count that beats the best so far
    if (hi - lo < need) continue;
    const double ct = std::cos(s.t[h]), st = std::sin(s.t[h]);  // one sincos call
    const detail::SimilarityTest t{s.s[h] * ct, s.s[h] * st, s.xq[h], s.yq[h], s.xd[h],
                                   s.yd[h], c.thr2, s.w[h], c.angle_tol};
    const std::size_t count =
        c.count_close(&s.oxq[lo], &s.oyq[lo], &s.oxd[lo], &s.oyd[lo], &s.ow[lo], hi - lo, t, need);
    if (count >= need) {
      best = count;
      best_h = h;
    }
  }
  return best_h;
}

// Least-squares affine of the correspondences in `mask` (query -> image), centred.
bool fit_affine(const Scratch& s, const std::vector<std::uint8_t>& mask, double A[6]) {
  const std::size_t M = s.size();
  double sx = 0, sy = 0, su = 0, sv = 0, m = 0;
  for (std::size_t j = 0; j < M; ++j) {
    if (!mask[j]) continue;
    sx += s.xq[j];
    sy += s.yq[j];
    su += s.xd[j];
    sv += s.yd[j];
    m += 1.0;
  }
  const double mx = sx / m, my = sy / m, mu = su / m, mv = sv / m;
  double saa = 0, sab = 0, sbb = 0, sau = 0, sbu = 0, sav = 0, sbv = 0;
  for (std::size_t j = 0; j < M; ++j) {
    if (!mask[j]) continue;
    const double a = s.xq[j] - mx, b = s.yq[j] - my, u = s.xd[j] - mu, v = s.yd[j] - mv;
    saa += a * a;
    sab += a * b;
    sbb += b * b;
    sau += a * u;
    sbu += b * u;
    sav += a * v;
    sbv += b * v;
  }
  const double det = saa * sbb - sab * sab, tr = saa + sbb;
  if (!(det > kMinRcond * tr * tr)) return false;
  const double p11 = (sbb * sau - sab * sbu) / det, p12 = (saa * sbu - sab * sau) / det;
  const double p21 = (sbb * sav - sab * sbv) / det, p22 = (saa * sbv - sab * sav) / det;
  A[0] = p11;
  A[1] = p12;
  A[2] = mu - (p11 * mx + p12 * my);
  A[3] = p21;
  A[4] = p22;
  A[5] = mv - (p21 * mx + p22 * my);
  for (int i = 0; i < 6; ++i)
    if (!std::isfinite(A[i])) return false;
  return true;
}

// The inliers of A: reprojection, and the scale and angle tests against A's closest
// similarity (log scale lsA, rotation thA).
std::size_t affine_inliers(const Row& c, const Scratch& s, const double A[6], double lsA, double thA,
                           std::vector<std::uint8_t>& mask) {
  const std::size_t M = s.size();
  const double T = c.ln_tol;
  std::size_t count = 0;
  for (std::size_t j = 0; j < M; ++j) {
    const double ex = A[0] * s.xq[j] + A[1] * s.yq[j] + A[2] - s.xd[j];
    const double ey = A[3] * s.xq[j] + A[4] * s.yq[j] + A[5] - s.yd[j];
    mask[j] = ex * ex + ey * ey < c.thr2 && s.ls[j] - lsA < T && lsA - s.ls[j] < T &&
              detail::angle_close(s.w[j], thA, c.angle_tol);
    count += mask[j];
  }
  return count;
}

void write_nan(const SvOutput& out, std::size_t i) {
  const double dnan = std::numeric_limits<double>::quiet_NaN();
  const float fnan = std::numeric_limits<float>::quiet_NaN();
  out.inliers[i] = 0;
  std::fill(out.affine + 6 * i, out.affine + 6 * i + 6, dnan);
  std::fill(out.query_boxes + 4 * i, out.query_boxes + 4 * i + 4, fnan);
  std::fill(out.db_boxes + 4 * i, out.db_boxes + 4 * i + 4, fnan);
}

// Step 5: distinct query features and the two boxes of the final inlier set.
void write_result(Scratch& s, const double A[6], const SvOutput& out, std::size_t i) {
  if (++s.stamp == 0) {  // wrapped: forget every mark
    std::fill(s.mark.begin(), s.mark.end(), 0u);
    s.stamp = 1;
  }
  const double inf = std::numeric_limits<double>::infinity();
  double qb[4] = {inf, inf, -inf, -inf}, db[4] = {inf, inf, -inf, -inf};
  std::int32_t distinct = 0;
  for (std::size_t j = 0; j < s.size(); ++j) {
    if (!s.cur[j]) continue;
    if (s.mark[s.qi[j]] != s.stamp) {
      s.mark[s.qi[j]] = s.stamp;
      ++distinct;
    }
    qb[0] = std::min(qb[0], s.xq[j]);
    qb[1] = std::min(qb[1], s.yq[j]);
    qb[2] = std::max(qb[2], s.xq[j]);
    qb[3] = std::max(qb[3], s.yq[j]);
    db[0] = std::min(db[0], s.xd[j]);
    db[1] = std::min(db[1], s.yd[j]);
    db[2] = std::max(db[2], s.xd[j]);
    db[3] = std::max(db[3], s.yd[j]);
  }
  out.inliers[i] = distinct;
  std::copy(A, A + 6, out.affine + 6 * i);
  for (int k = 0; k < 4; ++k) {
    out.query_boxes[4 * i + k] = static_cast<float>(qb[k]);
    out.db_boxes[4 * i + k] = static_cast<float>(db[k]);
  }
}

void verify_row(const Row& c, std::size_t g, Scratch& s, const SvOutput& out, std::size_t i) {
  const double L = c.db.sides[g];
  const auto begin = static_cast<std::size_t>(c.db.offsets[g]), end = static_cast<std::size_t>(c.db.offsets[g + 1]);
  const double thr = c.p.inlier_threshold * L;
  Row rc = c;
  rc.thr2 = thr * thr;
  correspondences(rc, begin, end, L, s);
  const std::size_t M = s.size();
  out.correspondences[i] = static_cast<std::int32_t>(M);  // M <= max_correspondences, checked < 2**31
  if (M < 3) return write_nan(out, i);
  const std::size_t h = best_hypothesis(rc, s);
  const double a = s.s[h] * std::cos(s.t[h]), b = s.s[h] * std::sin(s.t[h]);
  const double xh = s.xq[h], yh = s.yq[h], xdh = s.xd[h], ydh = s.yd[h], lh = s.ls[h], wh = s.w[h], T = c.ln_tol;
  std::size_t count = 0;
  for (std::size_t j = 0; j < M; ++j) {
    s.cur[j] = sim_close(a, b, xh, yh, xdh, ydh, s.xq[j], s.yq[j], s.xd[j], s.yd[j], rc.thr2) &&
               s.ls[j] - lh < T && lh - s.ls[j] < T && detail::angle_close(s.w[j], wh, c.angle_tol);
    count += s.cur[j];
  }
  if (count == 0) return write_nan(out, i);  // thr2 == 0: not even h itself
  double model[6] = {a, -b, xdh - (a * xh - b * yh), b, a, ydh - (b * xh + a * yh)};
  for (std::size_t it = 0; it < c.p.lo_iterations && count >= 3; ++it) {
    double A[6];
    if (!fit_affine(s, s.cur, A)) break;
    const double sA = std::sqrt(std::fabs(A[0] * A[4] - A[1] * A[3]));  // A's closest similarity
    if (!(sA > 0.0) || !std::isfinite(sA)) break;
    const double thA = std::atan2(A[3] - A[1], A[0] + A[4]);
    const std::size_t n = affine_inliers(rc, s, A, std::log(sA), thA, s.tmp);
    if (n < count) break;
    s.cur.swap(s.tmp);
    std::copy(A, A + 6, model);
    const bool grew = n > count;
    count = n;
    if (!grew) break;
  }
  write_result(s, model, out, i);
}

void validate(const SvQuery& q, const SvDatabase& db, const std::int64_t* rows, std::size_t R, const SvParams& p) {
  if (p.max_per_word < 1) throw InvalidArgument("max_per_word must be >= 1, got 0");
  if (p.max_correspondences < 3 ||
      p.max_correspondences > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
    throw InvalidArgument("max_correspondences must be in [3, 2**31 - 1], got " +
                          std::to_string(p.max_correspondences));
  if (!(p.inlier_threshold > 0.0) || !std::isfinite(p.inlier_threshold))
    throw InvalidArgument("inlier_threshold must be positive and finite, got " + num(p.inlier_threshold));
  if (!(p.scale_tolerance > 1.0) || !std::isfinite(p.scale_tolerance))
    throw InvalidArgument("scale_tolerance must be > 1 and finite, got " + num(p.scale_tolerance));
  if (!(p.angle_tolerance > 0.0 && p.angle_tolerance <= 180.0))
    throw InvalidArgument("angle_tolerance must be in (0, 180] degrees, got " + num(p.angle_tolerance));
  if (q.n > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
    throw InvalidArgument("too many query features: " + std::to_string(q.n) + " (at most 2**31 - 1)");
  if (db.offsets[0] != 0) throw InvalidArgument("db_offsets[0] must be 0, got " + std::to_string(db.offsets[0]));
  validate_offsets(db.offsets, db.n_images, db.n, "db_offsets");
  if (static_cast<std::uint64_t>(db.offsets[db.n_images]) != db.n)
    throw InvalidArgument("db_offsets[-1] = " + std::to_string(db.offsets[db.n_images]) +
                          " must equal the number of database features (" + std::to_string(db.n) + ")");
  for (std::size_t i = 0; i < R; ++i)
    if (rows[i] < 0 || static_cast<std::uint64_t>(rows[i]) >= db.n_images)
      throw InvalidArgument("rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                            " is not an image index in [0, " + std::to_string(db.n_images) + ")");
  for (std::size_t i = 0; i < R; ++i) {
    const auto g = static_cast<std::size_t>(rows[i]);
    if (!(db.sides[g] > 0.0f) || !std::isfinite(db.sides[g]))
      throw InvalidArgument("db_sides[" + std::to_string(g) + "] (rows[" + std::to_string(i) +
                            "]) must be positive and finite, got " + num(db.sides[g]));
    for (auto k = static_cast<std::size_t>(db.offsets[g]) + 1; k < static_cast<std::size_t>(db.offsets[g + 1]); ++k)
      if (db.words[k] < db.words[k - 1])
        throw InvalidArgument("db_words of image " + std::to_string(g) + " (rows[" + std::to_string(i) +
                              "]) are not sorted ascending: db_words[" + std::to_string(k - 1) +
                              "] = " + std::to_string(db.words[k - 1]) + " > db_words[" + std::to_string(k) +
                              "] = " + std::to_string(db.words[k]));
  }
  for (std::size_t i = 0; i < q.n; ++i) {
    if (!std::isfinite(q.xy[2 * i]) || !std::isfinite(q.xy[2 * i + 1]))
      throw InvalidArgument("query_xy[" + std::to_string(i) + "] contains NaN or infinity");
    if (!(q.sizes[i] > 0.0f) || !std::isfinite(q.sizes[i]))
      throw InvalidArgument("query_sizes[" + std::to_string(i) + "] must be positive and finite, got " +
                            num(q.sizes[i]));
    if (!std::isfinite(q.angles[i]))
      throw InvalidArgument("query_angles[" + std::to_string(i) + "] must be finite, got " + num(q.angles[i]));
  }
}

}  // namespace

void spatial_verify(const SvQuery& query, const SvDatabase& db, const std::int64_t* rows, std::size_t R,
                    const SvParams& params, const SvOutput& out, int threads) {
  validate(query, db, rows, R, params);
  if (R == 0) return;
  const SortedQuery sq = sort_query(query);
  const Row base{sq, db, params, 0.0, std::log(params.scale_tolerance), params.angle_tolerance * kDegToRad,
                 detail::active_count_close()};
  parallel_for(R, resolve_threads(threads), 2, [&](std::size_t rb, std::size_t re, int) {
    Scratch s;
    s.mark.assign(query.n, 0u);
    for (std::size_t i = rb; i < re; ++i) verify_row(base, static_cast<std::size_t>(rows[i]), s, out, i);
  });
}

}  // namespace roicore
