// roicore — internal: scalar Hamming kernels, instantiated by hamming_generic.cpp (SWAR
// popcount, any CPU) and hamming_popcnt.cpp (hardware POPCNT). Everything here has
// internal linkage, so code compiled with different instruction sets never merges.
#pragma once

#include <cstddef>
#include <cstdint>

#include "roicore/hamming_kernels.h"

namespace roicore {
namespace detail {
namespace {

template <class Pop, std::size_t W>
void dist_fixed(const std::uint64_t* q, const std::uint64_t* db, std::size_t n, std::uint64_t tail,
                std::uint32_t* out) {
  std::uint64_t qq[W];
  for (std::size_t w = 0; w < W; ++w) qq[w] = q[w];
  for (std::size_t j = 0; j < n; ++j) {
    const std::uint64_t* p = db + j * W;
    unsigned s = 0;
    for (std::size_t w = 0; w + 1 < W; ++w) s += Pop::count(qq[w] ^ p[w]);
    s += Pop::count((qq[W - 1] ^ p[W - 1]) & tail);
    out[j] = s;
  }
}

template <class Pop>
void dist_any(const std::uint64_t* q, const std::uint64_t* db, std::size_t n, std::size_t words,
              std::uint64_t tail, std::uint32_t* out) {
  for (std::size_t j = 0; j < n; ++j) {
    const std::uint64_t* p = db + j * words;
    std::uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    std::size_t w = 0;
    for (; w + 4 < words; w += 4) {
      s0 += Pop::count(q[w] ^ p[w]);
      s1 += Pop::count(q[w + 1] ^ p[w + 1]);
      s2 += Pop::count(q[w + 2] ^ p[w + 2]);
      s3 += Pop::count(q[w + 3] ^ p[w + 3]);
    }
    for (; w + 1 < words; ++w) s0 += Pop::count(q[w] ^ p[w]);
    s0 += Pop::count((q[words - 1] ^ p[words - 1]) & tail);
    out[j] = static_cast<std::uint32_t>(s0 + s1 + s2 + s3);
  }
}

template <class Pop>
void dist_1xn_scalar(const std::uint64_t* q, const std::uint64_t* db, std::size_t n,
                     std::size_t words, std::uint64_t tail, std::uint32_t* out) {
  switch (words) {
    case 1: return dist_fixed<Pop, 1>(q, db, n, tail, out);
    case 2: return dist_fixed<Pop, 2>(q, db, n, tail, out);
    case 4: return dist_fixed<Pop, 4>(q, db, n, tail, out);
    case 8: return dist_fixed<Pop, 8>(q, db, n, tail, out);
    case 16: return dist_fixed<Pop, 16>(q, db, n, tail, out);
    default: return dist_any<Pop>(q, db, n, words, tail, out);
  }
}

inline std::size_t argmin_scalar(const std::uint32_t* d, std::size_t n) {
  std::size_t best = 0;
  std::uint32_t v = d[0];
  for (std::size_t j = 1; j < n; ++j) {
    if (d[j] < v) {
      v = d[j];
      best = j;
    }
  }
  return best;
}

inline void min_update_scalar(const std::uint32_t* d, std::size_t n, std::uint32_t tag, std::uint32_t* best,
                              std::uint32_t* who) {
  for (std::size_t j = 0; j < n; ++j) {
    const bool lt = d[j] < best[j];
    best[j] = lt ? d[j] : best[j];
    who[j] = lt ? tag : who[j];
  }
}

}  // namespace
}  // namespace detail
}  // namespace roicore
