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
// remove(), the sizes, ids, idf and collection statistics come from PostingIndex
// (posting_index.h), shared with the Hamming-embedded EmbeddedInvertedFile.
//
// Thread safety. All methods may be called concurrently from any number of threads:
// searches and saves share a reader lock; add, remove and the lazy merge take it exclusively.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "roicore/posting_index.h"

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

class InvertedFile : public PostingIndex {
 public:
  static constexpr std::uint32_t kFormatVersion = 1;

  explicit InvertedFile(std::size_t vocab_size);
  ~InvertedFile() override;

  // Adds n documents. Document i has ids[i] and the words words[offsets[i] .. offsets[i+1])
  // with weights counts[...]. offsets: n + 1 values, offsets[0] == 0, non-decreasing,
  // offsets[n] == nnz. Repeated words within a document are summed. Everything is
  // validated before anything changes: new, unique ids; 0 <= word < vocab_size; finite
  // weights >= 0 (zero weights are dropped). Throws InvalidArgument.
  void add(const std::int64_t* ids, std::size_t n, const std::int64_t* offsets,
           const std::int64_t* words, const float* counts, std::size_t nnz);

  // Top min(top_n, size()) documents by descending score; ties (and documents sharing no
  // word with the query, score 0) in insertion order. Query words may repeat (summed);
  // words must be in [0, vocab_size) and weights finite >= 0.
  // threads (<= 0: the default): a search scanning at least kParallelSearchPostings
  // postings splits the documents over up to that many threads (at least
  // kParallelSearchDocs each); ids and scores are bit-identical for every thread count
  // and every document block (search_block_bytes, posting_index.h).
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

  // Bytes held: postings, per-word and per-document arrays, pending additions.
  std::size_t memory_bytes() const;

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

  void merge_pending() override;
  void refresh_weights() override;
  void compact(const std::vector<std::uint32_t>& renum) override;
  std::size_t pending_postings() const override { return pending_.size(); }
  void search_one(const std::int64_t* words, const float* counts, std::size_t m, std::size_t top_n,
                  std::int64_t* out_ids, float* out_scores, std::size_t& n_out, int threads,
                  double* out_exact = nullptr) const;
  void reserve_postings(std::size_t n);

  Posting* postings_ = nullptr;  // word_offsets_.back() entries
  std::vector<Pending> pending_;
};

}  // namespace roicore
