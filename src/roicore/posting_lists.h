// roicore — internal: the bookkeeping every inverted file of roicore shares (the TF-IDF
// InvertedFile, the Hamming-embedded EmbeddedInvertedFile): image ids, argument checks,
// per-word posting lists in CSR form grown and compacted in place, idf from the file's own
// or a collection's statistics, and the lazy merge under a reader / writer lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "roicore/common.h"

namespace roicore {
namespace detail {

// Image ids in insertion order (document index = position), looked up by binary search
// while they arrive in increasing order, by a hash index once they do not.
class DocIds {
 public:
  std::size_t size() const { return ids_.size(); }
  const std::vector<std::int64_t>& ids() const { return ids_; }
  // Document index of id, or -1.
  std::int64_t find(std::int64_t id) const;
  // InvalidArgument when an id appears twice in ids[0..n).
  static void check_batch(const std::int64_t* ids, std::size_t n);
  // InvalidArgument when an id is already here or the total would exceed max_docs.
  void check_new(const std::int64_t* ids, std::size_t n, std::size_t max_docs) const;
  // Appends id (already checked); returns its document index.
  std::uint32_t push(std::int64_t id);
  // Marks the documents of ids[0..n) in gone (size() flags). All or nothing: an unknown id
  // throws InvalidArgument before anything is marked. Returns how many documents (each once).
  std::size_t mark(const std::int64_t* ids, std::size_t n, std::vector<char>& gone) const;
  // Drops the marked documents, keeping the order of the others. Returns the renumbering
  // old index -> new index (kRemoved for a dropped one).
  std::vector<std::uint32_t> remove_marked(const std::vector<char>& gone);
  // Takes the ids of a file being loaded (FormatError, prefixed by where, when one repeats).
  void assign_loaded(std::vector<std::int64_t> ids, const std::string& where);
  std::size_t memory_bytes() const;

  static constexpr std::uint32_t kRemoved = 0xFFFFFFFFu;

 private:
  std::vector<std::int64_t> ids_;
  bool sorted_ = true;                                   // ids_ strictly increasing
  std::unordered_map<std::int64_t, std::uint32_t> index_;  // only when !sorted_
};

// idf_w = ln(N / df_w) (0 when df_w = 0), with this file's own N and df or with those of a
// whole collection set from outside (set_collection_stats of the inverted files).
class CollectionStats {
 public:
  bool active() const { return active_; }
  // The N of the idf: the collection's when set, else own_docs.
  std::uint64_t documents(std::size_t own_docs) const { return active_ ? docs_ : own_docs; }
  // df_w: the collection's when set, else the length of list w under offsets.
  std::uint64_t df(std::size_t w, const std::vector<std::uint64_t>& offsets) const {
    return active_ ? df_[w] : offsets[w + 1] - offsets[w];
  }
  // Checks (InvalidArgument, nothing changes): n == vocabulary (offsets.size() - 1),
  // n_docs >= own_docs, own df_w <= df[w] <= n_docs. Then uses them.
  void set(std::uint64_t n_docs, const std::uint64_t* df, std::size_t n, const std::vector<std::uint64_t>& offsets,
           std::size_t own_docs);
  void clear();
  // idf of every word; own statistics: df_w = the length of list w, N = own_docs.
  void compute_idf(const std::vector<std::uint64_t>& offsets, std::size_t own_docs, std::vector<double>& idf) const;
  std::size_t memory_bytes() const { return df_.capacity() * sizeof(std::uint64_t); }

 private:
  bool active_ = false;
  std::uint64_t docs_ = 0;
  std::vector<std::uint64_t> df_;
};

// 1 <= vocab_size <= max_vocabulary (the per-word tables are allocated up front).
void check_vocab_size(std::size_t vocab_size, std::size_t max_vocabulary);
// CSR offsets of an add(): n + 1 values, offsets[0] == 0, non-decreasing, offsets[n] == nnz.
void check_add_offsets(const std::int64_t* offsets, std::size_t n, std::size_t nnz);
// Every word id in [0, vocab_size): "words[j] = x is not a word id in [0, V)".
void check_words(const std::int64_t* words, std::size_t n, std::size_t vocab_size);
// Every weight finite and >= 0: "<name>[j] = x must be finite and >= 0".
void check_weights(const float* weights, std::size_t n, const char* name);

// Offsets after adding the pending postings (each with a .word) at the ends of their lists.
template <class P>
std::vector<std::uint64_t> grown_offsets(const std::vector<std::uint64_t>& offsets, const std::vector<P>& pending) {
  const std::size_t V = offsets.size() - 1;
  std::vector<std::uint64_t> grown(V + 1, 0);
  for (const P& p : pending) ++grown[p.word + 1];
  for (std::size_t w = 0; w < V; ++w) grown[w + 1] += grown[w] + (offsets[w + 1] - offsets[w]);
  return grown;
}

// Moves every list from its place under `offsets` to its place under `grown` (storage
// already large enough), last word first: a list only moves towards the end, into space no
// unmoved list occupies. move(from, to, len) moves len postings. Returns, per word, where
// its new postings go (just after its old ones).
template <class Move>
std::vector<std::uint64_t> spread_lists(const std::vector<std::uint64_t>& offsets,
                                        const std::vector<std::uint64_t>& grown, Move move) {
  const std::size_t V = offsets.size() - 1;
  for (std::size_t w = V; w-- > 0;) {
    const std::uint64_t b = offsets[w], len = offsets[w + 1] - b;
    if (len > 0 && grown[w] != b) move(b, grown[w], len);
  }
  std::vector<std::uint64_t> cursor(V);
  for (std::size_t w = 0; w < V; ++w) cursor[w] = grown[w] + (offsets[w + 1] - offsets[w]);
  return cursor;
}

// Drops, in place and list by list, the postings whose document renum maps to
// DocIds::kRemoved. doc_of(p): the document of posting p; keep(from, to, new_doc) copies
// posting `from` to slot `to` (to <= from) renumbered. Returns the new offsets.
template <class DocOf, class Keep>
std::vector<std::uint64_t> compact_lists(const std::vector<std::uint64_t>& offsets,
                                         const std::vector<std::uint32_t>& renum, DocOf doc_of, Keep keep) {
  const std::size_t V = offsets.size() - 1;
  std::vector<std::uint64_t> out_offsets(V + 1, 0);
  std::uint64_t out = 0;
  for (std::size_t w = 0; w < V; ++w) {
    for (std::uint64_t p = offsets[w]; p < offsets[w + 1]; ++p) {
      const std::uint32_t nd = renum[doc_of(p)];
      if (nd != DocIds::kRemoved) keep(p, out++, nd);
    }
    out_offsets[w + 1] = out;
  }
  return out_offsets;
}

// Runs fn under a shared lock on up-to-date state: while `dirty` (pending additions, stale
// weights), merge() runs first under the exclusive lock.
template <class Merge, class Fn>
void when_ready(std::shared_mutex& mu, const bool& dirty, Merge&& merge, Fn&& fn) {
  for (;;) {
    {
      std::shared_lock<std::shared_mutex> lk(mu);
      if (!dirty) {
        fn();
        return;
      }
    }
    std::unique_lock<std::shared_mutex> lk(mu);
    if (dirty) merge();
  }
}

// Checks the lists of a file being loaded: documents below n_docs and strictly increasing
// in every list (so no image holds a word twice); bad(p) returns what else is wrong with
// posting p ("have a non-finite weight") or nullptr. FormatError, prefixed by where,
// naming the word.
template <class DocOf, class Bad>
void check_loaded_lists(const std::vector<std::uint64_t>& offsets, std::uint64_t n_docs, const std::string& where,
                        DocOf doc_of, Bad bad) {
  for (std::size_t w = 0; w + 1 < offsets.size(); ++w) {
    std::int64_t prev = -1;
    for (std::uint64_t p = offsets[w]; p < offsets[w + 1]; ++p) {
      const std::uint32_t doc = doc_of(p);
      if (doc >= n_docs || static_cast<std::int64_t>(doc) <= prev)
        throw FormatError(where + "postings of word " + std::to_string(w) + " are out of range or out of order");
      if (const char* what = bad(p)) throw FormatError(where + "postings of word " + std::to_string(w) + " " + what);
      prev = doc;
    }
  }
}

// The terms a budgeted search scans (keep[t] = 1), given each term's word, factor (weight x
// idf, > 0) and cost (the collection's df of its word): when the costs add up to more than
// max_postings (> 0), whole words are taken -- all of a word's terms or none -- by
// descending importance (the sum of their terms' factors, summed in term order; ties: the
// word that appears first) while their cost (the sum of their terms') fits; the others are
// skipped; at least one word is kept. Depends only on words, factors and collection costs,
// so every shard of a collection keeps the same terms.
std::vector<char> select_terms(const std::vector<std::size_t>& word, const std::vector<double>& factor,
                               const std::vector<std::uint64_t>& cost, std::uint64_t max_postings);

// Grows a malloc'ed array to n elements of T (std::bad_alloc when it cannot); n == 0 keeps it.
void* grow_array(void* p, std::size_t n, std::size_t elem_size);

}  // namespace detail
}  // namespace roicore
