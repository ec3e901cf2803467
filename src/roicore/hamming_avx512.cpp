// AVX-512 kernels (-mavx512f -mavx512bw -mavx512vl -mavx512vpopcntdq): vector popcount
// (vpopcntq) on 512-bit registers. Only called after cpuid and XGETBV report support.
#include <immintrin.h>

#include "roicore/hamming_kernels.h"

namespace roicore {
namespace detail {
namespace {

inline __m512i loadu(const std::uint64_t* p) { return _mm512_loadu_si512(p); }

// Pairwise sums of neighbouring 64-bit lanes of a and b:
// [a0+a1, a2+a3, a4+a5, a6+a7, b0+b1, b2+b3, b4+b5, b6+b7].
inline __m512i pair_sum(__m512i a, __m512i b) {
  const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  const __m512i odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
  return _mm512_add_epi64(_mm512_permutex2var_epi64(a, even, b),
                          _mm512_permutex2var_epi64(a, odd, b));
}

inline void store8(std::uint32_t* out, __m512i sums) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi64_epi32(sums));
}

// Any number of words, one code: 8-word chunks, the last one masked (words and tail bits).
struct AnyWords {
  std::size_t full;     // chunks without the last word
  __mmask8 last_lanes;  // lanes of the last chunk
  __m512i last_mask;    // bit mask of the last chunk (tail bits of the final word)
  AnyWords(std::size_t words, std::uint64_t tail) {
    full = (words - 1) / 8;
    const std::size_t lanes = words - 8 * full;  // 1..8
    last_lanes = static_cast<__mmask8>((1u << lanes) - 1u);
    alignas(64) std::uint64_t m[8];
    for (std::size_t l = 0; l < 8; ++l) m[l] = l + 1 < lanes ? ~0ULL : (l + 1 == lanes ? tail : 0);
    last_mask = _mm512_load_si512(m);
  }
  inline std::uint32_t dist(const std::uint64_t* q, const std::uint64_t* p) const {
    __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
    std::size_t c = 0;
    for (; c + 2 <= full; c += 2) {
      acc0 = _mm512_add_epi64(acc0, _mm512_popcnt_epi64(_mm512_xor_si512(loadu(q + 8 * c), loadu(p + 8 * c))));
      acc1 = _mm512_add_epi64(acc1, _mm512_popcnt_epi64(
                                        _mm512_xor_si512(loadu(q + 8 * c + 8), loadu(p + 8 * c + 8))));
    }
    if (c < full)
      acc0 = _mm512_add_epi64(acc0, _mm512_popcnt_epi64(_mm512_xor_si512(loadu(q + 8 * c), loadu(p + 8 * c))));
    const std::size_t w = 8 * full;
    const __m512i x = _mm512_xor_si512(_mm512_maskz_loadu_epi64(last_lanes, q + w),
                                       _mm512_maskz_loadu_epi64(last_lanes, p + w));
    acc1 = _mm512_add_epi64(acc1, _mm512_popcnt_epi64(_mm512_and_si512(x, last_mask)));
    return static_cast<std::uint32_t>(_mm512_reduce_add_epi64(_mm512_add_epi64(acc0, acc1)));
  }
};

// Codes of W in {1, 2, 4, 8} words: 8 codes per iteration, per-code sums by a transpose.
template <std::size_t W>
void dist_small(const std::uint64_t* q, const std::uint64_t* db, std::size_t n, std::uint64_t tail,
                std::uint32_t* out) {
  // query replicated to fill a register; mask with the tail bits on each copy's last word
  alignas(64) std::uint64_t qr[8], mr[8];
  for (std::size_t l = 0; l < 8; ++l) {
    qr[l] = q[l % W];
    mr[l] = (l % W == W - 1) ? tail : ~0ULL;
  }
  const __m512i qv = _mm512_load_si512(qr), mv = _mm512_load_si512(mr);
  auto pc = [&](const std::uint64_t* p) {
    return _mm512_popcnt_epi64(_mm512_and_si512(_mm512_xor_si512(loadu(p), qv), mv));
  };
  std::size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const std::uint64_t* p = db + j * W;
    __m512i s;
    if constexpr (W == 1) {
      s = pc(p);
    } else if constexpr (W == 2) {
      s = pair_sum(pc(p), pc(p + 8));
    } else if constexpr (W == 4) {
      s = pair_sum(pair_sum(pc(p), pc(p + 8)), pair_sum(pc(p + 16), pc(p + 24)));
    } else {
      s = pair_sum(pair_sum(pair_sum(pc(p), pc(p + 8)), pair_sum(pc(p + 16), pc(p + 24))),
                   pair_sum(pair_sum(pc(p + 32), pc(p + 40)), pair_sum(pc(p + 48), pc(p + 56))));
    }
    store8(out + j, s);
  }
  if (j < n) {
    const AnyWords any(W, tail);
    for (; j < n; ++j) out[j] = any.dist(q, db + j * W);
  }
}

void dist_1xn_avx512(const std::uint64_t* q, const std::uint64_t* db, std::size_t n, std::size_t words,
                     std::uint64_t tail, std::uint32_t* out) {
  switch (words) {
    case 1: return dist_small<1>(q, db, n, tail, out);
    case 2: return dist_small<2>(q, db, n, tail, out);
    case 4: return dist_small<4>(q, db, n, tail, out);
    case 8: return dist_small<8>(q, db, n, tail, out);
    default: {
      const AnyWords any(words, tail);
      for (std::size_t j = 0; j < n; ++j) out[j] = any.dist(q, db + j * words);
    }
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

}  // namespace

const HammingKernels& kernels_avx512() {
  static const HammingKernels k{&dist_1xn_avx512, &argmin_avx512};
  return k;
}

}  // namespace detail
}  // namespace roicore
