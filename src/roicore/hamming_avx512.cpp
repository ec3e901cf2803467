// AVX-512 kernels (-mavx512f -mavx512bw -mavx512vl -mavx512vpopcntdq): vector popcount
// (vpopcntq) on 512-bit registers. Only called after cpuid and XGETBV report support.
#include <immintrin.h>

#include "roicore/hamming_scalar_impl.h"

namespace roicore {
namespace detail {
namespace {

inline __m512i loadu(const std::uint64_t* p) { return _mm512_loadu_si512(p); }

// Pairwise sums of neighbouring 64-bit lanes of a and b:
// [a0+a1, a2+a3, a4+a5, a6+a7, b0+b1, b2+b3, b4+b5, b6+b7].
inline __m512i pair_sum(__m512i a, __m512i b) {
  const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  const __m512i odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
  return _mm512_add_epi64(_mm512_permutex2var_epi64(a, even, b), _mm512_permutex2var_epi64(a, odd, b));
}

// Codes of W in {1, 2, 4, 8} words: 8 codes per step (W registers), per-code sums by an
// in-register transpose; the last partial step uses masked loads and a masked store.
template <std::size_t W>
void dist_small(const std::uint64_t* q, const std::uint64_t* db, std::size_t n, std::uint64_t tail,
                std::uint32_t* out) {
  alignas(64) std::uint64_t qr[8], mr[8];
  for (std::size_t l = 0; l < 8; ++l) {
    qr[l] = q[l % W];
    mr[l] = (l % W == W - 1) ? tail : ~0ULL;
  }
  const __m512i qv = _mm512_load_si512(qr), mv = _mm512_load_si512(mr);
  auto step = [&](const std::uint64_t* p, std::size_t codes) {
    // lanes of register r that hold words of the first `codes` codes
    __m512i v[W];
    for (std::size_t r = 0; r < W; ++r) {
      const std::size_t first = 8 * r, have = codes * W;
      const __mmask8 k = have >= first + 8 ? static_cast<__mmask8>(0xFF)
                         : have > first   ? static_cast<__mmask8>((1u << (have - first)) - 1u)
                                          : static_cast<__mmask8>(0);
      const __m512i x = _mm512_and_si512(_mm512_xor_si512(_mm512_maskz_loadu_epi64(k, p + first), qv), mv);
      v[r] = _mm512_maskz_popcnt_epi64(k, x);
    }
    if constexpr (W == 1) return v[0];
    else if constexpr (W == 2) return pair_sum(v[0], v[1]);
    else if constexpr (W == 4) return pair_sum(pair_sum(v[0], v[1]), pair_sum(v[2], v[3]));
    else
      return pair_sum(pair_sum(pair_sum(v[0], v[1]), pair_sum(v[2], v[3])),
                      pair_sum(pair_sum(v[4], v[5]), pair_sum(v[6], v[7])));
  };
  std::size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const std::uint64_t* p = db + j * W;
    __m512i s;
    if constexpr (W == 1) {
      s = _mm512_popcnt_epi64(_mm512_and_si512(_mm512_xor_si512(loadu(p), qv), mv));
    } else {
      __m512i v[W];
      for (std::size_t r = 0; r < W; ++r)
        v[r] = _mm512_popcnt_epi64(_mm512_and_si512(_mm512_xor_si512(loadu(p + 8 * r), qv), mv));
      if constexpr (W == 2) s = pair_sum(v[0], v[1]);
      else if constexpr (W == 4) s = pair_sum(pair_sum(v[0], v[1]), pair_sum(v[2], v[3]));
      else
        s = pair_sum(pair_sum(pair_sum(v[0], v[1]), pair_sum(v[2], v[3])),
                     pair_sum(pair_sum(v[4], v[5]), pair_sum(v[6], v[7])));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), _mm512_cvtepi64_epi32(s));
  }
  if (j < n) {
    const std::size_t r = n - j;
    const __m512i s = step(db + j * W, r);
    _mm256_mask_storeu_epi32(out + j, static_cast<__mmask8>((1u << r) - 1u), _mm512_cvtepi64_epi32(s));
  }
}

// Any number of words: 8-word chunks, the last one masked (lanes and tail bits). Four codes
// share each query chunk load.
void dist_any(const std::uint64_t* q, const std::uint64_t* db, std::size_t n, std::size_t words,
              std::uint64_t tail, std::uint32_t* out) {
  const std::size_t full = (words - 1) / 8;       // chunks before the one holding the last word
  const std::size_t lanes = words - 8 * full;     // 1..8 words in the last chunk
  const __mmask8 lk = static_cast<__mmask8>((1u << lanes) - 1u);
  alignas(64) std::uint64_t m[8];
  for (std::size_t l = 0; l < 8; ++l) m[l] = l + 1 < lanes ? ~0ULL : (l + 1 == lanes ? tail : 0);
  const __m512i lm = _mm512_load_si512(m);
  const std::size_t lw = 8 * full;
  const __m512i ql = _mm512_and_si512(_mm512_maskz_loadu_epi64(lk, q + lw), lm);

  std::size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const std::uint64_t* p0 = db + j * words;
    const std::uint64_t* p1 = p0 + words;
    const std::uint64_t* p2 = p1 + words;
    const std::uint64_t* p3 = p2 + words;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (std::size_t c = 0; c < full; ++c) {
      const __m512i qv = loadu(q + 8 * c);
      a0 = _mm512_add_epi64(a0, _mm512_popcnt_epi64(_mm512_xor_si512(qv, loadu(p0 + 8 * c))));
      a1 = _mm512_add_epi64(a1, _mm512_popcnt_epi64(_mm512_xor_si512(qv, loadu(p1 + 8 * c))));
      a2 = _mm512_add_epi64(a2, _mm512_popcnt_epi64(_mm512_xor_si512(qv, loadu(p2 + 8 * c))));
      a3 = _mm512_add_epi64(a3, _mm512_popcnt_epi64(_mm512_xor_si512(qv, loadu(p3 + 8 * c))));
    }
    // last chunk: masked loads; masking the data with lm drops the tail bits on both sides
    a0 = _mm512_add_epi64(a0, _mm512_popcnt_epi64(_mm512_xor_si512(ql, _mm512_and_si512(_mm512_maskz_loadu_epi64(lk, p0 + lw), lm))));
    a1 = _mm512_add_epi64(a1, _mm512_popcnt_epi64(_mm512_xor_si512(ql, _mm512_and_si512(_mm512_maskz_loadu_epi64(lk, p1 + lw), lm))));
    a2 = _mm512_add_epi64(a2, _mm512_popcnt_epi64(_mm512_xor_si512(ql, _mm512_and_si512(_mm512_maskz_loadu_epi64(lk, p2 + lw), lm))));
    a3 = _mm512_add_epi64(a3, _mm512_popcnt_epi64(_mm512_xor_si512(ql, _mm512_and_si512(_mm512_maskz_loadu_epi64(lk, p3 + lw), lm))));
    // four horizontal sums at once
    const __m512i s = pair_sum(pair_sum(a0, a1), pair_sum(a2, a3));  // [a0:2 lanes, a1:2, a2:2, a3:2]
    const __m512i t = pair_sum(s, s);                                 // lanes 0..3 = totals
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm256_castsi256_si128(_mm512_cvtepi64_epi32(t)));
  }
  for (; j < n; ++j) {
    const std::uint64_t* p = db + j * words;
    __m512i a = _mm512_setzero_si512();
    for (std::size_t c = 0; c < full; ++c)
      a = _mm512_add_epi64(a, _mm512_popcnt_epi64(_mm512_xor_si512(loadu(q + 8 * c), loadu(p + 8 * c))));
    a = _mm512_add_epi64(a, _mm512_popcnt_epi64(_mm512_xor_si512(ql, _mm512_and_si512(_mm512_maskz_loadu_epi64(lk, p + lw), lm))));
    out[j] = static_cast<std::uint32_t>(_mm512_reduce_add_epi64(a));
  }
}

void dist_1xn_avx512(const std::uint64_t* q, const std::uint64_t* db, std::size_t n, std::size_t words,
                     std::uint64_t tail, std::uint32_t* out) {
  switch (words) {
    case 1: return dist_small<1>(q, db, n, tail, out);
    case 2: return dist_small<2>(q, db, n, tail, out);
    case 4: return dist_small<4>(q, db, n, tail, out);
    case 8: return dist_small<8>(q, db, n, tail, out);
    default: return dist_any(q, db, n, words, tail, out);
  }
}

std::size_t argmin_avx512(const std::uint32_t* d, std::size_t n) {
  __m512i m = _mm512_set1_epi32(-1);
  std::size_t j = 0;
  for (; j + 16 <= n; j += 16) m = _mm512_min_epu32(m, _mm512_loadu_si512(d + j));
  if (j < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - j)) - 1u);
    m = _mm512_min_epu32(m, _mm512_mask_loadu_epi32(_mm512_set1_epi32(-1), k, d + j));
  }
  const __m512i b = _mm512_set1_epi32(static_cast<int>(_mm512_reduce_min_epu32(m)));
  for (std::size_t i = 0; i < n; i += 16) {
    const std::size_t r = n - i;
    const __mmask16 k = r >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << r) - 1u);
    const __mmask16 eq = _mm512_mask_cmpeq_epu32_mask(k, _mm512_maskz_loadu_epi32(k, d + i), b);
    if (eq) return i + static_cast<std::size_t>(__builtin_ctz(eq));
  }
  return 0;  // unreachable for n >= 1
}

void min_update_avx512(const std::uint32_t* d, std::size_t n, std::uint32_t tag, std::uint32_t* best,
                       std::uint32_t* who) {
  const __m512i t = _mm512_set1_epi32(static_cast<int>(tag));
  for (std::size_t j = 0; j < n; j += 16) {
    const std::size_t r = n - j;
    const __mmask16 k = r >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << r) - 1u);
    const __m512i dv = _mm512_maskz_loadu_epi32(k, d + j);
    const __m512i bv = _mm512_maskz_loadu_epi32(k, best + j);
    const __mmask16 lt = _mm512_mask_cmplt_epu32_mask(k, dv, bv);
    _mm512_mask_storeu_epi32(best + j, lt, dv);
    _mm512_mask_storeu_epi32(who + j, lt, t);
  }
}

}  // namespace

const HammingKernels& kernels_avx512() {
  static const HammingKernels k{&dist_1xn_avx512, &argmin_avx512, &min_update_avx512, nullptr,
                                &accumulate_level<HwPop, &dist_1xn_avx512>};
  return k;
}

}  // namespace detail
}  // namespace roicore
