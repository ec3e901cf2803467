// AVX2 kernels (-mavx2 -mpopcnt): popcount by nibble lookup (vpshufb) and byte sums
// (vpsadbw). Only called after cpuid reports AVX2 with OS support.
#include <immintrin.h>

#include <type_traits>
#include <vector>

#include "roicore/hamming_scalar_impl.h"

namespace roicore {
namespace detail {
namespace {

inline __m256i popcnt_bytes(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

inline __m256i popcnt_epi64(__m256i v) {
  return _mm256_sad_epu8(popcnt_bytes(v), _mm256_setzero_si256());
}

inline std::uint64_t hsum_epi64(__m256i v) {
  const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return static_cast<std::uint64_t>(_mm_cvtsi128_si64(s)) +
         static_cast<std::uint64_t>(_mm_extract_epi64(s, 1));
}

inline __m256i loadu(const std::uint64_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// One code against one query, any number of words.
inline std::uint32_t dist_one(const std::uint64_t* q, const std::uint64_t* p, std::size_t words,
                              std::uint64_t tail) {
  const std::size_t rem = words % 4;
  std::size_t chunks = words / 4;
  const bool peel = (rem == 0);  // the last word lies in the last full chunk
  if (peel) --chunks;
  __m256i acc = _mm256_setzero_si256();
  std::size_t c = 0;
  while (c < chunks) {
    // byte counters hold at most 8 per chunk: flush to 64-bit lanes every 31 chunks
    const std::size_t stop = (chunks - c > 31) ? c + 31 : chunks;
    __m256i bytes = _mm256_setzero_si256();
    for (; c < stop; ++c)
      bytes = _mm256_add_epi8(bytes, popcnt_bytes(_mm256_xor_si256(loadu(q + 4 * c), loadu(p + 4 * c))));
    acc = _mm256_add_epi64(acc, _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
  }
  std::uint64_t s = hsum_epi64(acc);
  if (peel) {
    const __m256i mask = _mm256_set_epi64x(static_cast<long long>(tail), -1, -1, -1);
    const std::size_t w = 4 * chunks;
    s += hsum_epi64(popcnt_epi64(_mm256_and_si256(_mm256_xor_si256(loadu(q + w), loadu(p + w)), mask)));
  } else {
    std::size_t w = 4 * chunks;
    for (; w + 1 < words; ++w) s += static_cast<std::uint64_t>(_mm_popcnt_u64(q[w] ^ p[w]));
    s += static_cast<std::uint64_t>(_mm_popcnt_u64((q[w] ^ p[w]) & tail));
  }
  return static_cast<std::uint32_t>(s);
}

// 256-bit codes: four codes per iteration, per-code sums by an in-register transpose.
void dist_w4(const std::uint64_t* q, const std::uint64_t* db, std::size_t n, std::uint64_t tail,
             std::uint32_t* out) {
  const __m256i qv = loadu(q);
  const __m256i mask = _mm256_set_epi64x(static_cast<long long>(tail), -1, -1, -1);
  const __m256i pack = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  std::size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const std::uint64_t* p = db + j * 4;
    const __m256i v0 = popcnt_epi64(_mm256_and_si256(_mm256_xor_si256(loadu(p), qv), mask));
    const __m256i v1 = popcnt_epi64(_mm256_and_si256(_mm256_xor_si256(loadu(p + 4), qv), mask));
    const __m256i v2 = popcnt_epi64(_mm256_and_si256(_mm256_xor_si256(loadu(p + 8), qv), mask));
    const __m256i v3 = popcnt_epi64(_mm256_and_si256(_mm256_xor_si256(loadu(p + 12), qv), mask));
    const __m256i t0 = _mm256_add_epi64(_mm256_unpacklo_epi64(v0, v1), _mm256_unpackhi_epi64(v0, v1));
    const __m256i t1 = _mm256_add_epi64(_mm256_unpacklo_epi64(v2, v3), _mm256_unpackhi_epi64(v2, v3));
    const __m256i s = _mm256_add_epi64(_mm256_permute2x128_si256(t0, t1, 0x20),
                                       _mm256_permute2x128_si256(t0, t1, 0x31));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j),
                     _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(s, pack)));
  }
  for (; j < n; ++j) out[j] = dist_one(q, db + j * 4, 4, tail);
}

void dist_1xn_avx2(const std::uint64_t* q, const std::uint64_t* db, std::size_t n, std::size_t words,
                   std::uint64_t tail, std::uint32_t* out) {
  if (words == 4) return dist_w4(q, db, n, tail, out);
  if (words == 1) {
    const std::uint64_t q0 = q[0];
    for (std::size_t j = 0; j < n; ++j)
      out[j] = static_cast<std::uint32_t>(_mm_popcnt_u64((q0 ^ db[j]) & tail));
    return;
  }
  for (std::size_t j = 0; j < n; ++j) out[j] = dist_one(q, db + j * words, words, tail);
}

std::size_t argmin_avx2(const std::uint32_t* d, std::size_t n) {
  std::size_t j = 0;
  std::uint32_t best = 0xFFFFFFFFu;
  if (n >= 8) {
    __m256i m = _mm256_set1_epi32(-1);
    for (; j + 8 <= n; j += 8)
      m = _mm256_min_epu32(m, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + j)));
    __m128i h = _mm_min_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    h = _mm_min_epu32(h, _mm_shuffle_epi32(h, 0x4E));
    h = _mm_min_epu32(h, _mm_shuffle_epi32(h, 0xB1));
    best = static_cast<std::uint32_t>(_mm_cvtsi128_si32(h));
  }
  for (std::size_t t = j; t < n; ++t)
    if (d[t] < best) best = d[t];
  // first position holding the minimum
  const __m256i b = _mm256_set1_epi32(static_cast<int>(best));
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i eq = _mm256_cmpeq_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + i)), b);
    const unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(eq)));
    if (mask) return i + static_cast<std::size_t>(__builtin_ctz(mask));
  }
  for (; i < n; ++i)
    if (d[i] == best) return i;
  return 0;  // unreachable for n >= 1
}

void min_update_avx2(const std::uint32_t* d, std::size_t n, std::uint32_t tag, std::uint32_t* best,
                     std::uint32_t* who) {
  const __m256i t = _mm256_set1_epi32(static_cast<int>(tag));
  std::size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256i dv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + j));
    const __m256i bv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(best + j));
    const __m256i m = _mm256_min_epu32(dv, bv);
    const __m256i same = _mm256_cmpeq_epi32(m, bv);  // d >= best: keep
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(who + j));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(best + j), m);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(who + j), _mm256_blendv_epi8(t, wv, same));
  }
  for (; j < n; ++j) {
    if (d[j] < best[j]) {
      best[j] = d[j];
      who[j] = tag;
    }
  }
}


// --- cross_min: register-blocked tiles ----------------------------------------------------
// A tile is 8 database codes stored word-major ("transposed"): for word w, the four 64-bit
// lanes of register 0 hold word w of codes 0, 2, 4, 6 and those of register 1 codes 1, 3,
// 5, 7. Each query word is broadcast and XORed with both registers, so the byte popcounts
// of all 8 codes accumulate lane-wise with no horizontal sum per code; one vpsadbw per
// register (every 31 words: a byte holds at most 8 per word) gives the 8 distances, and
// shifting the odd codes' sums into the upper halves puts them in code order as 8 x u32.
// The running minimum over the queries (and who reached it) stays in registers: each
// tile is transposed once and then read from L1 by every query.

// Sums of the byte popcounts of x0, x1 into b0, b1.
inline void pop_acc(__m256i x0, __m256i x1, __m256i& b0, __m256i& b1) {
  b0 = _mm256_add_epi8(b0, popcnt_bytes(x0));
  b1 = _mm256_add_epi8(b1, popcnt_bytes(x1));
}

// Distances of one query (qm: words, the last one masked) to the tile t (words x 8 u64),
// and, when S > 0, to the S codes p[0..S) (rows of `words`, last word masked by tail) by
// scalar popcnt in the same loop: the integer pipes count those while the vector pipes
// count the tile.
template <std::size_t W, std::size_t S>
__attribute__((always_inline)) inline __m256i tile_dist(const std::uint64_t* qm, const std::uint64_t* t, std::size_t words,
                         const std::uint64_t* const* p, std::uint64_t tail, std::uint32_t* sd) {
  const std::size_t n = W ? W : words;
  const __m256i zero = _mm256_setzero_si256();
  __m256i s0 = zero, s1 = zero;
  std::uint64_t c[S ? S : 1] = {};
  std::size_t w = 0;
  while (w < n) {
    const std::size_t stop = (n - w > 31) ? w + 31 : n;
    __m256i b0 = zero, b1 = zero;
    for (; w < stop; ++w) {
      const std::uint64_t qw = qm[w];
      const __m256i qb = _mm256_set1_epi64x(static_cast<long long>(qw));
      pop_acc(_mm256_xor_si256(qb, loadu(t + 8 * w)), _mm256_xor_si256(qb, loadu(t + 8 * w + 4)), b0, b1);
      if constexpr (S > 0) {
        const std::uint64_t m = (w + 1 == n) ? tail : ~std::uint64_t{0};
        for (std::size_t k = 0; k < S; ++k) c[k] += static_cast<std::uint64_t>(_mm_popcnt_u64((qw ^ p[k][w]) & m));
      }
    }
    s0 = _mm256_add_epi64(s0, _mm256_sad_epu8(b0, zero));
    s1 = _mm256_add_epi64(s1, _mm256_sad_epu8(b1, zero));
  }
  if constexpr (S > 0)
    for (std::size_t k = 0; k < S; ++k) sd[k] = static_cast<std::uint32_t>(c[k]);
  (void)p;
  (void)tail;
  (void)sd;
  return _mm256_blend_epi32(s0, _mm256_slli_epi64(s1, 32), 0xAA);
}

// Rows [j0, j0 + r) of db (r <= 8) into the tile t, word-major, last word masked.
inline void load_tile(const std::uint64_t* db, std::size_t j0, std::size_t r, std::size_t words,
                      std::uint64_t tail, std::uint64_t* t) {
  static const int kLane[8] = {0, 4, 1, 5, 2, 6, 3, 7};  // code k sits in lane kLane[k] of t
  for (std::size_t k = 0; k < 8; ++k) {
    std::uint64_t* c = t + kLane[k];
    if (k < r) {
      const std::uint64_t* p = db + (j0 + k) * words;
      for (std::size_t w = 0; w + 1 < words; ++w) c[8 * w] = p[w];
      c[8 * (words - 1)] = p[words - 1] & tail;
    } else {
      for (std::size_t w = 0; w < words; ++w) c[8 * w] = 0;
    }
  }
}

// One function per width (noinline): measured, inlining them all into cross_min_avx2 let
// the code of one width change the speed of another by up to 25 %.
template <std::size_t W, std::size_t S>
__attribute__((noinline)) void cross_min_tiles(const std::uint64_t* qm, std::size_t na, const std::uint32_t* active,
                     const std::uint64_t* db, std::size_t m, std::size_t words, std::uint64_t tail,
                     std::uint64_t* t, std::uint32_t* best, std::uint32_t* who) {
  std::size_t j0 = 0;
  auto run = [&](std::size_t r, auto s_const) {
    constexpr std::size_t s = decltype(s_const)::value;
    load_tile(db, j0, r, words, tail, t);
    const std::uint64_t* p[s ? s : 1];
    for (std::size_t k = 0; k < s; ++k) p[k] = db + (j0 + 8 + k) * words;
    std::uint32_t sb[s ? s : 1], sw[s ? s : 1], sd[s ? s : 1];
    for (std::size_t k = 0; k < s; ++k) sb[k] = 0xFFFFFFFFu, sw[k] = 0;
    __m256i bv = _mm256_set1_epi32(0x7FFFFFFF), wv = _mm256_setzero_si256();
    for (std::size_t i = 0; i < na; ++i) {
      const __m256i d = tile_dist<W, s>(qm + i * words, t, words, p, tail, sd);
      const __m256i lt = _mm256_cmpgt_epi32(bv, d);  // distances < 2^31: signed compare
      bv = _mm256_min_epi32(bv, d);
      wv = _mm256_blendv_epi8(wv, _mm256_set1_epi32(static_cast<int>(active[i])), lt);
      for (std::size_t k = 0; k < s; ++k) {
        const bool l = sd[k] < sb[k];
        sb[k] = l ? sd[k] : sb[k];
        sw[k] = l ? active[i] : sw[k];
      }
    }
    alignas(32) std::uint32_t b[8], h[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(b), bv);
    _mm256_store_si256(reinterpret_cast<__m256i*>(h), wv);
    for (std::size_t k = 0; k < r; ++k) {
      best[j0 + k] = b[k];
      who[j0 + k] = h[k];
    }
    for (std::size_t k = 0; k < s; ++k) {
      best[j0 + 8 + k] = sb[k];
      who[j0 + 8 + k] = sw[k];
    }
    j0 += r + s;
  };
  if constexpr (S > 0)
    while (m - j0 >= 8 + S) run(8, std::integral_constant<std::size_t, S>{});
  while (j0 < m) run(m - j0 < 8 ? m - j0 : 8, std::integral_constant<std::size_t, 0>{});
}

constexpr std::size_t kScalar = 2;

void cross_min_avx2(const std::uint64_t* q, const std::uint32_t* active, std::size_t na,
                    const std::uint64_t* db, std::size_t m, std::size_t words, std::uint64_t tail,
                    std::uint32_t* best, std::uint32_t* who) {
  thread_local std::vector<std::uint64_t> scratch;
  scratch.resize(na * words + 8 * words);
  std::uint64_t* qm = scratch.data();  // the active queries, last word masked
  for (std::size_t i = 0; i < na; ++i) {
    const std::uint64_t* src = q + static_cast<std::size_t>(active[i]) * words;
    for (std::size_t w = 0; w < words; ++w) qm[i * words + w] = src[w];
    qm[i * words + words - 1] &= tail;
  }
  std::uint64_t* t = qm + na * words;
  // kScalar codes of each tile are counted by scalar popcnt alongside the 8 vector codes
  // (measured on AMD Zen 5 at 256-4096 bits: 2 beat 0 and 4 by 5-17 %). 16 words (1024
  // bits) take the runtime-width loop: 0.91 ms against 1.15 ms fully unrolled.
  switch (words) {
    case 4: return cross_min_tiles<4, kScalar>(qm, na, active, db, m, words, tail, t, best, who);
    case 8: return cross_min_tiles<8, kScalar>(qm, na, active, db, m, words, tail, t, best, who);
    case 64: return cross_min_tiles<64, kScalar>(qm, na, active, db, m, words, tail, t, best, who);
    default: return cross_min_tiles<0, kScalar>(qm, na, active, db, m, words, tail, t, best, who);
  }
}

}  // namespace

const HammingKernels& kernels_avx2() {
  static const HammingKernels k{&dist_1xn_avx2, &argmin_avx2, &min_update_avx2, &cross_min_avx2,
                                &accumulate_level<HwPop, &dist_1xn_avx2>};
  return k;
}

}  // namespace detail
}  // namespace roicore
