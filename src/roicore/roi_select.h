// roicore — batched RoI selection (the paper's 3.2.2).
#pragma once

#include <cstddef>
#include <cstdint>

namespace roicore {

// For each of B images with D candidate boxes:
//   boxes:  B * D * 4 floats, (x1, y1, x2, y2); w = x2 - x1, h = y2 - y1.
//   scores: B * D floats (the paper: activation sum inside the box).
//   sizes:  B * 2 floats, (width, height) of the image in the boxes' units.
// A box is dropped if w <= 0 or h <= 0, if (w * h) / (width * height) < t_min, or if
// max(w, h) / min(w, h) > t_rate. The rest are visited by descending score (ties: lower
// index first) and kept while their IoU with every kept box is < t_iou, until k are kept.
// All geometry is computed in double precision in exactly this order:
//   w = x2 - x1; h = y2 - y1; area = w * h; ratio = area / (width * height);
//   aspect = max(w, h) / min(w, h);
//   iw = min(x2a, x2b) - max(x1a, x1b); ih likewise; inter = (iw > 0 && ih > 0) ? iw * ih : 0;
//   iou = inter / (area_a + area_b - inter).
// out: B * k indices into the D boxes, in selection order, padded with -1.
// Throws InvalidArgument for NaN or infinite coordinates, NaN scores, or a non-positive image size.
void select_rois(const float* boxes, const float* scores, const float* sizes, std::size_t B,
                 std::size_t D, std::size_t k, double t_min, double t_rate, double t_iou,
                 std::int64_t* out, int threads);

}  // namespace roicore
