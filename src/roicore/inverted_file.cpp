#include "roicore/inverted_file.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <utility>

#include "roicore/binary_file.h"
#include "roicore/common.h"
#include "roicore/parallel.h"
#include "roicore/posting_search.h"

namespace roicore {

namespace {

constexpr detail::FileFormat kFormat{{'R', 'O', 'I', 'R', 'I', 'V', 'F', '\0'},
                                     "inverted file",
                                     InvertedFile::kFormatVersion,
                                     64};

}  // namespace

InvertedFile::InvertedFile(std::size_t vocab_size) : PostingIndex(vocab_size) {}

InvertedFile::~InvertedFile() { std::free(postings_); }

void InvertedFile::reserve_postings(std::size_t n) {
  postings_ = static_cast<Posting*>(detail::grow_array(postings_, n, sizeof(Posting)));
}

void InvertedFile::add(const std::int64_t* ids, std::size_t n, const std::int64_t* offsets,
                       const std::int64_t* words, const float* counts, std::size_t nnz) {
  // ---- validation, before any change ----
  check_images(ids, n, offsets, words, nnz);
  detail::check_weights(counts, nnz, "counts");

  std::unique_lock<std::shared_mutex> lk(mu_);
  docs_.check_new(ids, n, kMaxDocuments);

  // ---- commit ----
  std::vector<std::pair<std::int64_t, float>> bag;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t doc = docs_.push(ids[i]);
    bag.clear();
    for (std::int64_t j = offsets[i]; j < offsets[i + 1]; ++j)
      if (counts[j] > 0.0f) bag.emplace_back(words[j], counts[j]);
    std::sort(bag.begin(), bag.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (std::size_t j = 0; j < bag.size();) {
      double w = 0.0;
      const std::int64_t word = bag[j].first;
      for (; j < bag.size() && bag[j].first == word; ++j) w += bag[j].second;
      pending_.push_back({static_cast<std::uint32_t>(word), doc, static_cast<float>(w)});
    }
  }
  note_added(n);
}

void InvertedFile::merge_pending() {
  if (!pending_.empty()) {
    std::vector<std::uint64_t> new_offsets = detail::grown_offsets(word_offsets_, pending_);
    reserve_postings(new_offsets[vocab_size_]);
    std::vector<std::uint64_t> cursor =
        detail::spread_lists(word_offsets_, new_offsets, [&](std::uint64_t from, std::uint64_t to, std::uint64_t len) {
          std::memmove(postings_ + to, postings_ + from, len * sizeof(Posting));
        });
    // Append the new postings (stable by document, so each list stays sorted).
    for (const Pending& p : pending_) postings_[cursor[p.word]++] = Posting{p.doc, p.weight};
    word_offsets_.swap(new_offsets);
    std::vector<Pending>().swap(pending_);
  }
  refresh_weights();
  dirty_ = false;
}

void InvertedFile::refresh_weights() {
  const std::size_t N = docs_.size();
  stats_.compute_idf(word_offsets_, N, idf_);
  std::vector<double> norm2(N, 0.0);
  for (std::size_t w = 0; w < vocab_size_; ++w) {
    const double idf = idf_[w];
    if (idf == 0.0) continue;
    for (std::uint64_t p = word_offsets_[w]; p < word_offsets_[w + 1]; ++p) {
      const double v = static_cast<double>(postings_[p].weight) * idf;
      norm2[postings_[p].doc] += v * v;
    }
  }
  inv_norm_.resize(N);
  for (std::size_t d = 0; d < N; ++d) inv_norm_[d] = norm2[d] > 0.0 ? 1.0 / std::sqrt(norm2[d]) : 0.0;
}

void InvertedFile::compact(const std::vector<std::uint32_t>& renum) {
  std::vector<std::uint64_t> new_offsets = detail::compact_lists(
      word_offsets_, renum, [&](std::uint64_t p) { return postings_[p].doc; },
      [&](std::uint64_t from, std::uint64_t to, std::uint32_t doc) { postings_[to] = Posting{doc, postings_[from].weight}; });
  word_offsets_.swap(new_offsets);
  reserve_postings(word_offsets_.back());  // shrink
}

namespace {
// A query word that carries weight: each of its postings adds factor * weight to its
// document's accumulator (factor = query weight * idf^2 / query norm).
struct QueryTerm {
  std::size_t word;
  float factor;
};

// (word, summed weight) of the query words with a positive weight, by increasing word.
std::vector<std::pair<std::int64_t, double>> merge_query(const std::int64_t* words, const float* counts,
                                                         std::size_t m) {
  std::vector<std::pair<std::int64_t, double>> q;
  q.reserve(m);
  for (std::size_t j = 0; j < m; ++j)
    if (counts[j] > 0.0f) q.emplace_back(words[j], static_cast<double>(counts[j]));
  std::sort(q.begin(), q.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::size_t u = 0;
  for (std::size_t j = 0; j < q.size();) {
    const std::int64_t w = q[j].first;
    double c = 0.0;
    for (; j < q.size() && q[j].first == w; ++j) c += q[j].second;
    q[u++] = {w, c};
  }
  q.resize(u);
  return q;
}

// The terms of a merged query, in its (increasing word) order, leaving out words of idf 0;
// none when the query's norm is 0. `scanned`: how many postings the terms have in total.
std::vector<QueryTerm> weigh_query(const std::vector<std::pair<std::int64_t, double>>& q,
                                   const std::vector<double>& idf_of, const std::uint64_t* offsets,
                                   std::size_t& scanned) {
  double qn2 = 0.0;
  for (const auto& e : q) {
    const double v = e.second * idf_of[static_cast<std::size_t>(e.first)];
    qn2 += v * v;
  }
  std::vector<QueryTerm> terms;
  terms.reserve(q.size());
  scanned = 0;
  if (qn2 > 0.0) {
    const double inv_qn = 1.0 / std::sqrt(qn2);
    for (const auto& e : q) {
      const auto w = static_cast<std::size_t>(e.first);
      const double idf = idf_of[w];
      if (idf == 0.0) continue;
      terms.push_back({w, static_cast<float>(e.second * idf * idf * inv_qn)});
      scanned += offsets[w + 1] - offsets[w];
    }
  }
  return terms;
}

std::uint32_t doc_of(const Posting& p) { return p.doc; }

// acc[doc] += f * weight for the postings [p, end) of one word (the hot loop).
// Documents within a list are distinct: the four updates never alias.
inline void add_postings(const Posting* p, const Posting* end, float f, float* acc) {
  for (; p + 4 <= end; p += 4) {
    const std::uint32_t d0 = p[0].doc, d1 = p[1].doc, d2 = p[2].doc, d3 = p[3].doc;
    const float v0 = acc[d0] + f * p[0].weight, v1 = acc[d1] + f * p[1].weight;
    const float v2 = acc[d2] + f * p[2].weight, v3 = acc[d3] + f * p[3].weight;
    acc[d0] = v0;
    acc[d1] = v1;
    acc[d2] = v2;
    acc[d3] = v3;
  }
  for (; p != end; ++p) acc[p->doc] += f * p->weight;
}
}  // namespace

void InvertedFile::search_one(const std::int64_t* words, const float* counts, std::size_t m,
                              std::size_t top_n, std::int64_t* out_ids, float* out_scores,
                              std::size_t& n_out, int threads, double* out_exact) const {
  // Caller holds the shared lock on merged state and has validated words / counts.
  const std::size_t N = docs_.size();
  std::size_t scanned = 0;
  const std::vector<QueryTerm> terms = weigh_query(merge_query(words, counts, m), idf_, word_offsets_.data(), scanned);

  const std::size_t T = detail::search_threads(threads, scanned, N, kParallelSearchPostings, kParallelSearchDocs);
  n_out = detail::term_at_a_time<float>(
      terms, postings_, word_offsets_.data(), N, T, inv_norm_.data(), docs_.ids().data(), std::min(top_n, N), doc_of,
      [this](const QueryTerm& term, std::uint64_t b, std::uint64_t e, float* acc) {
        add_postings(postings_ + b, postings_ + e, term.factor, acc);
      },
      out_ids, out_scores, out_exact);
}

void InvertedFile::search(const std::int64_t* words, const float* counts, std::size_t m, std::size_t top_n,
                          std::vector<std::int64_t>& out_ids, std::vector<float>& out_scores, int threads,
                          std::vector<double>* exact_scores) const {
  detail::check_words(words, m, vocab_size_);
  detail::check_weights(counts, m, "counts");
  with_ready([&] {
    const std::size_t top = std::min(top_n, docs_.size());
    out_ids.resize(top);
    out_scores.resize(top);
    if (exact_scores != nullptr) exact_scores->resize(top);
    std::size_t n_out = 0;
    search_one(words, counts, m, top_n, out_ids.data(), out_scores.data(), n_out, resolve_threads(threads),
               exact_scores != nullptr ? exact_scores->data() : nullptr);
    out_ids.resize(n_out);
    out_scores.resize(n_out);
    if (exact_scores != nullptr) exact_scores->resize(n_out);
  });
}

void InvertedFile::search_batch(const std::int64_t* qoffsets, std::size_t nq, const std::int64_t* words,
                                const float* counts, std::size_t nnz, std::size_t top_n,
                                std::int64_t* out_ids, float* out_scores, int threads) const {
  detail::check_add_offsets(qoffsets, nq, nnz);
  detail::check_words(words, nnz, vocab_size_);
  detail::check_weights(counts, nnz, "counts");
  with_ready([&] {
    // threads over queries; a batch smaller than the thread count also splits each search
    const int T = resolve_threads(threads);
    const int inner = nq > 0 && static_cast<std::size_t>(T) > nq ? T / static_cast<int>(nq) : 1;
    parallel_for(nq, T, 1, [&](std::size_t b, std::size_t e, int) {
      for (std::size_t i = b; i < e; ++i) {
        std::size_t n_out = 0;
        const auto o = static_cast<std::size_t>(qoffsets[i]);
        search_one(words + o, counts + o, static_cast<std::size_t>(qoffsets[i + 1]) - o, top_n,
                   out_ids + i * top_n, out_scores + i * top_n, n_out, inner);
        for (std::size_t t = n_out; t < top_n; ++t) {
          out_ids[i * top_n + t] = -1;
          out_scores[i * top_n + t] = -std::numeric_limits<float>::infinity();
        }
      }
    });
  });
}

std::size_t InvertedFile::memory_bytes() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return word_offsets_.back() * sizeof(Posting) + pending_.capacity() * sizeof(Pending) + shared_memory_bytes();
}

// ------------------------------------------------------------------------------------
// persistence
// ------------------------------------------------------------------------------------
void InvertedFile::save(const std::string& path) const {
  detail::require_little_endian();
  with_ready([&] {
    detail::write_file_atomically(path, kFormat, [&](detail::FileWriter& out, unsigned char* header) {
      write_lists(out, header);
      std::uint32_t crc_post = 0;
      out.write(postings_, word_offsets_.back() * sizeof(Posting), &crc_post);
      detail::put<std::uint32_t>(header + 56, crc_post);
    });
  });
}

std::unique_ptr<InvertedFile> InvertedFile::load(const std::string& path) {
  detail::require_little_endian();
  detail::FileReader in(path, kFormat);
  unsigned char h[64];
  in.read_header(h);
  const FileSizes s = read_sizes(h, std::uint64_t{1} << 56, in.where());
  std::vector<std::int64_t> ids;
  std::vector<std::uint32_t> lens;
  read_lists(in, h, s, sizeof(Posting), ids, lens);
  auto ivf = std::make_unique<InvertedFile>(static_cast<std::size_t>(s.vocab_size));
  ivf->reserve_postings(s.n_postings);
  in.read_section(ivf->postings_, s.n_postings * sizeof(Posting), detail::get<std::uint32_t>(h + 56), "postings",
                  "postings");
  // Contents must be consistent even when checksums match (a file crafted by hand).
  const Posting* p = ivf->postings_;
  ivf->finish_load(std::move(ids), lens, s, in.where(), [p](std::uint64_t k) { return p[k].doc; },
                   [p](std::uint64_t k) {
                     return std::isfinite(p[k].weight) && p[k].weight > 0.0f
                                ? static_cast<const char*>(nullptr)
                                : "have a non-positive or non-finite weight";
                   });
  return ivf;
}

}  // namespace roicore
