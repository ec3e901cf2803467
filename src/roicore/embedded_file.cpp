#include "roicore/embedded_file.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <utility>
#include <vector>

#include "roicore/binary_file.h"
#include "roicore/common.h"
#include "roicore/checksum.h"
#include "roicore/hamming_kernels.h"
#include "roicore/mapped_file.h"
#include "roicore/parallel.h"
#include "roicore/posting_search.h"

namespace roicore {

namespace {

constexpr std::size_t kHeaderSize = 80;
constexpr detail::FileFormat kFormat{{'R', 'O', 'I', 'R', 'A', 'S', 'K', '\0'},
                                     "embedded inverted file",
                                     EmbeddedInvertedFile::kFormatVersion,
                                     kHeaderSize};

std::string str(std::size_t v) { return std::to_string(v); }

// Version 2 aligns the signatures section: zero bytes after the documents section up to the
// next multiple of kSignatureAlign bytes of the file.
constexpr std::uint64_t kSignatureAlign = 64;
std::uint64_t signature_padding(std::uint64_t n_docs, std::uint64_t vocab_size, std::uint64_t n_postings) {
  const std::uint64_t end = kHeaderSize + 8 * n_docs + 4 * vocab_size + 4 * n_postings;
  return (kSignatureAlign - end % kSignatureAlign) % kSignatureAlign;
}

}  // namespace

EmbeddedInvertedFile::EmbeddedInvertedFile(std::size_t vocab_size, std::size_t nbits)
    : PostingIndex(vocab_size), nbits_(nbits), W_(words_for_bits(nbits)), tail_(tail_mask_for_bits(nbits)) {
  if (nbits < 1 || nbits > kMaxBits)
    throw InvalidArgument("nbits must be in [1, " + str(kMaxBits) + "], got " + str(nbits));
}

EmbeddedInvertedFile::~EmbeddedInvertedFile() {
  std::free(post_docs_);
  if (!sig_map_) std::free(post_sigs_);
}

void EmbeddedInvertedFile::own_signatures() {
  if (!sig_map_) return;
  const std::size_t words = word_offsets_.back() * W_;
  auto* own = static_cast<std::uint64_t*>(detail::grow_array(nullptr, words, sizeof(std::uint64_t)));
  if (words > 0) std::memcpy(own, post_sigs_, words * sizeof(std::uint64_t));
  post_sigs_ = own;
  sig_map_.reset();
}

void EmbeddedInvertedFile::reserve_postings(std::size_t n) {
  own_signatures();
  post_docs_ = static_cast<std::uint32_t*>(detail::grow_array(post_docs_, n, sizeof(std::uint32_t)));
  post_sigs_ = static_cast<std::uint64_t*>(detail::grow_array(post_sigs_, n, W_ * sizeof(std::uint64_t)));
}

namespace {
// No word twice within one document: InvalidArgument naming the second occurrence.
void check_unique_words(const std::int64_t* ids, std::size_t n, const std::int64_t* offsets,
                        const std::int64_t* words) {
  std::vector<std::pair<std::int64_t, std::int64_t>> bag;  // (word, position)
  for (std::size_t i = 0; i < n; ++i) {
    bag.clear();
    for (std::int64_t j = offsets[i]; j < offsets[i + 1]; ++j) bag.emplace_back(words[j], j);
    std::sort(bag.begin(), bag.end());
    for (std::size_t k = 1; k < bag.size(); ++k)
      if (bag[k].first == bag[k - 1].first)
        throw InvalidArgument("words[" + std::to_string(bag[k].second) + "] = " + std::to_string(bag[k].first) +
                              " repeats a word of image id " + std::to_string(ids[i]) +
                              " (each word at most once per image: one aggregated signature per word)");
  }
}
}  // namespace

void EmbeddedInvertedFile::add(const std::int64_t* ids, std::size_t n, const std::int64_t* offsets,
                               const std::int64_t* words, const std::uint64_t* sigs, std::size_t nnz) {
  // ---- validation, before any change ----
  check_images(ids, n, offsets, words, nnz);
  check_unique_words(ids, n, offsets, words);

  std::unique_lock<std::shared_mutex> lk(mu_);
  docs_.check_new(ids, n, kMaxDocuments);

  // ---- commit ---- (no exact reserve: many small batches keep the vectors' geometric growth)
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t doc = docs_.push(ids[i]);
    for (std::int64_t j = offsets[i]; j < offsets[i + 1]; ++j) {
      pending_.push_back({static_cast<std::uint32_t>(words[j]), doc});
      const std::uint64_t* s = sigs + static_cast<std::size_t>(j) * W_;
      pending_sigs_.insert(pending_sigs_.end(), s, s + W_);
      pending_sigs_.back() &= tail_;
    }
  }
  note_added(n);
}

void EmbeddedInvertedFile::merge_pending() {
  if (!pending_.empty()) {
    std::vector<std::uint64_t> new_offsets = detail::grown_offsets(word_offsets_, pending_);
    reserve_postings(new_offsets[vocab_size_]);
    const std::size_t W = W_;
    std::vector<std::uint64_t> cursor =
        detail::spread_lists(word_offsets_, new_offsets, [&](std::uint64_t from, std::uint64_t to, std::uint64_t len) {
          std::memmove(post_docs_ + to, post_docs_ + from, len * sizeof(std::uint32_t));
          std::memmove(post_sigs_ + to * W, post_sigs_ + from * W, len * W * sizeof(std::uint64_t));
        });
    // Append the new postings (stable by document, so each list stays sorted).
    for (std::size_t k = 0; k < pending_.size(); ++k) {
      const std::uint64_t p = cursor[pending_[k].word]++;
      post_docs_[p] = pending_[k].doc;
      std::memcpy(post_sigs_ + p * W, pending_sigs_.data() + k * W, W * sizeof(std::uint64_t));
    }
    word_offsets_.swap(new_offsets);
    std::vector<Pending>().swap(pending_);
    std::vector<std::uint64_t>().swap(pending_sigs_);
  }
  refresh_weights();
  dirty_ = false;
}

void EmbeddedInvertedFile::refresh_weights() {
  const std::size_t N = docs_.size();
  stats_.compute_idf(word_offsets_, N, idf_);
  std::vector<double> self(N, 0.0);  // sum of idf over the document's words
  for (std::size_t w = 0; w < vocab_size_; ++w) {
    const double idf = idf_[w];
    if (idf == 0.0) continue;
    for (std::uint64_t p = word_offsets_[w]; p < word_offsets_[w + 1]; ++p) self[post_docs_[p]] += idf;
  }
  inv_norm_.resize(N);
  for (std::size_t d = 0; d < N; ++d) inv_norm_[d] = self[d] > 0.0 ? 1.0 / std::sqrt(self[d]) : 0.0;
}

void EmbeddedInvertedFile::compact(const std::vector<std::uint32_t>& renum) {
  own_signatures();
  const std::size_t W = W_;
  std::vector<std::uint64_t> new_offsets = detail::compact_lists(
      word_offsets_, renum, [&](std::uint64_t p) { return post_docs_[p]; },
      [&](std::uint64_t from, std::uint64_t to, std::uint32_t doc) {
        post_docs_[to] = doc;
        if (to != from) std::memcpy(post_sigs_ + to * W, post_sigs_ + from * W, W * sizeof(std::uint64_t));
      });
  word_offsets_.swap(new_offsets);
  reserve_postings(word_offsets_.back());  // shrink
}

// ------------------------------------------------------------------------------------
// search
// ------------------------------------------------------------------------------------
namespace {

// The query terms of one word that can score: a posting of the word adds
// sum_j factor[j] * sigma(h(sig_j, posting)) to its document (the word's list read once).
struct EmbeddedTerm {
  std::size_t word;
  const std::uint64_t* sig;  // m * W words, term j at sig + j * W
  const double* factor;      // m values, weight * idf
  std::size_t m;
};

// The kept terms (live[i] with keep[i]) of words that hold postings, grouped by word: words
// in the order of their first term, a word's terms in term order; their signatures and
// factors gathered into sig_buf / factor_buf, which the returned groups point into.
std::vector<EmbeddedTerm> group_by_word(const std::int64_t* words, const std::uint64_t* sigs, std::size_t W,
                                        const std::vector<std::size_t>& live, const std::vector<double>& factor,
                                        const std::vector<char>& keep, const std::vector<std::uint64_t>& offsets,
                                        std::vector<std::uint64_t>& sig_buf, std::vector<double>& factor_buf) {
  // word -> group + 1 (0: none yet); per thread, sized to the vocabulary once and left all
  // zero after each call, so grouping costs O(terms) with no hashing.
  thread_local std::vector<std::uint32_t> group_of;
  if (group_of.size() < offsets.size() - 1) group_of.assign(offsets.size() - 1, 0);
  std::vector<std::size_t> group_word, count, order;  // order: live positions by group
  std::vector<std::size_t> group_at(live.size());
  for (std::size_t i = 0; i < live.size(); ++i) {
    const auto w = static_cast<std::size_t>(words[live[i]]);
    if (!keep[i] || offsets[w + 1] == offsets[w]) continue;
    if (group_of[w] == 0) {
      group_word.push_back(w);
      count.push_back(0);
      group_of[w] = static_cast<std::uint32_t>(group_word.size());
    }
    group_at[i] = group_of[w] - 1;
    ++count[group_at[i]];
    order.push_back(i);
  }
  for (std::size_t w : group_word) group_of[w] = 0;
  std::vector<std::size_t> start(group_word.size() + 1, 0);
  for (std::size_t g = 0; g < group_word.size(); ++g) start[g + 1] = start[g] + count[g];
  sig_buf.resize(start.back() * W);
  factor_buf.resize(start.back());
  std::vector<std::size_t> fill(start.begin(), start.end() - 1);
  for (std::size_t i : order) {  // ascending i: a word's terms stay in term order
    const std::size_t slot = fill[group_at[i]]++;
    std::copy(sigs + live[i] * W, sigs + (live[i] + 1) * W, sig_buf.begin() + static_cast<std::ptrdiff_t>(slot * W));
    factor_buf[slot] = factor[i];
  }
  std::vector<EmbeddedTerm> terms(group_word.size());
  for (std::size_t g = 0; g < group_word.size(); ++g)
    terms[g] = {group_word[g], sig_buf.data() + start[g] * W, factor_buf.data() + start[g], count[g]};
  return terms;
}

// sigma(h) for h = 0..nbits: sign(u) |u|^alpha where u = 1 - 2h / nbits > tau, else 0.
std::vector<double> sigma_table(std::size_t nbits, double alpha, double tau) {
  std::vector<double> sigma(nbits + 1);
  for (std::size_t h = 0; h <= nbits; ++h) {
    const double u = 1.0 - 2.0 * static_cast<double>(h) / static_cast<double>(nbits);
    sigma[h] = u > tau ? (u > 0.0 ? std::pow(u, alpha) : (u < 0.0 ? -std::pow(-u, alpha) : 0.0)) : 0.0;
  }
  return sigma;
}

std::uint32_t doc_index(std::uint32_t d) { return d; }
}  // namespace

// With the reader lock held: the terms that can score (weight x idf > 0, the same in every
// shard of a collection), their factors, and which of them a budget of max_postings keeps
// (detail::select_terms, by the collection's df). Returns the collection postings kept.
std::uint64_t EmbeddedInvertedFile::budget_terms(const std::int64_t* words, const float* weights, std::size_t m,
                                                 std::uint64_t max_postings, std::vector<std::size_t>& live,
                                                 std::vector<double>& factor, std::vector<char>& keep) const {
  std::vector<std::uint64_t> cost;
  std::vector<std::size_t> word;
  for (std::size_t t = 0; t < m; ++t) {
    const auto w = static_cast<std::size_t>(words[t]);
    const double f = static_cast<double>(weights[t]) * idf_[w];
    if (f == 0.0) continue;
    live.push_back(t);
    word.push_back(w);
    factor.push_back(f);
    cost.push_back(stats_.df(w, word_offsets_));
  }
  keep = detail::select_terms(word, factor, cost, max_postings);
  std::uint64_t kept = 0;
  for (std::size_t i = 0; i < live.size(); ++i) kept += keep[i] ? cost[i] : 0;
  return kept;
}

std::uint64_t EmbeddedInvertedFile::selected_terms(const std::int64_t* words, const float* weights, std::size_t m,
                                                   std::uint64_t max_postings, std::vector<char>& keep_out) const {
  detail::check_words(words, m, vocab_size_);
  detail::check_weights(weights, m, "weights");
  std::uint64_t kept = 0;
  keep_out.assign(m, 0);
  with_ready([&] {
    std::vector<std::size_t> live;
    std::vector<double> factor;
    std::vector<char> keep;
    kept = budget_terms(words, weights, m, max_postings, live, factor, keep);
    for (std::size_t i = 0; i < live.size(); ++i) keep_out[live[i]] = keep[i];
  });
  return kept;
}

void EmbeddedInvertedFile::search(const std::int64_t* words, const std::uint64_t* sigs, const float* weights,
                                  std::size_t m, std::size_t top_n, double alpha, double tau,
                                  std::vector<std::int64_t>& out_ids, std::vector<float>& out_scores, int threads,
                                  std::vector<double>* exact_scores, std::uint64_t max_postings) const {
  detail::check_words(words, m, vocab_size_);
  detail::check_weights(weights, m, "weights");
  if (!(alpha > 0.0) || !std::isfinite(alpha))
    throw InvalidArgument("alpha (the selectivity exponent) must be finite and > 0, got " + std::to_string(alpha));
  if (!(tau >= -1.0 && tau < 1.0))
    throw InvalidArgument("tau (the similarity threshold) must be in [-1, 1), got " + std::to_string(tau));
  const std::vector<double> sigma = sigma_table(nbits_, alpha, tau);
  const int T_req = resolve_threads(threads);
  with_ready([&] {
    const std::size_t N = docs_.size(), W = W_;
    std::vector<std::size_t> live;
    std::vector<double> factor;
    std::vector<char> keep;
    budget_terms(words, weights, m, max_postings, live, factor, keep);
    std::vector<std::uint64_t> sig_buf;
    std::vector<double> factor_buf;
    const std::vector<EmbeddedTerm> terms =
        group_by_word(words, sigs, W, live, factor, keep, word_offsets_, sig_buf, factor_buf);
    std::size_t scanned = 0;
    for (const EmbeddedTerm& t : terms) scanned += word_offsets_[t.word + 1] - word_offsets_[t.word];

    // Word at a time into dense double accumulators (posting_search.h).
    const std::size_t top = std::min(top_n, N);
    const std::size_t T = detail::search_threads(T_req, scanned, N, kParallelEmbeddedPostings, kParallelEmbeddedDocs);
    const double* sg = sigma.data();
    const auto& K = detail::active_kernels();
    out_ids.resize(top);
    out_scores.resize(top);
    if (exact_scores != nullptr) exact_scores->resize(top);
    detail::term_at_a_time<double>(
        terms, post_docs_, word_offsets_.data(), N, T, inv_norm_.data(), docs_.ids().data(), top, doc_index,
        [&](const EmbeddedTerm& term, std::uint64_t b, std::uint64_t e, double* acc) {
          K.accumulate(term.sig, term.factor, term.m, post_sigs_ + b * W, post_docs_ + b,
                       static_cast<std::size_t>(e - b), W, tail_, sg, acc);
        },
        out_ids.data(), out_scores.data(), exact_scores != nullptr ? exact_scores->data() : nullptr);
  });
}

void EmbeddedInvertedFile::document(std::int64_t id, std::vector<std::int64_t>& words,
                                    std::vector<std::uint64_t>& sigs, const std::int64_t* candidates,
                                    std::size_t n_candidates) const {
  words.clear();
  sigs.clear();
  std::vector<std::int64_t> look;  // the words whose lists are searched, ascending
  if (candidates != nullptr) {
    detail::check_words(candidates, n_candidates, vocab_size_);
    look.assign(candidates, candidates + n_candidates);
    std::sort(look.begin(), look.end());
    look.erase(std::unique(look.begin(), look.end()), look.end());
  }
  with_ready([&] {
    const std::int64_t d = docs_.find(id);
    if (d < 0) throw InvalidArgument("image id " + std::to_string(id) + " is not in the index");
    const auto doc = static_cast<std::uint32_t>(d);
    const std::size_t N = docs_.size();
    const std::size_t n_look = candidates != nullptr ? look.size() : vocab_size_;
    auto word_at = [&](std::size_t i) { return candidates != nullptr ? static_cast<std::size_t>(look[i]) : i; };
    auto identity = [](std::uint32_t x) { return x; };
    constexpr std::size_t kAhead = 8;  // lists whose interpolated probe is in flight
    auto prefetch = [&](std::size_t i) {
      const std::size_t w = word_at(i);
      detail::prefetch_doc(post_docs_ + word_offsets_[w], word_offsets_[w + 1] - word_offsets_[w], doc, N);
    };
    for (std::size_t i = 0; i < std::min(kAhead, n_look); ++i) prefetch(i);
    for (std::size_t i = 0; i < n_look; ++i) {
      if (i + kAhead < n_look) prefetch(i + kAhead);
      const std::size_t w = word_at(i);
      const std::uint32_t* b = post_docs_ + word_offsets_[w];
      const std::size_t len = word_offsets_[w + 1] - word_offsets_[w];
      const std::size_t k = detail::lower_doc(b, len, doc, N, identity);
      if (k == len || b[k] != doc) continue;
      words.push_back(static_cast<std::int64_t>(w));
      const std::uint64_t* s = post_sigs_ + static_cast<std::size_t>(b + k - post_docs_) * W_;
      sigs.insert(sigs.end(), s, s + W_);
    }
  });
}

std::size_t EmbeddedInvertedFile::memory_bytes() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  const std::size_t sig_bytes = sig_map_ ? 0 : W_ * sizeof(std::uint64_t);
  return word_offsets_.back() * (sizeof(std::uint32_t) + sig_bytes) + pending_.capacity() * sizeof(Pending) +
         pending_sigs_.capacity() * sizeof(std::uint64_t) + shared_memory_bytes();
}

std::size_t EmbeddedInvertedFile::mapped_bytes() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return sig_map_ ? word_offsets_.back() * W_ * sizeof(std::uint64_t) : 0;
}

// ------------------------------------------------------------------------------------
// persistence
// ------------------------------------------------------------------------------------
void EmbeddedInvertedFile::save(const std::string& path) const {
  detail::require_little_endian();
  with_ready([&] {
    detail::write_file_atomically(path, kFormat, [&](detail::FileWriter& out, unsigned char* header) {
      write_lists(out, header);
      const std::uint64_t nnz = word_offsets_.back();
      std::uint32_t crc_docs = 0, crc_sigs = 0;
      out.write(post_docs_, nnz * sizeof(std::uint32_t), &crc_docs);
      const unsigned char zeros[kSignatureAlign] = {};
      out.write(zeros, signature_padding(docs_.size(), vocab_size_, nnz), nullptr);
      out.write(post_sigs_, nnz * W_ * sizeof(std::uint64_t), &crc_sigs);
      detail::put<std::uint32_t>(header + 44, static_cast<std::uint32_t>(nbits_));
      detail::put<std::uint32_t>(header + 56, crc_docs);
      detail::put<std::uint32_t>(header + 60, crc_sigs);
    });
  });
}

std::unique_ptr<EmbeddedInvertedFile> EmbeddedInvertedFile::load(const std::string& path, bool map_signatures) {
  detail::require_little_endian();
  detail::FileReader in(path, kFormat);
  const std::string& where = in.where();
  unsigned char h[kHeaderSize];
  in.read_header(h);
  for (std::size_t i = 64; i < 76; ++i)
    if (h[i] != 0) throw FormatError(where + "unsupported header layout or flags");
  const std::uint32_t nbits = detail::get<std::uint32_t>(h + 44);
  if (nbits < 1 || nbits > kMaxBits)
    throw FormatError(where + "nbits = " + str(nbits) + " is out of range [1, " + str(kMaxBits) + "]");
  const std::size_t W = words_for_bits(nbits);
  const FileSizes s = read_sizes(h, std::uint64_t{1} << 50, where);
  const std::uint64_t pad =
      detail::get<std::uint32_t>(h + 8) >= 2 ? signature_padding(s.n_docs, s.vocab_size, s.n_postings) : 0;
  std::vector<std::int64_t> ids;
  std::vector<std::uint32_t> lens;
  read_lists(in, h, s, 4 + 8 * W, ids, lens, pad);
  auto f = std::make_unique<EmbeddedInvertedFile>(static_cast<std::size_t>(s.vocab_size), nbits);
  const std::uint64_t nnz = s.n_postings;
  f->post_docs_ = static_cast<std::uint32_t*>(detail::grow_array(nullptr, nnz, sizeof(std::uint32_t)));
  in.read_section(f->post_docs_, nnz * 4, detail::get<std::uint32_t>(h + 56), "documents", "posting-document");
  in.read_padding(pad, "padding before the signatures");
  const std::uint64_t sig_bytes = nnz * W * 8;
  const std::uint32_t crc_sigs = detail::get<std::uint32_t>(h + 60);
  if (map_signatures && nnz > 0 && in.position() % alignof(std::uint64_t) == 0) {
    auto map = std::make_unique<MappedFile>(in.fd(), path);
    if (map->size() < in.position() + sig_bytes)  // changed since it was opened
      throw FormatError(where + "truncated inside the signatures section");
    const unsigned char* at = map->data() + in.position();
    in.check_section(at, sig_bytes, crc_sigs, "signature");
    f->post_sigs_ = const_cast<std::uint64_t*>(reinterpret_cast<const std::uint64_t*>(at));  // never written
    f->sig_map_ = std::move(map);
  } else {
    f->post_sigs_ = static_cast<std::uint64_t*>(detail::grow_array(nullptr, nnz * W, sizeof(std::uint64_t)));
    in.read_section(f->post_sigs_, sig_bytes, crc_sigs, "signatures", "signature");
  }
  // Contents must be consistent even when checksums match (a file crafted by hand).
  const std::uint32_t* docs = f->post_docs_;
  const std::uint64_t* sigs = f->post_sigs_;
  const std::uint64_t beyond = ~f->tail_;
  f->finish_load(std::move(ids), lens, s, where, [docs](std::uint64_t p) { return docs[p]; },
                 [sigs, W, beyond](std::uint64_t p) {
                   return beyond == 0 || (sigs[p * W + W - 1] & beyond) == 0
                              ? static_cast<const char*>(nullptr)
                              : "have signature bits set beyond nbits";
                 });
  return f;
}

}  // namespace roicore
