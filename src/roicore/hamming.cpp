#include "roicore/hamming.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "roicore/common.h"
#include "roicore/hamming_kernels.h"
#include "roicore/parallel.h"

namespace roicore {

namespace detail {

const HammingKernels& active_kernels() {
  switch (active_simd_level()) {
#if defined(ROICORE_X86)
    case SimdLevel::kAvx512: return kernels_avx512();
    case SimdLevel::kAvx2: return kernels_avx2();
    case SimdLevel::kPopcnt: return kernels_popcnt();
#endif
    default: return kernels_generic();
  }
}

}  // namespace detail

namespace {

template <class T>
void pack_rows(const T* x, std::size_t n, std::size_t d, std::uint64_t* out, int threads) {
  const std::size_t words = words_for_bits(d);
  parallel_for(n, resolve_threads(threads), 4096 / (d + 1) + 64, [&](std::size_t b, std::size_t e, int) {
    for (std::size_t r = b; r < e; ++r) {
      const T* row = x + r * d;
      // Neumaier-compensated sum in double; min / max to clamp the mean.
      double sum = 0.0, comp = 0.0;
      double lo = std::numeric_limits<double>::infinity(), hi = -lo;
      for (std::size_t i = 0; i < d; ++i) {
        const double v = static_cast<double>(row[i]);
        if (!std::isfinite(v)) {
          throw InvalidArgument("x contains a non-finite value (" + std::to_string(v) + ") at row " +
                                std::to_string(r) + ", column " + std::to_string(i));
        }
        const double t = sum + v;
        comp += (std::fabs(sum) >= std::fabs(v)) ? (sum - t) + v : (v - t) + sum;
        sum = t;
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
      double mean = (sum + comp) / static_cast<double>(d);
      mean = std::min(std::max(mean, lo), hi);
      std::uint64_t* o = out + r * words;
      for (std::size_t w = 0; w < words; ++w) o[w] = 0;
      for (std::size_t i = 0; i < d; ++i)
        if (static_cast<double>(row[i]) > mean) o[i >> 6] |= std::uint64_t{1} << (i & 63);
    }
  });
}

inline float similarity(std::uint32_t dist, std::size_t nbits) {
  return static_cast<float>(1.0 - static_cast<double>(dist) / static_cast<double>(nbits));
}

// Max-heap of (distance, index) keeping the k best (smallest) entries.
struct TopK {
  std::vector<std::pair<std::uint32_t, std::int64_t>> h;
  std::size_t k;
  // `expected`: how many entries can arrive at most (the database size), so that a k far
  // beyond the database (the output is padded) does not reserve k entries.
  TopK(std::size_t k_, std::size_t expected) : k(k_) { h.reserve(std::min(k_, expected)); }
  // Candidates arrive in increasing index order, so an equal distance never displaces.
  inline void push(std::uint32_t d, std::int64_t i) {
    if (h.size() < k) {
      h.emplace_back(d, i);
      std::push_heap(h.begin(), h.end());
    } else if (d < h.front().first) {
      std::pop_heap(h.begin(), h.end());
      h.back() = {d, i};
      std::push_heap(h.begin(), h.end());
    }
  }
  inline std::uint32_t worst() const {
    return h.size() < k ? std::numeric_limits<std::uint32_t>::max() : h.front().first;
  }
};

constexpr std::size_t kBlockBytes = 256 * 1024;  // database block kept in L2 while queries pass

// Group of cross_match output o: images[o] when a subset is evaluated, else o itself.
inline std::size_t group_of(const std::int64_t* images, std::size_t o) {
  return images ? static_cast<std::size_t>(images[o]) : o;
}

// Chunks of cross_match: runs of outputs whose groups are adjacent in db, about `budget`
// rows each (or one larger group). Chunk c covers outputs [start[c], start[c + 1]);
// max_rows is the most rows of any chunk (at least 1).
struct MatchChunks {
  std::vector<std::size_t> start;
  std::size_t max_rows = 1;
};

MatchChunks plan_chunks(const std::int64_t* offsets, const std::int64_t* images, std::size_t n_out,
                        std::size_t budget) {
  MatchChunks chunks;
  std::size_t o = 0;
  while (o < n_out) {
    chunks.start.push_back(o);
    const std::size_t g0 = group_of(images, o);
    std::size_t rows = static_cast<std::size_t>(offsets[g0 + 1] - offsets[g0]);
    std::size_t e = o + 1;
    while (e < n_out && group_of(images, e) == group_of(images, e - 1) + 1) {
      const std::size_t g = group_of(images, e);
      const auto r = static_cast<std::size_t>(offsets[g + 1] - offsets[g]);
      if (rows + r > budget) break;
      rows += r;
      ++e;
    }
    chunks.max_rows = std::max(chunks.max_rows, rows);
    o = e;
  }
  chunks.start.push_back(n_out);
  return chunks;
}

}  // namespace

void validate_offsets(const std::int64_t* offsets, std::size_t n_groups, std::size_t n_rows,
                      const char* name) {
  if (offsets[0] < 0)
    throw InvalidArgument(std::string(name) + "[0] must be >= 0, got " + std::to_string(offsets[0]));
  for (std::size_t g = 0; g < n_groups; ++g) {
    if (offsets[g + 1] < offsets[g]) {
      throw InvalidArgument(std::string(name) + " must be non-decreasing: " + name + "[" +
                            std::to_string(g + 1) + "] = " + std::to_string(offsets[g + 1]) + " < " +
                            name + "[" + std::to_string(g) + "] = " + std::to_string(offsets[g]));
    }
  }
  if (static_cast<std::uint64_t>(offsets[n_groups]) > n_rows) {
    throw InvalidArgument(std::string(name) + "[-1] = " + std::to_string(offsets[n_groups]) +
                          " exceeds the number of rows (" + std::to_string(n_rows) + ")");
  }
}

void pack_codes_f32(const float* x, std::size_t n, std::size_t d, std::uint64_t* out, int threads) {
  pack_rows(x, n, d, out, threads);
}

void pack_codes_f64(const double* x, std::size_t n, std::size_t d, std::uint64_t* out, int threads) {
  pack_rows(x, n, d, out, threads);
}

void hamming_matrix(const std::uint64_t* a, std::size_t na, const std::uint64_t* b, std::size_t nb,
                    std::size_t nbits, std::uint32_t* out, int threads) {
  if (na == 0 || nb == 0) return;
  const auto& K = detail::active_kernels();
  const std::size_t words = words_for_bits(nbits);
  const std::uint64_t tail = tail_mask_for_bits(nbits);
  const std::size_t block = std::max<std::size_t>(64, kBlockBytes / (words * 8));
  const std::size_t work_per_row = nb * words;
  parallel_for(na, resolve_threads(threads), 1 + (1u << 16) / (work_per_row + 1),
               [&](std::size_t rb, std::size_t re, int) {
                 for (std::size_t j0 = 0; j0 < nb; j0 += block) {
                   const std::size_t m = std::min(block, nb - j0);
                   for (std::size_t i = rb; i < re; ++i)
                     K.dist_1xn(a + i * words, b + j0 * words, m, words, tail, out + i * nb + j0);
                 }
               });
}

void hamming_knn(const std::uint64_t* q, std::size_t nq, const std::uint64_t* db, std::size_t ndb,
                 std::size_t nbits, std::size_t k, std::uint32_t* out_dist, std::int64_t* out_idx,
                 int threads) {
  if (nq == 0 || k == 0) return;
  const auto& K = detail::active_kernels();
  const std::size_t words = words_for_bits(nbits);
  const std::uint64_t tail = tail_mask_for_bits(nbits);
  const std::size_t block = std::max<std::size_t>(256, kBlockBytes / (words * 8));
  const int T = resolve_threads(threads);

  // Scan database rows [lo, hi) for queries [qb, qe), merging into heaps[qi - qb].
  auto scan = [&](std::size_t qb, std::size_t qe, std::size_t lo, std::size_t hi, std::vector<TopK>& heaps) {
    std::vector<std::uint32_t> buf(std::min(block, hi - lo));
    for (std::size_t j0 = lo; j0 < hi; j0 += block) {
      const std::size_t m = std::min(block, hi - j0);
      for (std::size_t i = qb; i < qe; ++i) {
        K.dist_1xn(q + i * words, db + j0 * words, m, words, tail, buf.data());
        TopK& h = heaps[i - qb];
        if (k == 1) {
          const std::size_t a = K.argmin_u32(buf.data(), m);
          h.push(buf[a], static_cast<std::int64_t>(j0 + a));
        } else {
          std::uint32_t worst = h.worst();
          for (std::size_t t = 0; t < m; ++t) {
            if (buf[t] < worst) {
              h.push(buf[t], static_cast<std::int64_t>(j0 + t));
              worst = h.worst();
            }
          }
        }
      }
    }
  };
  auto emit = [&](std::size_t qi, TopK& h) {
    std::sort(h.h.begin(), h.h.end());
    for (std::size_t t = 0; t < k; ++t) {
      out_dist[qi * k + t] = t < h.h.size() ? h.h[t].first : std::numeric_limits<std::uint32_t>::max();
      out_idx[qi * k + t] = t < h.h.size() ? h.h[t].second : -1;
    }
  };

  if (static_cast<std::size_t>(T) <= 1 || nq >= static_cast<std::size_t>(T) ||
      ndb < static_cast<std::size_t>(T) * block) {
    parallel_for(nq, T, 1, [&](std::size_t qb, std::size_t qe, int) {
      std::vector<TopK> heaps(qe - qb, TopK(k, ndb));
      scan(qb, qe, 0, ndb, heaps);
      for (std::size_t i = qb; i < qe; ++i) emit(i, heaps[i - qb]);
    });
    return;
  }
  // Few queries, large database: split the database, then merge the per-chunk heaps.
  std::vector<std::vector<TopK>> parts(static_cast<std::size_t>(T));
  parallel_for(ndb, T, block, [&](std::size_t lo, std::size_t hi, int w) {
    parts[static_cast<std::size_t>(w)].assign(nq, TopK(k, hi - lo));
    scan(0, nq, lo, hi, parts[static_cast<std::size_t>(w)]);
  });
  for (std::size_t i = 0; i < nq; ++i) {
    TopK merged(k, ndb);
    for (auto& p : parts) {  // chunks are in increasing index order
      if (p.empty()) continue;
      std::sort(p[i].h.begin(), p[i].h.end(),
                [](const auto& x, const auto& y) { return x.second < y.second; });
      for (const auto& e : p[i].h) merged.push(e.first, e.second);
    }
    emit(i, merged);
  }
}

void cross_match(const std::uint64_t* q, std::size_t nq, const std::uint64_t* db,
                 const std::int64_t* offsets, std::size_t n_groups, const std::int64_t* images,
                 std::size_t n_out, std::size_t nbits, const std::uint8_t* query_mask, float* score,
                 std::int64_t* best_query, std::int64_t* best_db, std::int64_t* query_votes,
                 int threads) {
  (void)n_groups;
  for (std::size_t i = 0; i < nq; ++i) query_votes[i] = 0;
  if (n_out == 0) return;
  const auto& K = detail::active_kernels();
  const std::size_t words = words_for_bits(nbits);
  const std::uint64_t tail = tail_mask_for_bits(nbits);

  std::vector<std::uint32_t> active;
  active.reserve(nq);
  for (std::size_t i = 0; i < nq; ++i)
    if (query_mask == nullptr || query_mask[i]) active.push_back(static_cast<std::uint32_t>(i));

  auto group = [&](std::size_t o) { return group_of(images, o); };
  // Chunks of about 32 KiB of codes each (or one larger group), so that every query
  // streams the chunk from L1.
  const std::size_t budget = std::max<std::size_t>(32, (32u << 10) / (words * 8));
  const MatchChunks chunks = plan_chunks(offsets, images, n_out, budget);
  const std::vector<std::size_t>& chunk_start = chunks.start;
  const std::size_t max_rows = chunks.max_rows;
  const std::size_t n_chunks = chunk_start.size() - 1;
  const int T = resolve_threads(threads);
  const std::size_t per_chunk = std::max<std::size_t>(1, active.size() * max_rows * words);
  std::vector<std::vector<std::int64_t>> votes(static_cast<std::size_t>(std::max(T, 1)));

  parallel_for(n_chunks, T, 1 + (1u << 16) / per_chunk, [&](std::size_t cb, std::size_t ce, int w) {
    std::vector<std::int64_t>& v = votes[static_cast<std::size_t>(w)];
    v.assign(nq, 0);
    std::vector<std::uint32_t> dist(max_rows), best(max_rows), who(max_rows);
    for (std::size_t c = cb; c < ce; ++c) {
      const std::size_t ob = chunk_start[c], oe = chunk_start[c + 1];
      const auto rb = static_cast<std::size_t>(offsets[group(ob)]);
      const auto re = static_cast<std::size_t>(offsets[group(oe - 1) + 1]);
      const std::size_t m = re - rb;
      if (m > 0 && !active.empty()) {
        std::fill(best.begin(), best.begin() + static_cast<std::ptrdiff_t>(m), 0xFFFFFFFFu);
        if (K.cross_min) {
          K.cross_min(q, active.data(), active.size(), db + rb * words, m, words, tail, best.data(), who.data());
        } else {
          for (const std::uint32_t qi : active) {
            K.dist_1xn(q + static_cast<std::size_t>(qi) * words, db + rb * words, m, words, tail, dist.data());
            K.min_update(dist.data(), m, qi, best.data(), who.data());
          }
        }
      }
      for (std::size_t o = ob; o < oe; ++o) {
        const std::size_t g = group(o);
        const auto s = static_cast<std::size_t>(offsets[g]) - rb;
        const auto e = static_cast<std::size_t>(offsets[g + 1]) - rb;
        if (e == s || active.empty()) {
          score[o] = -std::numeric_limits<float>::infinity();
          best_query[o] = -1;
          best_db[o] = -1;
          continue;
        }
        const std::size_t j = s + K.argmin_u32(best.data() + s, e - s);
        score[o] = similarity(best[j], nbits);
        best_query[o] = who[j];
        best_db[o] = static_cast<std::int64_t>(rb + j);
        ++v[who[j]];
      }
    }
  });
  for (const auto& v : votes)
    for (std::size_t i = 0; i < v.size(); ++i) query_votes[i] += v[i];
}

}  // namespace roicore
