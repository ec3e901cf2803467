// roicore — internal: scalar Hamming kernels, instantiated by hamming_generic.cpp (SWAR
// popcount, any CPU) and hamming_popcnt.cpp (hardware POPCNT); the AVX2 and AVX-512 units
// take the fused accumulate loops from here too. Everything here has internal linkage, so
// code compiled with different instruction sets never merges.
#pragma once

#include <cstddef>
#include <cstdint>

#include "roicore/hamming_kernels.h"

namespace roicore {
namespace detail {
namespace {

// The POPCNT instruction: only for translation units compiled with -mpopcnt (every level
// but generic; elsewhere the builtin is a slow library call).
struct HwPop {
  static inline unsigned count(std::uint64_t x) { return static_cast<unsigned>(__builtin_popcountll(x)); }
};

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

// accumulate (see HammingKernels) for W-word signatures: the popcount and the accumulator
// update fused per posting, four postings at a time (their documents are distinct, so the
// four updates never alias). Pop needs no SIMD: every level instantiates this for W <= 2.
template <class Pop, std::size_t W>
void accumulate_fixed(const std::uint64_t* q, const std::uint64_t* sigs, const std::uint32_t* docs, std::size_t n,
                      std::uint64_t tail, const double* sigma, double f, double* acc) {
  std::uint64_t qq[W];
  for (std::size_t w = 0; w < W; ++w) qq[w] = q[w];
  auto dist = [&](std::size_t k) {
    const std::uint64_t* p = sigs + k * W;
    unsigned s = 0;
    for (std::size_t w = 0; w + 1 < W; ++w) s += Pop::count(qq[w] ^ p[w]);
    return s + Pop::count((qq[W - 1] ^ p[W - 1]) & tail);
  };
  std::size_t k = 0;
  for (; k + 4 <= n; k += 4) {
    const std::uint32_t d0 = docs[k], d1 = docs[k + 1], d2 = docs[k + 2], d3 = docs[k + 3];
    const double v0 = acc[d0] + f * sigma[dist(k)], v1 = acc[d1] + f * sigma[dist(k + 1)];
    const double v2 = acc[d2] + f * sigma[dist(k + 2)], v3 = acc[d3] + f * sigma[dist(k + 3)];
    acc[d0] = v0;
    acc[d1] = v1;
    acc[d2] = v2;
    acc[d3] = v3;
  }
  for (; k < n; ++k) acc[docs[k]] += f * sigma[dist(k)];
}

// accumulate for the m >= 2 terms of one word and W-word signatures: per posting, the
// terms' contributions summed in term order (f[0] * sigma[h_0] + f[1] * sigma[h_1] + ...),
// then one accumulator update — the list read once, one update per posting whatever m.
template <class Pop, std::size_t W>
void accumulate_fixed_terms(const std::uint64_t* q, const double* f, std::size_t m, const std::uint64_t* sigs,
                            const std::uint32_t* docs, std::size_t n, std::uint64_t tail, const double* sigma,
                            double* acc) {
  auto dist = [&](const std::uint64_t* qj, const std::uint64_t* p) {
    unsigned s = 0;
    for (std::size_t w = 0; w + 1 < W; ++w) s += Pop::count(qj[w] ^ p[w]);
    return s + Pop::count((qj[W - 1] ^ p[W - 1]) & tail);
  };
  auto sum = [&](std::size_t k) {
    const std::uint64_t* p = sigs + k * W;
    double s = f[0] * sigma[dist(q, p)];
    for (std::size_t j = 1; j < m; ++j) s += f[j] * sigma[dist(q + j * W, p)];
    return s;
  };
  std::size_t k = 0;
  for (; k + 4 <= n; k += 4) {  // as accumulate_fixed: four distinct documents in flight
    const double s0 = sum(k), s1 = sum(k + 1), s2 = sum(k + 2), s3 = sum(k + 3);
    const std::uint32_t d0 = docs[k], d1 = docs[k + 1], d2 = docs[k + 2], d3 = docs[k + 3];
    const double v0 = acc[d0] + s0, v1 = acc[d1] + s1, v2 = acc[d2] + s2, v3 = acc[d3] + s3;
    acc[d0] = v0;
    acc[d1] = v1;
    acc[d2] = v2;
    acc[d3] = v3;
  }
  for (; k < n; ++k) acc[docs[k]] += sum(k);
}

// accumulate for any width or several terms: distances of a chunk of postings to each term
// by the level's dist_1xn kernel (the chunk stays in L1 while the terms go over it), the
// terms' contributions summed per posting in term order, then the updates.
template <class Dist>
void accumulate_chunked(Dist dist_1xn, const std::uint64_t* q, const double* f, std::size_t m,
                        const std::uint64_t* sigs, const std::uint32_t* docs, std::size_t n, std::size_t words,
                        std::uint64_t tail, const double* sigma, double* acc) {
  constexpr std::size_t kChunk = 256;
  std::uint32_t dist[kChunk];
  double s[kChunk];
  for (std::size_t p = 0; p < n; p += kChunk) {
    const std::size_t len = n - p < kChunk ? n - p : kChunk;
    const std::uint64_t* chunk = sigs + p * words;
    dist_1xn(q, chunk, len, words, tail, dist);
    for (std::size_t k = 0; k < len; ++k) s[k] = f[0] * sigma[dist[k]];
    for (std::size_t j = 1; j < m; ++j) {
      dist_1xn(q + j * words, chunk, len, words, tail, dist);
      const double fj = f[j];
      for (std::size_t k = 0; k < len; ++k) s[k] += fj * sigma[dist[k]];
    }
    for (std::size_t k = 0; k < len; ++k) acc[docs[p + k]] += s[k];
  }
}

// accumulate of a level: 64- and 128-bit signatures by the fused scalar loops (faster than
// a distance buffer even with vector popcounts: the accumulator updates dominate), wider
// signatures by the level's distance kernel in chunks.
template <class Pop, void (*Dist)(const std::uint64_t*, const std::uint64_t*, std::size_t, std::size_t,
                                  std::uint64_t, std::uint32_t*)>
void accumulate_level(const std::uint64_t* q, const double* f, std::size_t m, const std::uint64_t* sigs,
                      const std::uint32_t* docs, std::size_t n, std::size_t words, std::uint64_t tail,
                      const double* sigma, double* acc) {
  if (words == 1 && m == 1) return accumulate_fixed<Pop, 1>(q, sigs, docs, n, tail, sigma, f[0], acc);
  if (words == 2 && m == 1) return accumulate_fixed<Pop, 2>(q, sigs, docs, n, tail, sigma, f[0], acc);
  if (words == 1) return accumulate_fixed_terms<Pop, 1>(q, f, m, sigs, docs, n, tail, sigma, acc);
  if (words == 2) return accumulate_fixed_terms<Pop, 2>(q, f, m, sigs, docs, n, tail, sigma, acc);
  accumulate_chunked(Dist, q, f, m, sigs, docs, n, words, tail, sigma, acc);
}

}  // namespace
}  // namespace detail
}  // namespace roicore
