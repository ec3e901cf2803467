#include "roicore/roi_select.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "roicore/common.h"
#include "roicore/parallel.h"

namespace roicore {

void select_rois(const float* boxes, const float* scores, const float* sizes, std::size_t B,
                 std::size_t D, std::size_t k, double t_min, double t_rate, double t_iou,
                 std::int64_t* out, int threads) {
  parallel_for(B, resolve_threads(threads), 1 + 4096 / (D + 1), [&](std::size_t bb, std::size_t be, int) {
    std::vector<std::uint32_t> order;
    std::vector<double> kept;  // x1, y1, x2, y2, area of kept boxes
    order.reserve(D);
    kept.reserve(5 * std::min(k, D));  // k may exceed D: the output is padded
    for (std::size_t b = bb; b < be; ++b) {
      const float* bx = boxes + b * D * 4;
      const float* sc = scores + b * D;
      const double W = sizes[2 * b], H = sizes[2 * b + 1];
      if (!(W > 0.0) || !(H > 0.0) || !std::isfinite(W) || !std::isfinite(H)) {
        throw InvalidArgument("image_sizes[" + std::to_string(b) + "] must be positive and finite, got (" +
                              std::to_string(W) + ", " + std::to_string(H) + ")");
      }
      const double img_area = W * H;
      order.clear();
      for (std::size_t i = 0; i < D; ++i) {
        const float* r = bx + 4 * i;
        if (!std::isfinite(r[0]) || !std::isfinite(r[1]) || !std::isfinite(r[2]) || !std::isfinite(r[3])) {
          throw InvalidArgument("boxes[" + std::to_string(b) + ", " + std::to_string(i) +
                                "] contains NaN or infinity");
        }
        if (std::isnan(sc[i])) {
          throw InvalidArgument("scores[" + std::to_string(b) + ", " + std::to_string(i) + "] is NaN");
        }
        const double w = static_cast<double>(r[2]) - static_cast<double>(r[0]);
        const double h = static_cast<double>(r[3]) - static_cast<double>(r[1]);
        if (!(w > 0.0) || !(h > 0.0)) continue;
        const double area = w * h;
        if (area / img_area < t_min) continue;
        if (std::max(w, h) / std::min(w, h) > t_rate) continue;
        order.push_back(static_cast<std::uint32_t>(i));
      }
      std::stable_sort(order.begin(), order.end(),
                       [sc](std::uint32_t x, std::uint32_t y) { return sc[x] > sc[y]; });
      std::int64_t* o = out + b * k;
      std::size_t n_kept = 0;
      kept.clear();
      for (const std::uint32_t i : order) {
        if (n_kept == k) break;
        const float* r = bx + 4 * i;
        const double x1 = r[0], y1 = r[1], x2 = r[2], y2 = r[3];
        const double area = (x2 - x1) * (y2 - y1);
        bool keep = true;
        for (std::size_t t = 0; t < n_kept; ++t) {
          const double* kb = &kept[5 * t];
          const double iw = std::min(x2, kb[2]) - std::max(x1, kb[0]);
          const double ih = std::min(y2, kb[3]) - std::max(y1, kb[1]);
          const double inter = (iw > 0.0 && ih > 0.0) ? iw * ih : 0.0;
          const double iou = inter / (area + kb[4] - inter);
          if (!(iou < t_iou)) {
            keep = false;
            break;
          }
        }
        if (!keep) continue;
        kept.insert(kept.end(), {x1, y1, x2, y2, area});
        o[n_kept++] = static_cast<std::int64_t>(i);
      }
      for (std::size_t t = n_kept; t < k; ++t) o[t] = -1;
    }
  });
}

}  // namespace roicore
