#include "roicore/posting_index.h"

#include <mutex>
#include <string>

#include "roicore/common.h"
#include "roicore/posting_search.h"

namespace roicore {

std::size_t search_block_bytes() { return detail::scan_block_bytes(); }

std::size_t set_search_block_bytes(std::size_t bytes) {
  const std::size_t previous = detail::scan_block_bytes();
  detail::set_scan_block_bytes(bytes);
  return previous;
}

PostingIndex::PostingIndex(std::size_t vocab_size) : vocab_size_(vocab_size) {
  detail::check_vocab_size(vocab_size, kMaxVocabulary);
  word_offsets_.assign(vocab_size + 1, 0);
  idf_.assign(vocab_size, 0.0);
}

void PostingIndex::check_images(const std::int64_t* ids, std::size_t n, const std::int64_t* offsets,
                                const std::int64_t* words, std::size_t nnz) const {
  detail::check_add_offsets(offsets, n, nnz);
  detail::check_words(words, nnz, vocab_size_);
  detail::DocIds::check_batch(ids, n);
}

void PostingIndex::note_added(std::size_t n) {
  inv_norm_.resize(docs_.size(), 0.0);
  if (n > 0) {
    dirty_ = true;
    stats_.clear();  // this shard's share changed: the owner sets them again
  }
  const std::size_t pending = pending_postings();  // the caller holds the exclusive lock
  if (pending >= kEagerMergePostings && pending >= word_offsets_.back() / 4) merge_pending();
}

std::size_t PostingIndex::remove(const std::int64_t* ids, std::size_t n) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  std::vector<char> gone;
  const std::size_t removed = docs_.mark(ids, n, gone);
  if (removed == 0) return 0;
  stats_.clear();  // this shard's share changed: the owner sets them again
  merge_pending();
  compact(docs_.remove_marked(gone));
  refresh_weights();
  dirty_ = false;
  return removed;
}

std::size_t PostingIndex::size() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return docs_.size();
}

std::size_t PostingIndex::num_postings() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return word_offsets_.back() + pending_postings();
}

std::size_t PostingIndex::shared_memory_bytes() const {
  return word_offsets_.capacity() * sizeof(std::uint64_t) + idf_.capacity() * sizeof(double) +
         inv_norm_.capacity() * sizeof(double) + stats_.memory_bytes() + docs_.memory_bytes();
}

bool PostingIndex::contains(std::int64_t id) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return docs_.find(id) >= 0;
}

std::vector<std::int64_t> PostingIndex::ids() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return docs_.ids();
}

std::vector<std::uint32_t> PostingIndex::document_frequencies() const {
  std::vector<std::uint32_t> df;
  with_ready([&] {
    df.resize(vocab_size_);
    for (std::size_t w = 0; w < vocab_size_; ++w)
      df[w] = static_cast<std::uint32_t>(word_offsets_[w + 1] - word_offsets_[w]);
  });
  return df;
}

std::vector<double> PostingIndex::idf() const {
  std::vector<double> out;
  with_ready([&] { out = idf_; });
  return out;
}

void PostingIndex::set_collection_stats(std::uint64_t n_docs, const std::uint64_t* df, std::size_t n) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  if (dirty_) merge_pending();
  stats_.set(n_docs, df, n, word_offsets_, docs_.size());
  refresh_weights();
}

void PostingIndex::clear_collection_stats() {
  std::unique_lock<std::shared_mutex> lk(mu_);
  if (!stats_.active()) return;
  stats_.clear();
  dirty_ = true;  // weights from this file's own statistics before the next search
}

bool PostingIndex::has_collection_stats() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return stats_.active();
}

std::uint64_t PostingIndex::stats_documents() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return stats_.documents(docs_.size());
}

// ------------------------------------------------------------------------------------
// the common start of the files
// ------------------------------------------------------------------------------------
void PostingIndex::write_lists(detail::FileWriter& out, unsigned char* header) const {
  const std::vector<std::int64_t>& ids = docs_.ids();
  std::uint32_t crc_ids = 0, crc_len = 0;
  out.write(ids.data(), ids.size() * sizeof(std::int64_t), &crc_ids);
  detail::write_lengths(out, word_offsets_, &crc_len);
  detail::put<std::uint64_t>(header + 16, vocab_size_);
  detail::put<std::uint64_t>(header + 24, ids.size());
  detail::put<std::uint64_t>(header + 32, word_offsets_.back());
  detail::put<std::uint32_t>(header + 48, crc_ids);
  detail::put<std::uint32_t>(header + 52, crc_len);
}

PostingIndex::FileSizes PostingIndex::read_sizes(const unsigned char* h, std::uint64_t max_postings,
                                                 const std::string& where) {
  const FileSizes s{detail::get<std::uint64_t>(h + 16), detail::get<std::uint64_t>(h + 24),
                    detail::get<std::uint64_t>(h + 32)};
  if (s.vocab_size == 0 || s.vocab_size > kMaxVocabulary || s.n_docs > kMaxDocuments || s.n_postings > max_postings)
    throw FormatError(where + "implausible sizes in header (vocab " + std::to_string(s.vocab_size) + ", images " +
                      std::to_string(s.n_docs) + ", postings " + std::to_string(s.n_postings) + ")");
  return s;
}

void PostingIndex::read_lists(detail::FileReader& in, const unsigned char* h, const FileSizes& s,
                              std::uint64_t posting_bytes, std::vector<std::int64_t>& ids,
                              std::vector<std::uint32_t>& lens, std::uint64_t padding) {
  in.expect_size(detail::get<std::uint32_t>(h + 12) + 8 * s.n_docs + 4 * s.vocab_size + posting_bytes * s.n_postings +
                 padding);
  ids.resize(s.n_docs);
  in.read_section(ids.data(), s.n_docs * 8, detail::get<std::uint32_t>(h + 48), "ids", "image-id");
  lens.resize(s.vocab_size);
  in.read_section(lens.data(), s.vocab_size * 4, detail::get<std::uint32_t>(h + 52), "lengths", "posting-length");
}

}  // namespace roicore
