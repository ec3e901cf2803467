// roicore — internal: the parts of a term-at-a-time search that every inverted file of
// roicore shares: splitting the documents into ranges — blocks whose accumulators fit in
// a core's L2 cache, shared out over threads — (where each term's sorted posting list
// crosses a range boundary), the top-N of a range by a bounded heap, and the merge that
// writes the results. Templates over the posting type (a struct with the document, or a
// bare document array) and over the accumulator type.
//
// Order of results: descending score, ties by document index (insertion order). Documents
// scoring exactly 0 (sharing nothing with the query, or adding up to 0) are not kept in the
// heaps: they fill the list in insertion order after the positive scores and before any
// negative ones.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "roicore/parallel.h"

namespace roicore {
namespace detail {

// Where document doc is expected in a list of len postings spread roughly uniformly over
// [0, n_docs): the interpolated position, in [0, len) (len > 0).
inline std::size_t interpolated_position(std::size_t len, std::uint32_t doc, std::size_t n_docs) {
  const auto g = static_cast<std::size_t>(static_cast<double>(len) * doc / static_cast<double>(n_docs));
  return std::min(g, len - 1);
}

// Prefetches where document doc is expected in the list b of len postings (nothing when
// empty): issued ahead of lower_doc so that the lookups' cache misses overlap.
template <class T>
inline void prefetch_doc(const T* b, std::size_t len, std::uint32_t doc, std::size_t n_docs) {
  if (len > 0) __builtin_prefetch(b + interpolated_position(len, doc, n_docs));
}

// First position in [0, len) of a list sorted by document (doc_of(b[i])) whose document is
// >= doc, or len. Postings of a word are spread over [0, n_docs) roughly uniformly, so the
// search starts at the interpolated position and gallops outwards: a few probes instead
// of log2(length) far-apart ones.
template <class T, class DocOf>
std::size_t lower_doc(const T* b, std::size_t len, std::uint32_t doc, std::size_t n_docs, DocOf doc_of) {
  if (len == 0 || doc_of(b[0]) >= doc) return 0;
  if (doc_of(b[len - 1]) < doc) return len;
  const std::size_t g = interpolated_position(len, doc, n_docs);
  std::size_t lo, hi;  // answer in [lo, hi]
  if (doc_of(b[g]) < doc) {
    lo = g + 1;
    std::size_t step = 1;
    hi = lo;
    while (hi < len && doc_of(b[hi]) < doc) {
      lo = hi + 1;
      hi = lo + step;
      step *= 2;
    }
    hi = std::min(hi, len);
  } else {
    hi = g;
    std::size_t step = 1;
    lo = g;
    while (lo > 0 && doc_of(b[lo - 1]) >= doc) {
      hi = lo - 1;
      lo = hi >= step ? hi - step : 0;
      step *= 2;
    }
  }
  while (lo < hi) {  // lower bound in [lo, hi)
    const std::size_t mid = lo + (hi - lo) / 2;
    if (doc_of(b[mid]) < doc) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Threads one search uses: 1 below min_postings postings scanned, else up to `threads`
// with at least min_docs documents each.
inline std::size_t search_threads(int threads, std::size_t scanned, std::size_t n_docs, std::size_t min_postings,
                                  std::size_t min_docs) {
  if (threads <= 1 || scanned < min_postings) return 1;
  return std::min<std::size_t>(static_cast<std::size_t>(threads), std::max<std::size_t>(1, n_docs / min_docs));
}

// Accumulator bytes per document range (block) of a search: a range's every term is added
// before the next range, so the accumulators a thread updates at random stay in its core's
// L2 (1-2 MB on the x86-64 cores of 2020 on) instead of missing to L3 or memory once the
// collection outgrows it (10^6 images: 8 MB of double accumulators). 0 restores the
// default; tests force small blocks to cover many ranges on small collections.
constexpr std::size_t kScanBlockBytes = std::size_t{512} << 10;
inline std::atomic<std::size_t>& scan_block_bytes_setting() {
  static std::atomic<std::size_t> bytes{kScanBlockBytes};
  return bytes;
}
inline void set_scan_block_bytes(std::size_t bytes) {
  scan_block_bytes_setting().store(bytes == 0 ? kScanBlockBytes : bytes, std::memory_order_relaxed);
}
inline std::size_t scan_block_bytes() { return scan_block_bytes_setting().load(std::memory_order_relaxed); }

// Document ranges of a search over N documents with T threads and acc_size-byte
// accumulators: when the accumulators exceed two blocks, blocks of at most
// scan_block_bytes() (below that they stay in L2 whole, and splitting them only costs the
// boundaries: +8-10 % measured at 10^5 images, 800 KB, on one thread); at least T ranges, a
// multiple of T (each thread takes as many consecutive ranges), at most max(N, T).
inline std::size_t scan_ranges(std::size_t N, std::size_t T, std::size_t acc_size) {
  const std::size_t block = scan_block_bytes(), bytes = N * acc_size;
  std::size_t R = bytes > 2 * block ? (bytes + block - 1) / block : 1;
  R = std::max(R, T);
  R = (R + T - 1) / T * T;
  return std::max<std::size_t>(1, std::min(R, std::max<std::size_t>(N, T)));
}

using ScoredDoc = std::pair<double, std::uint32_t>;  // (score, document index)
inline bool better(const ScoredDoc& x, const ScoredDoc& y) {
  return x.first > y.first || (x.first == y.first && x.second < y.second);
}

// One pass adds the documents of [lo, hi) with a non-zero score (acc * inv_norm) to `heap`,
// the best `top` (descending score, then lower index) of these and of what it holds — the
// best of lower documents: a bounded heap whose root is the worst kept entry. Documents
// arrive in increasing index order, so an equal score never displaces a kept one. Returns
// how many documents of the range have a non-zero score.
template <class Acc>
std::size_t best_in_range(const Acc* acc, const double* inv_norm, std::size_t lo, std::size_t hi, std::size_t top,
                          std::vector<ScoredDoc>& heap) {
  heap.reserve(std::min<std::size_t>(top, hi - lo));
  std::size_t n_touched = 0;
  for (std::size_t d = lo; d < hi; ++d) {
    if (acc[d] == Acc(0)) continue;
    const double sc = static_cast<double>(acc[d]) * inv_norm[d];
    if (sc == 0.0) continue;  // underflow: scores 0 like the others
    ++n_touched;
    if (heap.size() < top) {
      heap.emplace_back(sc, static_cast<std::uint32_t>(d));
      std::push_heap(heap.begin(), heap.end(), better);
    } else if (top > 0 && sc > heap.front().first) {
      std::pop_heap(heap.begin(), heap.end(), better);
      heap.back() = {sc, static_cast<std::uint32_t>(d)};
      std::push_heap(heap.begin(), heap.end(), better);
    }
  }
  return n_touched;
}

// Merges the ranges' heaps into the best `top` (the same strict order gives exactly the
// serial result) and writes them: the positive scores, then the documents scoring 0
// (insertion order), then the negative scores. Returns the number of results written
// (min(top, N)).
template <class Acc>
std::size_t write_results(std::vector<std::vector<ScoredDoc>>& heaps, std::size_t n_touched, const Acc* acc,
                          const double* inv_norm, const std::int64_t* ids, std::size_t N, std::size_t top, std::int64_t* out_ids,
                          float* out_scores, double* out_exact) {
  std::vector<ScoredDoc>& best = heaps[0];
  for (std::size_t t = 1; t < heaps.size(); ++t) best.insert(best.end(), heaps[t].begin(), heaps[t].end());
  if (best.size() > top) {  // many ranges keep up to top each: select, then sort only those
    std::nth_element(best.begin(), best.begin() + static_cast<std::ptrdiff_t>(top), best.end(), better);
    best.resize(top);
  }
  std::sort(best.begin(), best.end(), better);
  std::size_t n_out = 0;
  auto emit = [&](std::size_t d, double score) {
    out_ids[n_out] = ids[d];
    out_scores[n_out] = static_cast<float>(score);
    if (out_exact != nullptr) out_exact[n_out] = score;
    ++n_out;
  };
  std::size_t k = 0;
  for (; k < best.size() && best[k].first > 0.0; ++k) emit(best[k].second, best[k].first);
  if (n_out < top && n_touched < N) {
    for (std::size_t d = 0; d < N && n_out < top; ++d)
      if (acc[d] == Acc(0) || static_cast<double>(acc[d]) * inv_norm[d] == 0.0) emit(d, 0.0);
  }
  for (; k < best.size() && n_out < top; ++k) emit(best[k].second, best[k].first);
  return n_out;
}

// A term-at-a-time search of `terms` (each with a .word) over N documents into dense Acc
// accumulators, the best `top` written to out_ids / out_scores / out_exact (optional);
// returns how many (min(top, N)). scan(term, begin, end, acc) adds the term's postings
// [begin, end) (indices into the posting arrays, documents ascending) to acc. The
// documents are split into contiguous ranges (scan_ranges: L2-sized blocks, at least one
// per thread); each of the T threads takes consecutive ranges and adds every term's
// postings of a range, in term order, before the next range — so every score is
// bit-identical to the single-threaded, single-range one; each thread keeps the best `top`
// of its ranges in one heap (its documents arrive in increasing order, as in one range) and
// the merge under the same strict order gives exactly the serial result. Where a
// term's list crosses a range boundary is found by an interpolated search, every term's
// guess prefetched first so that the cache misses overlap.
template <class Acc, class Term, class T, class DocOf, class Scan>
std::size_t term_at_a_time(const std::vector<Term>& terms, const T* postings, const std::uint64_t* offsets,
                           std::size_t N, std::size_t threads, const double* inv_norm, const std::int64_t* ids,
                           std::size_t top, DocOf doc_of, Scan scan, std::int64_t* out_ids, float* out_scores,
                           double* out_exact) {
  thread_local std::vector<Acc> acc;
  acc.assign(N, Acc(0));
  const std::size_t T_ = std::max<std::size_t>(1, threads);
  const std::size_t R = scan_ranges(N, T_, sizeof(Acc));
  std::vector<std::vector<ScoredDoc>> heaps(T_);  // one per worker (R >= T_: parallel_for runs T_)
  std::vector<std::size_t> touched(R, 0);
  Acc* a = acc.data();
  const std::size_t m = terms.size();
  // The first posting of term i with document >= the first document of range r.
  auto boundary = [&](std::size_t i, std::size_t r) -> std::uint64_t {
    const std::uint64_t b = offsets[terms[i].word], e = offsets[terms[i].word + 1];
    if (r == 0) return b;
    if (r >= R) return e;
    return b + lower_doc(postings + b, e - b, static_cast<std::uint32_t>(N * r / R), N, doc_of);
  };
  auto prefetch = [&](std::size_t r) {
    if (r == 0 || r >= R) return;
    for (std::size_t i = 0; i < m; ++i) {
      const std::uint64_t b = offsets[terms[i].word];
      prefetch_doc(postings + b, offsets[terms[i].word + 1] - b, static_cast<std::uint32_t>(N * r / R), N);
    }
  };
  parallel_for(R, static_cast<int>(T_), 1, [&](std::size_t rb, std::size_t re, int worker) {
    std::vector<ScoredDoc>& heap = heaps[static_cast<std::size_t>(worker)];
    std::vector<std::uint64_t> from(m), to(m);  // each term's postings in the current range
    prefetch(rb);
    for (std::size_t i = 0; i < m; ++i) from[i] = boundary(i, rb);
    for (std::size_t r = rb; r < re; ++r) {
      prefetch(r + 1);
      for (std::size_t i = 0; i < m; ++i) to[i] = boundary(i, r + 1);
      for (std::size_t i = 0; i < m; ++i) scan(terms[i], from[i], to[i], a);
      touched[r] = best_in_range(a, inv_norm, N * r / R, N * (r + 1) / R, top, heap);
      from.swap(to);
    }
  });
  std::size_t n_touched = 0;
  for (std::size_t t : touched) n_touched += t;
  return write_results(heaps, n_touched, a, inv_norm, ids, N, top, out_ids, out_scores, out_exact);
}

}  // namespace detail
}  // namespace roicore
