// roicore — internal: the parts of a term-at-a-time search that every inverted file of
// roicore shares: splitting the documents into ranges over threads (where each term's
// sorted posting list crosses a range boundary), the top-N of a range by a bounded heap,
// and the merge that writes the results. Templates over the posting type (a struct with
// the document, or a bare document array) and over the accumulator type.
//
// Order of results: descending score, ties by document index (insertion order). Documents
// scoring exactly 0 (sharing nothing with the query, or adding up to 0) are not kept in the
// heaps: they fill the list in insertion order after the positive scores and before any
// negative ones.
#pragma once

#include <algorithm>
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

// Where each term's postings cross the range boundaries: cut[i * (T + 1) + t] is the
// first posting (an index into the posting arrays) of term i (whose list is
// [offsets[terms[i].word], offsets[terms[i].word + 1])) with document >= N * t / T. Found
// up front on this thread, after prefetching every interpolated guess, so the lookups'
// cache misses overlap instead of running one after another inside the workers.
template <class Term, class T, class DocOf>
void find_range_cuts(const std::vector<Term>& terms, const T* postings, const std::uint64_t* offsets, std::size_t T_,
                     std::size_t N, std::vector<std::uint64_t>& cut, DocOf doc_of) {
  cut.resize(terms.size() * (T_ + 1));
  for (const Term& term : terms) {
    const T* b = postings + offsets[term.word];
    const std::size_t len = offsets[term.word + 1] - offsets[term.word];
    for (std::size_t t = 1; t < T_ && len > 0; ++t) __builtin_prefetch(b + std::min(len - 1, len * t / T_));
  }
  for (std::size_t i = 0; i < terms.size(); ++i) {
    const std::uint64_t b = offsets[terms[i].word], e = offsets[terms[i].word + 1];
    std::uint64_t* c = &cut[i * (T_ + 1)];
    c[0] = b;
    c[T_] = e;
    for (std::size_t t = 1; t < T_; ++t)
      c[t] = c[t - 1] + lower_doc(postings + c[t - 1], e - c[t - 1], static_cast<std::uint32_t>(N * t / T_), N, doc_of);
  }
}

using ScoredDoc = std::pair<double, std::uint32_t>;  // (score, document index)
inline bool better(const ScoredDoc& x, const ScoredDoc& y) {
  return x.first > y.first || (x.first == y.first && x.second < y.second);
}

// One pass keeps the best `top` documents of [lo, hi) with a non-zero score (acc *
// inv_norm, descending, then lower index): a bounded heap whose root is the worst kept
// entry. Documents arrive in increasing index order, so an equal score never displaces a
// kept one. Returns how many documents of the range have a non-zero score.
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
  std::sort(best.begin(), best.end(), better);
  if (best.size() > top) best.resize(top);
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
// [begin, end) (indices into the posting arrays, documents ascending) to acc. With T > 1
// the documents are split into T contiguous ranges, one per thread: each thread adds every
// term's postings for its own documents in the same term order, so every score is
// bit-identical to the single-threaded one; each range keeps its own best `top` and the
// merge under the same strict order gives exactly the serial result.
template <class Acc, class Term, class T, class DocOf, class Scan>
std::size_t term_at_a_time(const std::vector<Term>& terms, const T* postings, const std::uint64_t* offsets,
                           std::size_t N, std::size_t threads, const double* inv_norm, const std::int64_t* ids,
                           std::size_t top, DocOf doc_of, Scan scan, std::int64_t* out_ids, float* out_scores,
                           double* out_exact) {
  thread_local std::vector<Acc> acc;  // N values stay in L2 up to ~250k-500k images
  acc.assign(N, Acc(0));
  const std::size_t T_ = threads;
  std::vector<std::vector<ScoredDoc>> heaps(T_);
  std::vector<std::size_t> touched(T_, 0);
  std::vector<std::uint64_t> cut;  // range boundaries of every term's postings (T_ > 1)
  if (T_ > 1) find_range_cuts(terms, postings, offsets, T_, N, cut, doc_of);
  Acc* a = acc.data();
  parallel_for(T_, static_cast<int>(T_), 1, [&](std::size_t tb, std::size_t te, int) {
    for (std::size_t t = tb; t < te; ++t) {
      for (std::size_t i = 0; i < terms.size(); ++i) {
        const std::size_t w = terms[i].word;
        const std::uint64_t b = T_ > 1 ? cut[i * (T_ + 1) + t] : offsets[w];
        const std::uint64_t e = T_ > 1 ? cut[i * (T_ + 1) + t + 1] : offsets[w + 1];
        scan(terms[i], b, e, a);
      }
      touched[t] = best_in_range(a, inv_norm, N * t / T_, N * (t + 1) / T_, top, heaps[t]);
    }
  });
  std::size_t n_touched = 0;
  for (std::size_t t : touched) n_touched += t;
  return write_results(heaps, n_touched, a, inv_norm, ids, N, top, out_ids, out_scores, out_exact);
}

}  // namespace detail
}  // namespace roicore
