// AVX2 kernels (-mavx2 -mpopcnt): popcount by nibble lookup (vpshufb) and byte sums
// (vpsadbw). Only called after cpuid reports AVX2 with OS support.
#include <immintrin.h>

#include "roicore/hamming_kernels.h"

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

}  // namespace

const HammingKernels& kernels_avx2() {
  static const HammingKernels k{&dist_1xn_avx2, &argmin_avx2, &min_update_avx2};
  return k;
}

}  // namespace detail
}  // namespace roicore
