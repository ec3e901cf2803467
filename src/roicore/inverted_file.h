// roicore — inverted file with TF-IDF scoring (the paper's first stage, 3.2.4).
//
// Model. Each document (image) d is a bag of visual words with positive weights c_{d,t}
// (usually counts). With N documents and df_t the number of documents containing word t,
//   idf_t = ln(N / df_t)   (0 when df_t = 0),
//   v_d   = (c_{d,t} idf_t)_t / || (c_{d,t} idf_t)_t ||_2   (the zero vector if the norm is 0),
// the query is weighted the same way and score(q, d) = <v_q, v_d>. idf and the norms always
// reflect the current collection: adding or removing documents updates them (lazily, before
// the next search or save).
//
// Storage. Postings are (uint32 document index, float32 weight) = 8 bytes, grouped by word
// in one contiguous array (CSR) with uint64 offsets: 8 bytes per posting plus O(vocabulary)
// plus O(documents). Additions are buffered and merged in place (O(postings)) at the next
// search, save or remove, so adding in many small batches stays linear.
//
// Thread safety. All methods may be called concurrently from any number of threads:
// searches and saves share a reader lock; add, remove and the lazy merge take it exclusively.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace roicore {

// Below these sizes a search runs on the calling thread. Starting and joining a thread
// costs 50-80 us on the 2-core development VM and the split itself ~0.1 ms at 5k images,
// so splitting paid off only from ~1M postings scanned (~0.8 ms single-threaded): 1.6x at
// 20k images x 1k words, 2.1x at 100k x 1k, a loss at 5k x 2k (0.8M postings).
constexpr std::size_t kParallelSearchPostings = std::size_t{1} << 20;
constexpr std::size_t kParallelSearchDocs = 1024;

struct Posting {
  std::uint32_t doc;
  float weight;
};
static_assert(sizeof(Posting) == 8, "postings must stay 8 bytes");

class InvertedFile {
 public:
  static constexpr std::uint32_t kFormatVersion = 1;
  static constexpr std::size_t kMaxDocuments = 0xFFFFFFFEu;
  // Largest vocabulary: the per-word tables cost 16 bytes a word up front (offsets, idf), so
  // 2^26 words (67M, beyond the largest vocabularies in use) take ~1 GiB; more is refused
  // rather than allocated (a 2^31-word table would need 32 GiB before the first image).
  static constexpr std::size_t kMaxVocabulary = std::size_t{1} << 26;

  explicit InvertedFile(std::size_t vocab_size);
  ~InvertedFile();
  InvertedFile(const InvertedFile&) = delete;
  InvertedFile& operator=(const InvertedFile&) = delete;

  // Adds n documents. Document i has ids[i] and the words words[offsets[i] .. offsets[i+1])
  // with weights counts[...]. offsets: n + 1 values, offsets[0] == 0, non-decreasing,
  // offsets[n] == nnz. Repeated words within a document are summed. Everything is
  // validated before anything changes: new, unique ids; 0 <= word < vocab_size; finite
  // weights >= 0 (zero weights are dropped). Throws InvalidArgument.
  void add(const std::int64_t* ids, std::size_t n, const std::int64_t* offsets,
           const std::int64_t* words, const float* counts, std::size_t nnz);

  // Removes documents by id (all or nothing: an unknown id throws InvalidArgument).
  // O(postings). Returns the number of documents removed (duplicates count once).
  std::size_t remove(const std::int64_t* ids, std::size_t n);

  // Top min(top_n, size()) documents by descending score; ties (and documents sharing no
  // word with the query, score 0) in insertion order. Query words may repeat (summed);
  // words must be in [0, vocab_size) and weights finite >= 0.
  // threads (<= 0: the default): a search scanning at least kParallelSearchPostings
  // postings splits the documents over up to that many threads (at least
  // kParallelSearchDocs each); ids and scores are bit-identical for every thread count.
  // exact_scores (optional): the same scores in double precision, the key the results are
  // ordered by — what a merge of several files' results needs to reproduce that order.
  void search(const std::int64_t* words, const float* counts, std::size_t m, std::size_t top_n,
              std::vector<std::int64_t>& out_ids, std::vector<float>& out_scores, int threads = 1,
              std::vector<double>* exact_scores = nullptr) const;

  // nq queries in CSR form (qoffsets: nq + 1 values over words/counts). out_ids, out_scores:
  // nq * top_n, padded with -1 / -inf when the index holds fewer than top_n documents.
  void search_batch(const std::int64_t* qoffsets, std::size_t nq, const std::int64_t* words,
                    const float* counts, std::size_t nnz, std::size_t top_n, std::int64_t* out_ids,
                    float* out_scores, int threads) const;

  std::size_t size() const;
  std::size_t vocab_size() const { return vocab_size_; }
  std::size_t num_postings() const;
  // Bytes held: postings, per-word and per-document arrays, pending additions.
  std::size_t memory_bytes() const;
  bool contains(std::int64_t id) const;
  std::vector<std::int64_t> ids() const;                       // insertion order
  std::vector<std::uint32_t> document_frequencies() const;     // df_t, vocab_size values
  std::vector<double> idf() const;                             // idf_t, vocab_size values

  // Collection statistics set from outside, for one shard of a collection split over several
  // inverted files: with them, idf_t = ln(n_docs / df_t) uses the collection's n_docs and
  // df (vocab_size values) instead of this file's own, and so do the document norms — each
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

  // Versioned binary file (little-endian):
  //   header (64 bytes): magic "ROIRIVF\0", u32 version, u32 header size (64),
  //     u64 vocab_size, u64 n_docs, u64 n_postings, u32 flags (0), u32 reserved (0),
  //     u32 crc32(ids), u32 crc32(lengths), u32 crc32(postings), u32 crc32(header[0:60]);
  //   ids: n_docs x i64; lengths: vocab_size x u32 (postings per word);
  //   postings: n_postings x (u32 doc, f32 weight), grouped by word, docs ascending.
  // CRC-32 is zlib's. Written to a temporary file in the same directory, flushed with
  // fsync and renamed over `path`: a crash leaves either the old or the new file.
  void save(const std::string& path) const;
  // Reads and fully validates a file; throws FormatError (wrong magic, newer version,
  // truncated, checksum mismatch, inconsistent contents) or IoError.
  static std::unique_ptr<InvertedFile> load(const std::string& path);

 private:
  struct Pending {
    std::uint32_t word;
    std::uint32_t doc;
    float weight;
  };

  std::int64_t find(std::int64_t id) const;  // document index or -1 (caller holds a lock)
  void merge_pending();                      // caller holds the exclusive lock
  void refresh_weights();                    // idf and norms; exclusive lock
  template <class Fn>
  void with_ready(Fn&& fn) const;            // runs fn under a shared lock on merged state
  void search_one(const std::int64_t* words, const float* counts, std::size_t m, std::size_t top_n,
                  std::int64_t* out_ids, float* out_scores, std::size_t& n_out, int threads,
                  double* out_exact = nullptr) const;
  void reserve_postings(std::size_t n);

  std::size_t vocab_size_;
  std::vector<std::int64_t> ids_;
  bool ids_sorted_ = true;                        // ids_ strictly increasing: binary search
  std::unordered_map<std::int64_t, std::uint32_t> id_index_;  // only when !ids_sorted_
  std::vector<std::uint64_t> word_offsets_;       // vocab_size + 1
  Posting* postings_ = nullptr;                   // word_offsets_.back() entries
  std::vector<Pending> pending_;
  mutable std::vector<double> idf_;               // vocab_size
  mutable std::vector<double> inv_norm_;          // per document
  bool dirty_ = false;                            // pending additions or stale idf / norms
  bool external_stats_ = false;                   // idf from set_collection_stats
  std::uint64_t ext_docs_ = 0;                    // the collection's N (external_stats_)
  std::vector<std::uint64_t> ext_df_;             // the collection's df (external_stats_)
  mutable std::shared_mutex mu_;
};

}  // namespace roicore
