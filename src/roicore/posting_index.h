// roicore — what both inverted files (InvertedFile: TF-IDF, inverted_file.h;
// EmbeddedInvertedFile: ASMK*, embedded_file.h) share: image ids, per-word posting lists in
// CSR form with idf and per-image norms from the file's own statistics or a collection's,
// additions merged lazily under a reader / writer lock, removal, and the sizes, ids and
// list lengths at the start of their files. Not used on its own.
//
// Thread safety. All methods may be called concurrently from any number of threads:
// reads share a reader lock; add, remove and the lazy merge take it exclusively.
#pragma once

#include <cstddef>
#include <cstdint>
#include <shared_mutex>
#include <string>
#include <vector>

#include "roicore/binary_file.h"
#include "roicore/posting_lists.h"

namespace roicore {

// Searches of both inverted files split the documents into ranges whose accumulators fit
// in a core's L2 cache (posting_search.h), this many bytes of accumulators each (default
// 512 KiB). Results are identical for every value; only the speed changes.
// set_search_block_bytes(0) restores the default; returns the previous value.
std::size_t search_block_bytes();
std::size_t set_search_block_bytes(std::size_t bytes);

class PostingIndex {
 public:
  static constexpr std::size_t kMaxDocuments = 0xFFFFFFFEu;
  // Largest vocabulary: the per-word tables cost 16 bytes a word up front (offsets, idf), so
  // 2^26 words (67M, beyond the largest vocabularies in use) take ~1 GiB; more is refused
  // rather than allocated (a 2^31-word table would need 32 GiB before the first image).
  static constexpr std::size_t kMaxVocabulary = std::size_t{1} << 26;
  // add() merges its buffer at once (instead of at the next search or save) when it holds at
  // least this many postings and at least a quarter of the merged ones: building a large
  // collection in batches never holds it twice (pending + merged), and the merges stay
  // geometric (amortised linear).
  static constexpr std::size_t kEagerMergePostings = std::size_t{1} << 20;

  virtual ~PostingIndex() = default;
  PostingIndex(const PostingIndex&) = delete;
  PostingIndex& operator=(const PostingIndex&) = delete;

  // Removes documents by id (all or nothing: an unknown id throws InvalidArgument).
  // O(postings). Returns the number of documents removed (duplicates count once).
  std::size_t remove(const std::int64_t* ids, std::size_t n);

  std::size_t size() const;
  std::size_t vocab_size() const { return vocab_size_; }
  std::size_t num_postings() const;  // merged and pending
  bool contains(std::int64_t id) const;
  std::vector<std::int64_t> ids() const;                    // insertion order
  std::vector<std::uint32_t> document_frequencies() const;  // df_t, vocab_size values
  std::vector<double> idf() const;                          // idf_t, vocab_size values

  // Collection statistics set from outside, for one shard of a collection split over several
  // files: with them, idf_t = ln(n_docs / df_t) uses the collection's n_docs and df
  // (vocab_size values) instead of this file's own, and so do the document norms — each
  // document then scores bit for bit as in one file holding the whole collection (same
  // query, same term order). Checked: df.size() == vocab_size, n_docs >= size(), and
  // df_t >= this file's own df_t (InvalidArgument otherwise; nothing changes). Not saved.
  // add() and remove() clear them (the shard's share changed; the owner sets them again),
  // so they can never silently go stale.
  void set_collection_stats(std::uint64_t n_docs, const std::uint64_t* df, std::size_t n);
  void clear_collection_stats();
  bool has_collection_stats() const;
  // The N and df the weights use now: the collection's when set, else this file's own.
  std::uint64_t stats_documents() const;

 protected:
  // The sizes at the start of every header: u64 vocab_size at 16, u64 n_docs at 24, u64
  // n_postings at 32 (then u32 flags at 40; u32 crc32(ids) at 48, u32 crc32(lengths) at 52).
  struct FileSizes {
    std::uint64_t vocab_size, n_docs, n_postings;
  };

  explicit PostingIndex(std::size_t vocab_size);  // InvalidArgument beyond kMaxVocabulary

  // With the exclusive lock held: moves pending additions into the lists, then
  // refresh_weights() and dirty_ = false.
  virtual void merge_pending() = 0;
  // With the exclusive lock held: idf_ and inv_norm_ from the lists and stats_.
  virtual void refresh_weights() = 0;
  // With the exclusive lock held, all merged: drops the postings of documents renumbered to
  // DocIds::kRemoved, renumbers the others, and sets word_offsets_ accordingly.
  virtual void compact(const std::vector<std::uint32_t>& renum) = 0;
  virtual std::size_t pending_postings() const = 0;

  // Runs fn under a shared lock on merged state (merging first when needed).
  template <class Fn>
  void with_ready(Fn&& fn) const {
    detail::when_ready(mu_, dirty_, [this] { const_cast<PostingIndex*>(this)->merge_pending(); }, fn);
  }
  // add(): the checks of ids, offsets and words before anything changes (no lock needed).
  void check_images(const std::int64_t* ids, std::size_t n, const std::int64_t* offsets, const std::int64_t* words,
                    std::size_t nnz) const;
  // add(), exclusive lock held: after `n` documents were pushed to docs_ and their postings
  // to the pending ones. Merges them at once past kEagerMergePostings (above).
  void note_added(std::size_t n);
  // Bytes of the state held here (not the postings).
  std::size_t shared_memory_bytes() const;

  // save(): the sizes into the header, then the ids and lengths sections (crc at 48, 52).
  void write_lists(detail::FileWriter& out, unsigned char* header) const;
  // load(): the sizes of a header that passed read_header, checked against the limits
  // (at most max_postings postings) — FormatError "implausible sizes" otherwise.
  static FileSizes read_sizes(const unsigned char* header, std::uint64_t max_postings, const std::string& where);
  // load(): reads the ids and lengths sections; the file holds `postings_bytes` more bytes
  // per posting after them, and `padding` bytes more, exactly.
  static void read_lists(detail::FileReader& in, const unsigned char* header, const FileSizes& s,
                         std::uint64_t posting_bytes, std::vector<std::int64_t>& ids,
                         std::vector<std::uint32_t>& lens, std::uint64_t padding = 0);
  // load(), after the postings: the lists' documents in range and strictly increasing
  // (doc_of(p)), bad(p) for what else a posting must satisfy (check_loaded_lists), the ids
  // unique; then the weights. FormatError otherwise.
  template <class DocOf, class Bad>
  void finish_load(std::vector<std::int64_t> ids, const std::vector<std::uint32_t>& lens, const FileSizes& s,
                   const std::string& where, DocOf doc_of, Bad bad) {
    detail::offsets_from_lengths(lens, s.n_docs, s.n_postings, word_offsets_, where);
    detail::check_loaded_lists(word_offsets_, s.n_docs, where, doc_of, bad);
    docs_.assign_loaded(std::move(ids), where);
    inv_norm_.assign(s.n_docs, 0.0);
    refresh_weights();
    dirty_ = false;
  }

  std::size_t vocab_size_;
  detail::DocIds docs_;                      // image ids, document index = position
  std::vector<std::uint64_t> word_offsets_;  // vocab_size + 1
  std::vector<double> idf_;                  // vocab_size
  std::vector<double> inv_norm_;             // per document
  bool dirty_ = false;                       // pending additions or stale idf / norms
  detail::CollectionStats stats_;            // N and df of the idf
  mutable std::shared_mutex mu_;
};

}  // namespace roicore
