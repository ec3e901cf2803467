// roicore — internal: the per-SIMD-level Hamming kernel table.
#pragma once

#include <cstddef>
#include <cstdint>

#include "roicore/cpu.h"

namespace roicore {
namespace detail {

struct HammingKernels {
  // out[j] = popcount((q ^ db_j) masked by tail on the last word), j < n.
  // q: words, db: n * words. `tail` masks the last word (all ones if nbits % 64 == 0).
  void (*dist_1xn)(const std::uint64_t* q, const std::uint64_t* db, std::size_t n,
                   std::size_t words, std::uint64_t tail, std::uint32_t* out);
  // Index of the first minimum of d[0..n), n >= 1.
  std::size_t (*argmin_u32)(const std::uint32_t* d, std::size_t n);
  // Running element-wise minimum with its argument: where d[j] < best[j],
  // best[j] = d[j] and who[j] = tag (strict: an earlier tag keeps ties).
  void (*min_update)(const std::uint32_t* d, std::size_t n, std::uint32_t tag, std::uint32_t* best,
                     std::uint32_t* who);
  // Optional (nullptr: dist_1xn + min_update per query). For db rows j < m:
  // best[j] = min over the na active queries q + active[i] * words of the distance, who[j] =
  // the first active query reaching it (the same as min_update over active in order from
  // best = UINT32_MAX). na >= 1, m >= 1; best and who are written, not read.
  void (*cross_min)(const std::uint64_t* q, const std::uint32_t* active, std::size_t na,
                    const std::uint64_t* db, std::size_t m, std::size_t words, std::uint64_t tail,
                    std::uint32_t* best, std::uint32_t* who);
  // The selective-kernel scan of one posting run (EmbeddedInvertedFile) for the m >= 1
  // query terms of one word: for k < n in order, acc[docs[k]] += s_k, where
  // s_k = f[0] * sigma[h(q_0, sigs_k)] + f[1] * sigma[h(q_1, sigs_k)] + ... summed in term
  // order (s_k = f[0] * sigma[h(q_0, sigs_k)] when m == 1), the distance h over the words
  // with the last one masked by tail. q: m * words (term j at q + j * words); sigs: n * words;
  // docs distinct; sigma: indexed by distance. The run is read once whatever m. Every level
  // computes the same double products and sums in the same order.
  void (*accumulate)(const std::uint64_t* q, const double* f, std::size_t m, const std::uint64_t* sigs,
                     const std::uint32_t* docs, std::size_t n, std::size_t words, std::uint64_t tail,
                     const double* sigma, double* acc);
};

const HammingKernels& kernels_generic();
#if defined(ROICORE_X86)
const HammingKernels& kernels_popcnt();
const HammingKernels& kernels_avx2();
const HammingKernels& kernels_avx512();
#endif

// The table for the active SIMD level.
const HammingKernels& active_kernels();

}  // namespace detail
}  // namespace roicore
