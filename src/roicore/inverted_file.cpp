#include "roicore/inverted_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <unordered_set>
#include <utility>

#include "roicore/checksum.h"
#include "roicore/common.h"
#include "roicore/parallel.h"

namespace roicore {

namespace {

constexpr char kMagic[8] = {'R', 'O', 'I', 'R', 'I', 'V', 'F', '\0'};
constexpr std::size_t kHeaderSize = 64;

bool host_is_little_endian() {
  const std::uint16_t x = 1;
  unsigned char c;
  std::memcpy(&c, &x, 1);
  return c == 1;
}

void require_little_endian() {
  if (!host_is_little_endian())
    throw InvalidArgument("roiret index files are little-endian; this host is big-endian");
}

std::string str(std::size_t v) { return std::to_string(v); }

// Buffered writer that tracks a CRC per section.
class FileWriter {
 public:
  FileWriter(int fd, std::string path) : fd_(fd), path_(std::move(path)) { buf_.reserve(1 << 20); }
  void write(const void* data, std::size_t len, std::uint32_t* crc) {
    if (crc) *crc = crc32_update(*crc, data, len);
    const auto* p = static_cast<const char*>(data);
    while (len > 0) {
      const std::size_t room = buf_.capacity() - buf_.size();
      const std::size_t take = std::min(room, len);
      buf_.insert(buf_.end(), p, p + take);
      p += take;
      len -= take;
      if (buf_.size() == buf_.capacity()) flush();
    }
  }
  void flush() {
    std::size_t off = 0;
    while (off < buf_.size()) {
      const ssize_t w = ::write(fd_, buf_.data() + off, buf_.size() - off);
      if (w < 0) {
        if (errno == EINTR) continue;
        throw IoError(errno, path_, "cannot write '" + path_ + "': " + std::strerror(errno));
      }
      off += static_cast<std::size_t>(w);
    }
    buf_.clear();
  }

 private:
  int fd_;
  std::string path_;
  std::vector<char> buf_;
};

void read_exact(int fd, void* data, std::size_t len, const std::string& path, const char* what) {
  auto* p = static_cast<char*>(data);
  while (len > 0) {
    const std::size_t chunk = std::min<std::size_t>(len, std::size_t{1} << 30);
    const ssize_t r = ::read(fd, p, chunk);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw IoError(errno, path, "cannot read '" + path + "': " + std::strerror(errno));
    }
    if (r == 0) throw FormatError("'" + path + "' is truncated inside the " + what + " section");
    p += r;
    len -= static_cast<std::size_t>(r);
  }
}

template <class T>
T get(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <class T>
void put(unsigned char* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

std::string printable_magic(const unsigned char* m) {
  std::string s;
  for (int i = 0; i < 8; ++i) {
    const unsigned char c = m[i];
    if (c >= 32 && c < 127) {
      s += static_cast<char>(c);
    } else {
      static const char* hex = "0123456789abcdef";
      s += "\\x";
      s += hex[c >> 4];
      s += hex[c & 15];
    }
  }
  return s;
}

}  // namespace

InvertedFile::InvertedFile(std::size_t vocab_size) : vocab_size_(vocab_size) {
  if (vocab_size == 0) throw InvalidArgument("vocab_size must be >= 1, got 0");
  if (vocab_size > kMaxVocabulary)
    throw InvalidArgument("vocab_size must be <= 2**26 (" + str(kMaxVocabulary) +
                          " words: the per-word tables take 16 bytes a word up front), got " + str(vocab_size));
  word_offsets_.assign(vocab_size + 1, 0);
  idf_.assign(vocab_size, 0.0);
}

InvertedFile::~InvertedFile() { std::free(postings_); }

void InvertedFile::reserve_postings(std::size_t n) {
  if (n == 0) return;
  if (n > std::numeric_limits<std::size_t>::max() / sizeof(Posting)) throw std::bad_alloc();
  void* p = std::realloc(postings_, n * sizeof(Posting));
  if (p == nullptr) throw std::bad_alloc();
  postings_ = static_cast<Posting*>(p);
}

std::int64_t InvertedFile::find(std::int64_t id) const {
  if (ids_sorted_) {
    const auto it = std::lower_bound(ids_.begin(), ids_.end(), id);
    return (it != ids_.end() && *it == id) ? static_cast<std::int64_t>(it - ids_.begin()) : -1;
  }
  const auto it = id_index_.find(id);
  return it == id_index_.end() ? -1 : static_cast<std::int64_t>(it->second);
}

void InvertedFile::add(const std::int64_t* ids, std::size_t n, const std::int64_t* offsets,
                       const std::int64_t* words, const float* counts, std::size_t nnz) {
  // ---- validation, before any change ----
  if (offsets[0] != 0) throw InvalidArgument("offsets[0] must be 0, got " + std::to_string(offsets[0]));
  for (std::size_t i = 0; i < n; ++i) {
    if (offsets[i + 1] < offsets[i])
      throw InvalidArgument("offsets must be non-decreasing: offsets[" + str(i + 1) + "] = " +
                            std::to_string(offsets[i + 1]) + " < offsets[" + str(i) + "] = " +
                            std::to_string(offsets[i]));
  }
  if (static_cast<std::uint64_t>(offsets[n]) != nnz)
    throw InvalidArgument("offsets[-1] must equal the number of words (" + str(nnz) + "), got " +
                          std::to_string(offsets[n]));
  for (std::size_t j = 0; j < nnz; ++j) {
    if (words[j] < 0 || static_cast<std::uint64_t>(words[j]) >= vocab_size_)
      throw InvalidArgument("words[" + str(j) + "] = " + std::to_string(words[j]) +
                            " is not a word id in [0, " + str(vocab_size_) + ")");
    if (!std::isfinite(counts[j]) || counts[j] < 0.0f)
      throw InvalidArgument("counts[" + str(j) + "] = " + std::to_string(counts[j]) +
                            " must be finite and >= 0");
  }
  {
    std::unordered_set<std::int64_t> batch;
    batch.reserve(n * 2);
    for (std::size_t i = 0; i < n; ++i)
      if (!batch.insert(ids[i]).second)
        throw InvalidArgument("image id " + std::to_string(ids[i]) + " appears twice in this batch");
  }

  std::unique_lock<std::shared_mutex> lk(mu_);
  for (std::size_t i = 0; i < n; ++i)
    if (find(ids[i]) >= 0)
      throw InvalidArgument("image id " + std::to_string(ids[i]) + " is already in the index");
  if (ids_.size() + n > kMaxDocuments)
    throw InvalidArgument("an inverted file holds at most " + str(kMaxDocuments) + " images");

  // ---- commit ----
  std::vector<std::pair<std::int64_t, float>> bag;
  for (std::size_t i = 0; i < n; ++i) {
    const auto doc = static_cast<std::uint32_t>(ids_.size());
    const std::int64_t id = ids[i];
    if (ids_sorted_ && !ids_.empty() && id <= ids_.back()) {
      ids_sorted_ = false;  // switch to a hash index for the rest of this object's life
      id_index_.reserve(ids_.size() * 2 + n);
      for (std::size_t d = 0; d < ids_.size(); ++d) id_index_.emplace(ids_[d], static_cast<std::uint32_t>(d));
    }
    ids_.push_back(id);
    if (!ids_sorted_) id_index_.emplace(id, doc);
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
  inv_norm_.resize(ids_.size(), 0.0);
  if (n > 0) {
    dirty_ = true;
    external_stats_ = false;  // this shard's share changed: the owner sets them again
    std::vector<std::uint64_t>().swap(ext_df_);
  }
}

void InvertedFile::merge_pending() {
  if (!pending_.empty()) {
    const std::size_t V = vocab_size_;
    std::vector<std::uint64_t> add_count(V, 0);
    for (const Pending& p : pending_) ++add_count[p.word];
    std::vector<std::uint64_t> new_offsets(V + 1, 0);
    for (std::size_t w = 0; w < V; ++w)
      new_offsets[w + 1] = new_offsets[w] + (word_offsets_[w + 1] - word_offsets_[w]) + add_count[w];
    reserve_postings(new_offsets[V]);
    // Move the existing lists to their new places, last word first: a list only moves
    // towards the end, into space no unmoved list occupies.
    for (std::size_t w = V; w-- > 0;) {
      const std::uint64_t b = word_offsets_[w], len = word_offsets_[w + 1] - b;
      if (len > 0 && new_offsets[w] != b) std::memmove(postings_ + new_offsets[w], postings_ + b, len * sizeof(Posting));
    }
    // Append the new postings (stable by document, so each list stays sorted).
    std::vector<std::uint64_t> cursor(V);
    for (std::size_t w = 0; w < V; ++w) cursor[w] = new_offsets[w] + (word_offsets_[w + 1] - word_offsets_[w]);
    for (const Pending& p : pending_) postings_[cursor[p.word]++] = Posting{p.doc, p.weight};
    word_offsets_.swap(new_offsets);
    std::vector<Pending>().swap(pending_);
  }
  refresh_weights();
  dirty_ = false;
}

void InvertedFile::refresh_weights() {
  const std::size_t N = ids_.size();
  const double n_idf = static_cast<double>(external_stats_ ? ext_docs_ : N);
  idf_.assign(vocab_size_, 0.0);
  for (std::size_t w = 0; w < vocab_size_; ++w) {
    const std::uint64_t df = external_stats_ ? ext_df_[w] : word_offsets_[w + 1] - word_offsets_[w];
    idf_[w] = df > 0 ? std::log(n_idf / static_cast<double>(df)) : 0.0;
  }
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

template <class Fn>
void InvertedFile::with_ready(Fn&& fn) const {
  for (;;) {
    {
      std::shared_lock<std::shared_mutex> lk(mu_);
      if (!dirty_) {
        fn();
        return;
      }
    }
    std::unique_lock<std::shared_mutex> lk(mu_);
    if (dirty_) const_cast<InvertedFile*>(this)->merge_pending();
  }
}

std::size_t InvertedFile::remove(const std::int64_t* ids, std::size_t n) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  std::vector<char> gone(ids_.size(), 0);
  std::size_t removed = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t d = find(ids[i]);
    if (d < 0) throw InvalidArgument("image id " + std::to_string(ids[i]) + " is not in the index");
  }
  for (std::size_t i = 0; i < n; ++i) {
    const auto d = static_cast<std::size_t>(find(ids[i]));
    if (!gone[d]) {
      gone[d] = 1;
      ++removed;
    }
  }
  if (removed == 0) return 0;
  external_stats_ = false;  // this shard's share changed: the owner sets them again
  std::vector<std::uint64_t>().swap(ext_df_);
  merge_pending();
  // New, order-preserving document numbering.
  std::vector<std::uint32_t> renum(ids_.size());
  std::uint32_t next = 0;
  for (std::size_t d = 0; d < ids_.size(); ++d) renum[d] = gone[d] ? 0xFFFFFFFFu : next++;
  std::uint64_t out = 0;
  std::vector<std::uint64_t> new_offsets(vocab_size_ + 1, 0);
  for (std::size_t w = 0; w < vocab_size_; ++w) {
    for (std::uint64_t p = word_offsets_[w]; p < word_offsets_[w + 1]; ++p) {
      const std::uint32_t nd = renum[postings_[p].doc];
      if (nd != 0xFFFFFFFFu) postings_[out++] = Posting{nd, postings_[p].weight};
    }
    new_offsets[w + 1] = out;
  }
  word_offsets_.swap(new_offsets);
  if (out > 0) reserve_postings(out);  // shrink
  std::vector<std::int64_t> kept;
  kept.reserve(ids_.size() - removed);
  for (std::size_t d = 0; d < ids_.size(); ++d)
    if (!gone[d]) kept.push_back(ids_[d]);
  ids_.swap(kept);
  ids_sorted_ = std::is_sorted(ids_.begin(), ids_.end());
  id_index_.clear();
  if (!ids_sorted_)
    for (std::size_t d = 0; d < ids_.size(); ++d) id_index_.emplace(ids_[d], static_cast<std::uint32_t>(d));
  refresh_weights();
  dirty_ = false;
  return removed;
}

namespace {
// First posting in [b, e) (sorted by doc) whose doc is >= `doc`. Postings of a word are
// spread over [0, n_docs) roughly uniformly, so the search starts at the interpolated
// position and gallops outwards: a few probes instead of log2(length) far-apart ones.
const Posting* lower_doc(const Posting* b, const Posting* e, std::uint32_t doc, std::size_t n_docs) {
  const auto len = static_cast<std::size_t>(e - b);
  if (len == 0 || b[0].doc >= doc) return b;
  if (e[-1].doc < doc) return e;
  auto less = [](const Posting& p, std::uint32_t d) { return p.doc < d; };
  std::size_t g = static_cast<std::size_t>(static_cast<double>(len) * doc / static_cast<double>(n_docs));
  g = std::min(g, len - 1);
  std::size_t lo, hi;  // answer in [lo, hi]
  if (b[g].doc < doc) {
    lo = g + 1;
    std::size_t step = 1;
    hi = lo;
    while (hi < len && b[hi].doc < doc) {
      lo = hi + 1;
      hi = lo + step;
      step *= 2;
    }
    hi = std::min(hi, len);
  } else {
    hi = g;
    std::size_t step = 1;
    lo = g;
    while (lo > 0 && b[lo - 1].doc >= doc) {
      hi = lo - 1;
      lo = hi >= step ? hi - step : 0;
      step *= 2;
    }
  }
  return std::lower_bound(b + lo, b + hi, doc, less);
}

using ScoredDoc = std::pair<double, std::uint32_t>;  // (score, document index)
inline bool better(const ScoredDoc& x, const ScoredDoc& y) {
  return x.first > y.first || (x.first == y.first && x.second < y.second);
}

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

// Threads one search uses: 1 below kParallelSearchPostings postings scanned, else up to
// `threads` with at least kParallelSearchDocs documents each.
std::size_t search_threads(int threads, std::size_t scanned, std::size_t n_docs) {
  if (threads <= 1 || scanned < kParallelSearchPostings) return 1;
  return std::min<std::size_t>(static_cast<std::size_t>(threads), std::max<std::size_t>(1, n_docs / kParallelSearchDocs));
}

// Where each term's postings cross the range boundaries: cut[i * (T + 1) + t] is the
// first posting of term i with doc >= N * t / T. Found up front on this thread, after
// prefetching every interpolated guess, so the lookups' cache misses overlap instead of
// running one after another inside the workers.
void find_range_cuts(const std::vector<QueryTerm>& terms, const Posting* postings, const std::uint64_t* offsets,
                     std::size_t T, std::size_t N, std::vector<const Posting*>& cut) {
  cut.resize(terms.size() * (T + 1));
  for (const QueryTerm& term : terms) {
    const Posting* b = postings + offsets[term.word];
    const std::size_t len = offsets[term.word + 1] - offsets[term.word];
    for (std::size_t t = 1; t < T && len > 0; ++t)
      __builtin_prefetch(b + std::min(len - 1, len * t / T));
  }
  for (std::size_t i = 0; i < terms.size(); ++i) {
    const Posting* b = postings + offsets[terms[i].word];
    const Posting* e = postings + offsets[terms[i].word + 1];
    const Posting** c = &cut[i * (T + 1)];
    c[0] = b;
    c[T] = e;
    for (std::size_t t = 1; t < T; ++t) c[t] = lower_doc(c[t - 1], e, static_cast<std::uint32_t>(N * t / T), N);
  }
}

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

// One pass keeps the best `top` documents of [lo, hi) (score descending, then lower
// index): a bounded heap whose root is the worst kept entry. Documents arrive in increasing
// index order, so an equal score never displaces a kept one. Returns how many documents of
// the range have a non-zero accumulator.
std::size_t best_in_range(const float* acc, const double* inv_norm, std::size_t lo, std::size_t hi,
                          std::size_t top, std::vector<ScoredDoc>& heap) {
  heap.reserve(std::min<std::size_t>(top, hi - lo));
  std::size_t n_touched = 0;
  for (std::size_t d = lo; d < hi; ++d) {
    if (acc[d] == 0.0f) continue;
    ++n_touched;
    const double sc = static_cast<double>(acc[d]) * inv_norm[d];
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
// serial result) and writes them, then fills up with the documents sharing no word with
// the query: score 0, in insertion order. Returns the number of results written.
std::size_t write_results(std::vector<std::vector<ScoredDoc>>& heaps, std::size_t n_touched, const float* acc,
                          const std::int64_t* ids, std::size_t N, std::size_t top, std::int64_t* out_ids,
                          float* out_scores, double* out_exact) {
  std::vector<ScoredDoc>& best = heaps[0];
  for (std::size_t t = 1; t < heaps.size(); ++t) best.insert(best.end(), heaps[t].begin(), heaps[t].end());
  std::sort(best.begin(), best.end(), better);
  if (best.size() > top) best.resize(top);
  std::size_t n_out = 0;
  for (const auto& c : best) {
    out_ids[n_out] = ids[c.second];
    out_scores[n_out] = static_cast<float>(c.first);
    if (out_exact != nullptr) out_exact[n_out] = c.first;
    ++n_out;
  }
  if (n_out < top && n_touched < N) {
    for (std::size_t d = 0; d < N && n_out < top; ++d) {
      if (acc[d] == 0.0f) {
        out_ids[n_out] = ids[d];
        out_scores[n_out] = 0.0f;
        if (out_exact != nullptr) out_exact[n_out] = 0.0;
        ++n_out;
      }
    }
  }
  return n_out;
}
}  // namespace

void InvertedFile::search_one(const std::int64_t* words, const float* counts, std::size_t m,
                              std::size_t top_n, std::int64_t* out_ids, float* out_scores,
                              std::size_t& n_out, int threads, double* out_exact) const {
  // Caller holds the shared lock on merged state and has validated words / counts.
  const std::size_t N = ids_.size();
  std::size_t scanned = 0;
  const std::vector<QueryTerm> terms = weigh_query(merge_query(words, counts, m), idf_, word_offsets_.data(), scanned);

  // Term at a time into dense float accumulators (N floats stay in L2 up to ~500k images).
  // Large searches split the documents into contiguous ranges, one per thread: each
  // thread adds every term's postings for its own documents, in the same term order, so
  // every score is bit-identical to the single-threaded one; each range keeps its own best
  // `top` and the merge under the same strict order gives exactly the serial result.
  thread_local std::vector<float> acc;
  acc.assign(N, 0.0f);
  const std::size_t top = std::min(top_n, N);
  const std::size_t T = search_threads(threads, scanned, N);
  std::vector<std::vector<ScoredDoc>> heaps(T);
  std::vector<std::size_t> touched(T, 0);
  std::vector<const Posting*> cut;  // range boundaries of every term's postings (T > 1)
  if (T > 1) find_range_cuts(terms, postings_, word_offsets_.data(), T, N, cut);
  float* a = acc.data();
  parallel_for(T, static_cast<int>(T), 1, [&](std::size_t tb, std::size_t te, int) {
    for (std::size_t t = tb; t < te; ++t) {
      const auto lo = static_cast<std::uint32_t>(N * t / T), hi = static_cast<std::uint32_t>(N * (t + 1) / T);
      for (std::size_t i = 0; i < terms.size(); ++i) {
        const std::size_t w = terms[i].word;
        const Posting* p = T > 1 ? cut[i * (T + 1) + t] : postings_ + word_offsets_[w];
        const Posting* end = T > 1 ? cut[i * (T + 1) + t + 1] : postings_ + word_offsets_[w + 1];
        add_postings(p, end, terms[i].factor, a);
      }
      touched[t] = best_in_range(a, inv_norm_.data(), lo, hi, top, heaps[t]);
    }
  });
  std::size_t n_touched = 0;
  for (std::size_t t : touched) n_touched += t;
  n_out = write_results(heaps, n_touched, a, ids_.data(), N, top, out_ids, out_scores, out_exact);
}

namespace {
void validate_query(const std::int64_t* words, const float* counts, std::size_t m, std::size_t V,
                    const char* where) {
  for (std::size_t j = 0; j < m; ++j) {
    if (words[j] < 0 || static_cast<std::uint64_t>(words[j]) >= V)
      throw InvalidArgument(std::string(where) + "words[" + str(j) + "] = " + std::to_string(words[j]) +
                            " is not a word id in [0, " + str(V) + ")");
    if (!std::isfinite(counts[j]) || counts[j] < 0.0f)
      throw InvalidArgument(std::string(where) + "counts[" + str(j) + "] = " + std::to_string(counts[j]) +
                            " must be finite and >= 0");
  }
}
}  // namespace

void InvertedFile::search(const std::int64_t* words, const float* counts, std::size_t m, std::size_t top_n,
                          std::vector<std::int64_t>& out_ids, std::vector<float>& out_scores, int threads,
                          std::vector<double>* exact_scores) const {
  validate_query(words, counts, m, vocab_size_, "");
  with_ready([&] {
    const std::size_t top = std::min(top_n, ids_.size());
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
  if (qoffsets[0] != 0) throw InvalidArgument("offsets[0] must be 0, got " + std::to_string(qoffsets[0]));
  for (std::size_t i = 0; i < nq; ++i)
    if (qoffsets[i + 1] < qoffsets[i])
      throw InvalidArgument("offsets must be non-decreasing: offsets[" + str(i + 1) + "] < offsets[" + str(i) + "]");
  if (static_cast<std::uint64_t>(qoffsets[nq]) != nnz)
    throw InvalidArgument("offsets[-1] must equal the number of words (" + str(nnz) + "), got " +
                          std::to_string(qoffsets[nq]));
  validate_query(words, counts, nnz, vocab_size_, "");
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

std::size_t InvertedFile::size() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return ids_.size();
}

std::size_t InvertedFile::num_postings() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return word_offsets_.back() + pending_.size();
}

std::size_t InvertedFile::memory_bytes() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return word_offsets_.back() * sizeof(Posting) + word_offsets_.capacity() * sizeof(std::uint64_t) +
         idf_.capacity() * sizeof(double) + ids_.capacity() * sizeof(std::int64_t) +
         inv_norm_.capacity() * sizeof(double) + pending_.capacity() * sizeof(Pending) +
         ext_df_.capacity() * sizeof(std::uint64_t) +
         id_index_.size() * (sizeof(std::int64_t) + sizeof(std::uint32_t) + 2 * sizeof(void*)) +
         id_index_.bucket_count() * sizeof(void*);
}

bool InvertedFile::contains(std::int64_t id) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return find(id) >= 0;
}

std::vector<std::int64_t> InvertedFile::ids() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return ids_;
}

std::vector<std::uint32_t> InvertedFile::document_frequencies() const {
  std::vector<std::uint32_t> df;
  with_ready([&] {
    df.resize(vocab_size_);
    for (std::size_t w = 0; w < vocab_size_; ++w)
      df[w] = static_cast<std::uint32_t>(word_offsets_[w + 1] - word_offsets_[w]);
  });
  return df;
}

std::vector<double> InvertedFile::idf() const {
  std::vector<double> out;
  with_ready([&] { out = idf_; });
  return out;
}

void InvertedFile::set_collection_stats(std::uint64_t n_docs, const std::uint64_t* df, std::size_t n) {
  if (n != vocab_size_)
    throw InvalidArgument("df: expected " + str(vocab_size_) + " values (one per word), got " + str(n));
  std::unique_lock<std::shared_mutex> lk(mu_);
  if (dirty_) merge_pending();
  if (n_docs < ids_.size())
    throw InvalidArgument("n_docs = " + std::to_string(n_docs) + " is smaller than this file's " + str(ids_.size()) +
                          " images");
  for (std::size_t w = 0; w < vocab_size_; ++w) {
    const std::uint64_t own = word_offsets_[w + 1] - word_offsets_[w];
    if (df[w] > n_docs)
      throw InvalidArgument("df[" + str(w) + "] = " + std::to_string(df[w]) + " exceeds n_docs = " +
                            std::to_string(n_docs));
    if (df[w] < own)
      throw InvalidArgument("df[" + str(w) + "] = " + std::to_string(df[w]) + " is smaller than this file's own " +
                            std::to_string(own) + " images with that word");
  }
  ext_df_.assign(df, df + n);
  ext_docs_ = n_docs;
  external_stats_ = true;
  refresh_weights();
}

void InvertedFile::clear_collection_stats() {
  std::unique_lock<std::shared_mutex> lk(mu_);
  if (!external_stats_) return;
  external_stats_ = false;
  std::vector<std::uint64_t>().swap(ext_df_);
  dirty_ = true;  // weights from this file's own statistics before the next search
}

bool InvertedFile::has_collection_stats() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return external_stats_;
}

std::uint64_t InvertedFile::stats_documents() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return external_stats_ ? ext_docs_ : ids_.size();
}

// ------------------------------------------------------------------------------------
// persistence
// ------------------------------------------------------------------------------------
void InvertedFile::save(const std::string& path) const {
  require_little_endian();
  with_ready([&] {
    static std::atomic<unsigned> counter{0};
    const std::string tmp = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) throw IoError(errno, path, "cannot create '" + tmp + "': " + std::strerror(errno));
    bool done = false;
    try {
      FdCloser closer{fd};
      const std::uint64_t n_docs = ids_.size(), nnz = word_offsets_.back();
      unsigned char header[kHeaderSize] = {};
      FileWriter out(fd, tmp);
      out.write(header, kHeaderSize, nullptr);  // placeholder, rewritten below
      std::uint32_t crc_ids = 0, crc_len = 0, crc_post = 0;
      out.write(ids_.data(), ids_.size() * sizeof(std::int64_t), &crc_ids);
      std::vector<std::uint32_t> lens(std::min<std::size_t>(vocab_size_, 1 << 16));
      for (std::size_t w0 = 0; w0 < vocab_size_; w0 += lens.size()) {
        const std::size_t m = std::min(lens.size(), vocab_size_ - w0);
        for (std::size_t t = 0; t < m; ++t)
          lens[t] = static_cast<std::uint32_t>(word_offsets_[w0 + t + 1] - word_offsets_[w0 + t]);
        out.write(lens.data(), m * sizeof(std::uint32_t), &crc_len);
      }
      out.write(postings_, nnz * sizeof(Posting), &crc_post);
      out.flush();
      std::memcpy(header, kMagic, 8);
      put<std::uint32_t>(header + 8, kFormatVersion);
      put<std::uint32_t>(header + 12, static_cast<std::uint32_t>(kHeaderSize));
      put<std::uint64_t>(header + 16, vocab_size_);
      put<std::uint64_t>(header + 24, n_docs);
      put<std::uint64_t>(header + 32, nnz);
      put<std::uint32_t>(header + 40, 0);
      put<std::uint32_t>(header + 44, 0);
      put<std::uint32_t>(header + 48, crc_ids);
      put<std::uint32_t>(header + 52, crc_len);
      put<std::uint32_t>(header + 56, crc_post);
      put<std::uint32_t>(header + 60, crc32_update(0, header, 60));
      if (::pwrite(fd, header, kHeaderSize, 0) != static_cast<ssize_t>(kHeaderSize))
        throw IoError(errno, path, "cannot write '" + tmp + "': " + std::strerror(errno));
      if (::fsync(fd) != 0) throw IoError(errno, path, "cannot flush '" + tmp + "': " + std::strerror(errno));
      closer.fd = -1;
      if (::close(fd) != 0) throw IoError(errno, path, "cannot close '" + tmp + "': " + std::strerror(errno));
      if (::rename(tmp.c_str(), path.c_str()) != 0)
        throw IoError(errno, path, "cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(errno));
      done = true;
      // Make the rename itself durable.
      const std::size_t slash = path.find_last_of('/');
      const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
      const int dfd = ::open(dir.c_str(), O_RDONLY | O_CLOEXEC);
      if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
      }
    } catch (...) {
      if (!done) ::unlink(tmp.c_str());
      throw;
    }
  });
}

namespace {

// The sizes and section checksums of a file header that passed every check.
struct FileHeader {
  std::uint64_t vocab_size, n_docs, n_postings;
  std::uint32_t crc_ids, crc_lengths, crc_postings;
};

// Size of the open file `path`; a directory is refused.
std::uint64_t file_size_of(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) throw IoError(errno, path, "cannot stat '" + path + "': " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw IoError(EISDIR, path, "'" + path + "' is a directory");
  return static_cast<std::uint64_t>(st.st_size);
}

// A file shorter than the header: not an index at all when its first 8 bytes are another
// magic, else a truncated one.
[[noreturn]] void refuse_short_file(int fd, const std::string& path, std::uint64_t file_size,
                                    const std::string& where) {
  if (file_size >= 8) {
    unsigned char m[8];
    read_exact(fd, m, 8, path, "header");
    if (std::memcmp(m, kMagic, 8) != 0)
      throw FormatError(where + "not a roiret inverted file (magic '" + printable_magic(m) + "')");
  }
  throw FormatError(where + "truncated: " + str(file_size) + " bytes, shorter than the " + str(kHeaderSize) +
                    "-byte header");
}

// Magic, header checksum, version, layout and flags. A newer version is reported as such
// even when the checksum fails (a newer writer may lay the header out differently).
void check_header_format(const unsigned char* h, const std::string& where) {
  if (std::memcmp(h, kMagic, 8) != 0)
    throw FormatError(where + "not a roiret inverted file (magic '" + printable_magic(h) + "', expected 'ROIRIVF\\x00')");
  const auto version = get<std::uint32_t>(h + 8);
  constexpr std::uint32_t kFormatVersion = InvertedFile::kFormatVersion;
  if (crc32_update(0, h, 60) != get<std::uint32_t>(h + 60)) {
    if (version > kFormatVersion)
      throw FormatError(where + "written in format version " + std::to_string(version) +
                        " by a newer roiret; this version reads up to " + std::to_string(kFormatVersion));
    throw FormatError(where + "header checksum mismatch (file corrupt)");
  }
  if (version == 0 || version > kFormatVersion)
    throw FormatError(where + "written in format version " + std::to_string(version) +
                      (version > kFormatVersion ? " by a newer roiret" : "") + "; this version reads up to " +
                      std::to_string(kFormatVersion));
  if (get<std::uint32_t>(h + 12) != kHeaderSize || get<std::uint32_t>(h + 40) != 0)
    throw FormatError(where + "unsupported header layout or flags");
}

// Reads and checks the header: format, plausible sizes, and a file of exactly the size
// they announce.
FileHeader read_header(int fd, const std::string& path, std::uint64_t file_size, const std::string& where) {
  if (file_size < kHeaderSize) refuse_short_file(fd, path, file_size, where);
  unsigned char h[kHeaderSize];
  read_exact(fd, h, kHeaderSize, path, "header");
  check_header_format(h, where);
  const FileHeader hd{get<std::uint64_t>(h + 16), get<std::uint64_t>(h + 24), get<std::uint64_t>(h + 32),
                      get<std::uint32_t>(h + 48), get<std::uint32_t>(h + 52), get<std::uint32_t>(h + 56)};
  const std::uint64_t V = hd.vocab_size, n_docs = hd.n_docs, nnz = hd.n_postings;
  if (V == 0 || V > InvertedFile::kMaxVocabulary || n_docs > InvertedFile::kMaxDocuments ||
      nnz > (std::uint64_t{1} << 56))
    throw FormatError(where + "implausible sizes in header (vocab " + str(V) + ", images " + str(n_docs) +
                      ", postings " + str(nnz) + ")");
  const std::uint64_t expected = kHeaderSize + 8 * n_docs + 4 * V + 8 * nnz;
  if (file_size < expected)
    throw FormatError(where + "truncated: " + str(file_size) + " bytes, the header announces " + str(expected));
  if (file_size > expected)
    throw FormatError(where + str(file_size - expected) + " unexpected bytes after the end of the index");
  return hd;
}

// Reads the next `len` bytes (the `section` section) and compares their CRC-32 with the
// header's; `name` names the section in the mismatch message.
void read_section(int fd, void* data, std::size_t len, std::uint32_t crc, const std::string& path,
                  const char* section, const std::string& where, const char* name) {
  read_exact(fd, data, len, path, section);
  if (crc32_update(0, data, len) != crc)
    throw FormatError(where + "checksum mismatch in the " + name + " section (file corrupt)");
}

// Word offsets from the per-word posting counts, which must each be at most n_docs and add
// up to n_postings.
void offsets_from_lengths(const std::vector<std::uint32_t>& lens, std::uint64_t n_docs, std::uint64_t n_postings,
                          std::vector<std::uint64_t>& offsets, const std::string& where) {
  std::uint64_t total = 0;
  for (std::size_t w = 0; w < lens.size(); ++w) {
    if (lens[w] > n_docs)
      throw FormatError(where + "word " + str(w) + " has more postings than there are images");
    offsets[w] = total;
    total += lens[w];
  }
  offsets[lens.size()] = total;
  if (total != n_postings) throw FormatError(where + "posting lengths do not add up to the posting count");
}

// Every word's postings: documents in range and strictly increasing, weights finite and > 0.
void check_postings(const Posting* postings, const std::vector<std::uint64_t>& offsets, std::uint64_t n_docs,
                    const std::string& where) {
  for (std::size_t w = 0; w + 1 < offsets.size(); ++w) {
    std::int64_t prev = -1;
    for (std::uint64_t p = offsets[w]; p < offsets[w + 1]; ++p) {
      const Posting& e = postings[p];
      if (e.doc >= n_docs || static_cast<std::int64_t>(e.doc) <= prev)
        throw FormatError(where + "postings of word " + str(w) + " are out of range or out of order");
      if (!std::isfinite(e.weight) || !(e.weight > 0.0f))
        throw FormatError(where + "postings of word " + str(w) + " have a non-positive or non-finite weight");
      prev = e.doc;
    }
  }
}

// True when the ids are strictly increasing (looked up by binary search); otherwise fills
// the hash index, refusing an id that appears twice.
bool index_loaded_ids(const std::vector<std::int64_t>& ids, std::unordered_map<std::int64_t, std::uint32_t>& index,
                      const std::string& where) {
  bool sorted = true;
  for (std::size_t d = 1; d < ids.size(); ++d) {
    if (ids[d] <= ids[d - 1]) {
      sorted = false;
      break;
    }
  }
  if (!sorted) {
    index.reserve(ids.size() * 2);
    for (std::size_t d = 0; d < ids.size(); ++d)
      if (!index.emplace(ids[d], static_cast<std::uint32_t>(d)).second)
        throw FormatError(where + "image id " + std::to_string(ids[d]) + " appears twice");
  }
  return sorted;
}

}  // namespace

std::unique_ptr<InvertedFile> InvertedFile::load(const std::string& path) {
  require_little_endian();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError(errno, path, "cannot open '" + path + "': " + std::strerror(errno));
  FdCloser closer{fd};
  const std::uint64_t file_size = file_size_of(fd, path);
  const std::string where = "'" + path + "': ";
  const FileHeader hd = read_header(fd, path, file_size, where);
  const std::uint64_t V = hd.vocab_size, n_docs = hd.n_docs, nnz = hd.n_postings;

  auto ivf = std::make_unique<InvertedFile>(static_cast<std::size_t>(V));
  ivf->ids_.resize(n_docs);
  read_section(fd, ivf->ids_.data(), n_docs * 8, hd.crc_ids, path, "ids", where, "image-id");
  std::vector<std::uint32_t> lens(V);
  read_section(fd, lens.data(), V * 4, hd.crc_lengths, path, "lengths", where, "posting-length");
  ivf->reserve_postings(nnz);
  read_section(fd, ivf->postings_, nnz * sizeof(Posting), hd.crc_postings, path, "postings", where, "postings");

  // Contents must be consistent even when checksums match (a file crafted by hand).
  offsets_from_lengths(lens, n_docs, nnz, ivf->word_offsets_, where);
  check_postings(ivf->postings_, ivf->word_offsets_, n_docs, where);
  ivf->ids_sorted_ = index_loaded_ids(ivf->ids_, ivf->id_index_, where);
  ivf->inv_norm_.assign(n_docs, 0.0);
  ivf->refresh_weights();
  ivf->dirty_ = false;
  return ivf;
}

}  // namespace roicore
