// roicore — inverted file whose postings carry binary signatures, scored with the
// aggregated selective match kernel (ASMK*, Tolias, Avrithis, Jégou, ICCV 2013): the
// Hamming-embedded first stage.
//
// Model. Each document (image) d is a set of (visual word c, signature b_{d,c}) pairs, each
// word at most once (ASMK: one aggregated, binarised residual per image and word).
// Signatures have nbits bits (1 <= nbits <= 1024) in W = words_for_bits(nbits) uint64 words,
// laid out as in hamming.h (bit i = bit i % 64 of word i / 64); bits >= nbits are ignored
// (stored as zero). With N documents and df_c the number of documents holding word c,
//   idf_c     = ln(N / df_c)   (0 when df_c = 0), exactly as InvertedFile,
//   inv_norm_d = 1 / sqrt(sum_{c in d} idf_c)   (0 when the sum is 0): the kernel's
//               self-similarity normalisation, sigma(0) = 1.
// A query is m terms (word_t, signature q_t, weight_t); words may repeat (several images,
// query expansion), weights are finite >= 0 and not normalised here (the caller does).
// Per search, alpha > 0 and tau in [-1, 1): with h the Hamming distance over the nbits
// bits and u = 1 - 2h / nbits,
//   sigma(h) = sign(u) |u|^alpha  if u > tau,  else 0   (a double table over h = 0..nbits)
//   score_d  = inv_norm_d * sum_t weight_t * idf_{word_t} * sigma(h(q_t, b_{d,word_t})),
// the sum over the terms whose word d holds, accumulated in double word by word: words in
// the order of their first term; per posting, a word's terms summed in term order, then
// added to the document's accumulator (with distinct words, plain term order). Each list
// is read once however many terms share its word (an expanded query: ~40 bags, many
// repeating a word). idf and the norms always reflect the current collection (or the
// statistics set from outside, see set_collection_stats), updated lazily before the next
// search or save.
//
// Storage. Per word, a CSR list of postings as two parallel arrays, uint32 document index
// and W uint64 signature words: 4 + 8W bytes per posting (12 at 64 bits, 20 at 128), plus
// O(vocabulary) (16 bytes a word: offsets, idf) plus O(documents) (16 bytes an image: id,
// norm; more while ids arrive out of order). Postings of a word are sorted by document.
// The signatures (2/3 of the bytes at 64 bits, 4/5 at 128) can instead stay in the file
// they were loaded from, memory-mapped (load(path, true)): the process then holds 4 bytes
// a posting, and the signatures are pages of the operating system's file cache, shared by
// every process that maps the file and dropped under memory pressure instead of the
// process being killed (read back from disk when next scanned). Changing such an index
// (add, remove) first copies its signatures into memory.
// Additions are buffered and merged in place (O(postings)) at the next search, save or
// remove, so adding in many small batches stays linear; add() merges at once when the
// buffer reaches PostingIndex::kEagerMergePostings and a quarter of the merged postings,
// so a large build never holds its postings twice.
//
// Scan. A query term's run of postings is scored by the SIMD-dispatched core
// (hamming_kernels.h: accumulate; generic / popcnt / avx2 / avx512, chosen at run time or
// forced with set_simd_level): popcount, sigma lookup and update fused per posting at 64
// and 128 bits, the level's batch distance kernel beyond. Results are identical at every
// level; see benchmarks/README.md for what was measured.
//
// remove(), the sizes, ids, idf and collection statistics come from PostingIndex
// (posting_index.h), shared with InvertedFile.
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

// Below these sizes a search runs on the calling thread. A 64-bit posting costs about as
// much as one of InvertedFile (0.4-0.6 ns against 0.8 ns on the development VM: the fused
// popcount + table lookup + double update), so the same thresholds: a second thread lost
// below ~1M postings scanned there (thread start 50-80 us, the split ~0.1 ms).
constexpr std::size_t kParallelEmbeddedPostings = std::size_t{1} << 20;
constexpr std::size_t kParallelEmbeddedDocs = 1024;

class MappedFile;

class EmbeddedInvertedFile : public PostingIndex {
 public:
  // 2: zero padding before the signatures, which start at a multiple of 64 bytes (mappable).
  static constexpr std::uint32_t kFormatVersion = 2;
  static constexpr std::size_t kMaxBits = 1024;

  // vocab_size in [1, kMaxVocabulary], nbits in [1, kMaxBits] (InvalidArgument otherwise).
  EmbeddedInvertedFile(std::size_t vocab_size, std::size_t nbits);
  ~EmbeddedInvertedFile() override;

  // Adds n documents. Document i has ids[i] and the pairs j in [offsets[i], offsets[i+1]):
  // word words[j] with signature sigs[j * W .. (j + 1) * W). offsets: n + 1 values,
  // offsets[0] == 0, non-decreasing, offsets[n] == nnz; sigs: nnz * W words. Everything is
  // validated before anything changes: new, unique ids; 0 <= word < vocab_size; no word
  // twice within a document (any order). Bits >= nbits are stored as zero. Throws
  // InvalidArgument.
  void add(const std::int64_t* ids, std::size_t n, const std::int64_t* offsets, const std::int64_t* words,
           const std::uint64_t* sigs, std::size_t nnz);

  // Top min(top_n, size()) documents by descending score; ties in insertion order;
  // documents scoring 0 (sharing no word with the query, or every match below tau) fill
  // the list in insertion order after the positive scores, before any negative ones.
  // words: m values in [0, vocab_size); sigs: m * W words; weights: m values, finite >= 0;
  // alpha finite > 0; tau in [-1, 1) (InvalidArgument otherwise).
  // threads (<= 0: the default): a search scanning at least kParallelEmbeddedPostings
  // postings splits the documents over up to that many threads (at least
  // kParallelEmbeddedDocs each); ids and scores are bit-identical for every thread count
  // and every document block (search_block_bytes, posting_index.h).
  // exact_scores (optional): the same scores in double precision, the key the results are
  // ordered by — what a merge of several files' results needs to reproduce that order.
  // max_postings (0: no limit): a budget on the postings scanned, counted with the
  // collection's df (set_collection_stats) so that every shard of a collection scans the
  // same terms. When the terms that can score (weight x idf > 0) hold more, whole words are
  // scanned by descending sum of their terms' weight x idf, as many as fit
  // (detail::select_terms: at least one word), the rest skipped: scores are those of a
  // query made of the kept terms only (selected_terms says which).
  void search(const std::int64_t* words, const std::uint64_t* sigs, const float* weights, std::size_t m,
              std::size_t top_n, double alpha, double tau, std::vector<std::int64_t>& out_ids,
              std::vector<float>& out_scores, int threads = 1, std::vector<double>* exact_scores = nullptr,
              std::uint64_t max_postings = 0) const;

  // The terms search() with this budget scans: keep[t] = 1 for a scanned term, 0 for a
  // skipped one (and for a term that cannot score: weight or idf 0); m values. Returns the
  // postings the kept terms hold in the collection (its df when set, else this file's).
  std::uint64_t selected_terms(const std::int64_t* words, const float* weights, std::size_t m,
                               std::uint64_t max_postings, std::vector<char>& keep) const;

  // The pairs of one document: its words ascending and their signatures (words.size() * W
  // values). candidates (optional, n_candidates words in [0, vocab_size), any order, repeats
  // allowed): look only in these words' lists — the document's pairs whose word is among
  // them; a caller that knows the image's words (its feature geometry) passes them, and
  // the cost falls from the whole vocabulary to those lists (each found by an interpolated
  // probe, the next ones prefetched). Throws InvalidArgument for an unknown id or a
  // candidate out of range.
  void document(std::int64_t id, std::vector<std::int64_t>& words, std::vector<std::uint64_t>& sigs,
                const std::int64_t* candidates = nullptr, std::size_t n_candidates = 0) const;

  std::size_t nbits() const { return nbits_; }
  std::size_t words_per_signature() const { return W_; }
  // Bytes held in the process's memory: postings (their documents only when the
  // signatures are mapped), per-word and per-document arrays, pending additions.
  std::size_t memory_bytes() const;
  // Bytes of signatures read through a memory map of the file (load(path, true)), 0 when
  // they are in memory.
  std::size_t mapped_bytes() const;

  // Versioned binary file (little-endian):
  //   header (80 bytes): magic "ROIRASK\0", u32 version, u32 header size (80),
  //     u64 vocab_size, u64 n_docs, u64 n_postings, u32 flags (0), u32 nbits,
  //     u32 crc32(ids), u32 crc32(lengths), u32 crc32(documents), u32 crc32(signatures),
  //     12 reserved bytes (0), u32 crc32(header[0:76]);
  //   ids: n_docs x i64; lengths: vocab_size x u32 (postings per word);
  //   documents: n_postings x u32, grouped by word, ascending within a word;
  //   padding: zero bytes up to the next multiple of 64 bytes of the file (version 2);
  //   signatures: n_postings x W x u64, in the same order, bits >= nbits zero.
  // Version 1 files (no padding) are read too.
  // CRC-32 is zlib's. Written to a temporary file in the same directory, flushed with
  // fsync and renamed over `path`: a crash leaves either the old or the new file.
  void save(const std::string& path) const;
  // Reads and fully validates a file; throws FormatError (wrong magic, newer version,
  // truncated, checksum mismatch, non-zero padding, inconsistent contents: nbits out of
  // range, a document index out of range or twice in a word, bits set beyond nbits) or
  // IoError. map_signatures: map the signatures section read-only instead of reading it
  // (checked the same way, through the map: its CRC-32 read once, which also brings it into
  // the file cache) when the file lays it out at a multiple of 8 bytes — always in version
  // 2; a version 1 file whose section is not aligned is read (mapped_bytes() tells). The
  // file must not be changed in place while mapped (save() replaces a file by renaming a new
  // one over it, which a mapping survives; truncating it would fault the scan).
  static std::unique_ptr<EmbeddedInvertedFile> load(const std::string& path, bool map_signatures = false);

 private:
  struct Pending {
    std::uint32_t word;
    std::uint32_t doc;
  };

  void merge_pending() override;
  void refresh_weights() override;  // idf and the self-similarity norms
  void compact(const std::vector<std::uint32_t>& renum) override;
  std::size_t pending_postings() const override { return pending_.size(); }
  void reserve_postings(std::size_t n);
  void own_signatures();  // a mapped index copies its signatures into memory before a change
  std::uint64_t budget_terms(const std::int64_t* words, const float* weights, std::size_t m,
                             std::uint64_t max_postings, std::vector<std::size_t>& live, std::vector<double>& factor,
                             std::vector<char>& keep) const;

  std::size_t nbits_, W_;
  std::uint64_t tail_;                       // mask of the significant bits of the last word
  std::uint32_t* post_docs_ = nullptr;       // word_offsets_.back() documents
  std::uint64_t* post_sigs_ = nullptr;       // word_offsets_.back() * W signature words
  std::unique_ptr<MappedFile> sig_map_;      // when set, post_sigs_ points into it (read-only)
  std::vector<Pending> pending_;
  std::vector<std::uint64_t> pending_sigs_;  // pending_.size() * W
};

}  // namespace roicore
