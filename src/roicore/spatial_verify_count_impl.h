// roicore — internal: the body of count_close, included by one translation unit per
// instruction set with ROICORE_SV_VECTOR_BYTES set (16, 32 or 64). No include guard on
// purpose: each including file gets its own copy in an anonymous namespace.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "roicore/spatial_verify_kernels.h"

#ifndef ROICORE_SV_VECTOR_BYTES
#error "define ROICORE_SV_VECTOR_BYTES before including spatial_verify_count_impl.h"
#endif

namespace roicore {
namespace detail {
namespace {

constexpr int kLanes = ROICORE_SV_VECTOR_BYTES / 8;
typedef double VecD __attribute__((vector_size(ROICORE_SV_VECTOR_BYTES)));
typedef std::int64_t VecI __attribute__((vector_size(ROICORE_SV_VECTOR_BYTES)));

inline VecD load(const double* p) {
  VecD v;
  std::memcpy(&v, p, sizeof v);  // unaligned load
  return v;
}

inline std::int64_t sum_lanes(VecI v) {
  std::int64_t lane[kLanes];
  std::memcpy(lane, &v, sizeof v);
  std::int64_t total = 0;
  for (int l = 0; l < kLanes; ++l) total += lane[l];
  return total;
}

// See CountCloseFn. Counts kChunk candidates at a time. `need` is out of reach once the
// count so far plus the candidates left is below it; since the count never decreases, the
// lanes are summed (and this checked) only once fewer than need - (the last sum) are left.
inline std::size_t count_close_impl(const double* x, const double* y, const double* xd, const double* yd,
                                    const double* w, std::size_t n, const SimilarityTest& t, std::size_t need) {
  constexpr std::size_t kChunk = 64;
  static_assert(kChunk % kLanes == 0, "a chunk is whole vectors");
  const VecD zero = {};
  const VecD a = zero + t.a, b = zero + t.b, xh = zero + t.xh, yh = zero + t.yh;
  const VecD xdh = zero + t.xdh, ydh = zero + t.ydh, thr2 = zero + t.thr2;
  const VecD wh = zero + t.wh, tol = zero + t.tol, ntol = zero - t.tol;
  const VecD inv2pi = zero + kInvTwoPi, twopi = zero + kTwoPi, magic = zero + kRoundMagic;
  VecI lanes = {};
  const std::size_t whole = n - n % kLanes;
  std::size_t k = 0, limit = need;  // check when fewer than `limit` candidates are left
  while (k < whole) {
    const std::size_t end = std::min(whole, k + kChunk);
    for (; k < end; k += kLanes) {
      const VecD dx = load(x + k) - xh, dy = load(y + k) - yh;
      const VecD ex = a * dx - b * dy + xdh - load(xd + k);
      const VecD ey = b * dx + a * dy + ydh - load(yd + k);
      const VecD d = load(w + k) - wh;  // angle_close, lane by lane
      const VecD e = d - ((d * inv2pi + magic) - magic) * twopi;
      lanes -= (ex * ex + ey * ey < thr2) & (e < tol) & (ntol < e);  // true is -1
    }
    if (n - k < limit) {
      const auto sum = static_cast<std::size_t>(sum_lanes(lanes));
      if (sum >= need) {
        limit = 0;  // reached: count the rest without checking
      } else if (sum + (n - k) < need) {
        return 0;
      } else {
        limit = need - sum;
      }
    }
  }
  auto count = static_cast<std::size_t>(sum_lanes(lanes));
  for (; k < n; ++k) {
    const double dx = x[k] - t.xh, dy = y[k] - t.yh;
    const double ex = t.a * dx - t.b * dy + t.xdh - xd[k];
    const double ey = t.b * dx + t.a * dy + t.ydh - yd[k];
    count += ex * ex + ey * ey < t.thr2 && angle_close(w[k], t.wh, t.tol);
  }
  return count;
}

}  // namespace
}  // namespace detail
}  // namespace roicore
