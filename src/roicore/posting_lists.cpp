#include "roicore/posting_lists.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <new>
#include <unordered_set>
#include <utility>

#include "roicore/common.h"

namespace roicore {
namespace detail {

namespace {
std::string str(std::uint64_t v) { return std::to_string(v); }
}  // namespace

// ------------------------------------------------------------------------------------
// DocIds
// ------------------------------------------------------------------------------------
std::int64_t DocIds::find(std::int64_t id) const {
  if (sorted_) {
    const auto it = std::lower_bound(ids_.begin(), ids_.end(), id);
    return (it != ids_.end() && *it == id) ? static_cast<std::int64_t>(it - ids_.begin()) : -1;
  }
  const auto it = index_.find(id);
  return it == index_.end() ? -1 : static_cast<std::int64_t>(it->second);
}

void DocIds::check_batch(const std::int64_t* ids, std::size_t n) {
  std::unordered_set<std::int64_t> batch;
  batch.reserve(n * 2);
  for (std::size_t i = 0; i < n; ++i)
    if (!batch.insert(ids[i]).second)
      throw InvalidArgument("image id " + std::to_string(ids[i]) + " appears twice in this batch");
}

void DocIds::check_new(const std::int64_t* ids, std::size_t n, std::size_t max_docs) const {
  for (std::size_t i = 0; i < n; ++i)
    if (find(ids[i]) >= 0) throw InvalidArgument("image id " + std::to_string(ids[i]) + " is already in the index");
  if (ids_.size() + n > max_docs)
    throw InvalidArgument("an inverted file holds at most " + str(max_docs) + " images");
}

std::uint32_t DocIds::push(std::int64_t id) {
  const auto doc = static_cast<std::uint32_t>(ids_.size());
  if (sorted_ && !ids_.empty() && id <= ids_.back()) {
    sorted_ = false;  // switch to a hash index for the rest of this object's life
    index_.reserve(ids_.size() * 2 + 1);
    for (std::size_t d = 0; d < ids_.size(); ++d) index_.emplace(ids_[d], static_cast<std::uint32_t>(d));
  }
  ids_.push_back(id);
  if (!sorted_) index_.emplace(id, doc);
  return doc;
}

std::size_t DocIds::mark(const std::int64_t* ids, std::size_t n, std::vector<char>& gone) const {
  for (std::size_t i = 0; i < n; ++i)
    if (find(ids[i]) < 0) throw InvalidArgument("image id " + std::to_string(ids[i]) + " is not in the index");
  gone.assign(ids_.size(), 0);
  std::size_t marked = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const auto d = static_cast<std::size_t>(find(ids[i]));
    if (!gone[d]) {
      gone[d] = 1;
      ++marked;
    }
  }
  return marked;
}

std::vector<std::uint32_t> DocIds::remove_marked(const std::vector<char>& gone) {
  std::vector<std::uint32_t> renum(ids_.size());
  std::vector<std::int64_t> kept;
  kept.reserve(ids_.size());
  for (std::size_t d = 0; d < ids_.size(); ++d) {
    renum[d] = gone[d] ? kRemoved : static_cast<std::uint32_t>(kept.size());
    if (!gone[d]) kept.push_back(ids_[d]);
  }
  ids_.swap(kept);
  sorted_ = std::adjacent_find(ids_.begin(), ids_.end(), std::greater_equal<std::int64_t>()) == ids_.end();
  index_.clear();
  if (!sorted_)
    for (std::size_t d = 0; d < ids_.size(); ++d) index_.emplace(ids_[d], static_cast<std::uint32_t>(d));
  return renum;
}

void DocIds::assign_loaded(std::vector<std::int64_t> ids, const std::string& where) {
  ids_ = std::move(ids);
  index_.clear();
  sorted_ = std::adjacent_find(ids_.begin(), ids_.end(), std::greater_equal<std::int64_t>()) == ids_.end();
  if (!sorted_) {
    index_.reserve(ids_.size() * 2);
    for (std::size_t d = 0; d < ids_.size(); ++d)
      if (!index_.emplace(ids_[d], static_cast<std::uint32_t>(d)).second)
        throw FormatError(where + "image id " + std::to_string(ids_[d]) + " appears twice");
  }
}

std::size_t DocIds::memory_bytes() const {
  return ids_.capacity() * sizeof(std::int64_t) +
         index_.size() * (sizeof(std::int64_t) + sizeof(std::uint32_t) + 2 * sizeof(void*)) +
         index_.bucket_count() * sizeof(void*);
}

// ------------------------------------------------------------------------------------
// CollectionStats
// ------------------------------------------------------------------------------------
void CollectionStats::set(std::uint64_t n_docs, const std::uint64_t* df, std::size_t n,
                          const std::vector<std::uint64_t>& offsets, std::size_t own_docs) {
  const std::size_t V = offsets.size() - 1;
  if (n != V) throw InvalidArgument("df: expected " + str(V) + " values (one per word), got " + str(n));
  if (n_docs < own_docs)
    throw InvalidArgument("n_docs = " + std::to_string(n_docs) + " is smaller than this file's " + str(own_docs) +
                          " images");
  for (std::size_t w = 0; w < V; ++w) {
    const std::uint64_t own = offsets[w + 1] - offsets[w];
    if (df[w] > n_docs)
      throw InvalidArgument("df[" + str(w) + "] = " + std::to_string(df[w]) + " exceeds n_docs = " +
                            std::to_string(n_docs));
    if (df[w] < own)
      throw InvalidArgument("df[" + str(w) + "] = " + std::to_string(df[w]) + " is smaller than this file's own " +
                            std::to_string(own) + " images with that word");
  }
  df_.assign(df, df + n);
  docs_ = n_docs;
  active_ = true;
}

void CollectionStats::clear() {
  active_ = false;
  docs_ = 0;
  std::vector<std::uint64_t>().swap(df_);
}

void CollectionStats::compute_idf(const std::vector<std::uint64_t>& offsets, std::size_t own_docs,
                                  std::vector<double>& idf) const {
  const std::size_t V = offsets.size() - 1;
  const double n_idf = static_cast<double>(active_ ? docs_ : own_docs);
  idf.assign(V, 0.0);
  for (std::size_t w = 0; w < V; ++w) {
    const std::uint64_t df = active_ ? df_[w] : offsets[w + 1] - offsets[w];
    idf[w] = df > 0 ? std::log(n_idf / static_cast<double>(df)) : 0.0;
  }
}

// ------------------------------------------------------------------------------------
// argument checks, storage
// ------------------------------------------------------------------------------------
void check_vocab_size(std::size_t vocab_size, std::size_t max_vocabulary) {
  if (vocab_size == 0) throw InvalidArgument("vocab_size must be >= 1, got 0");
  if (vocab_size > max_vocabulary)
    throw InvalidArgument("vocab_size must be <= 2**" + str(static_cast<std::uint64_t>(__builtin_ctzll(max_vocabulary))) +
                          " (" + str(max_vocabulary) + " words: the per-word tables take 16 bytes a word up front), got " +
                          str(vocab_size));
}

void check_add_offsets(const std::int64_t* offsets, std::size_t n, std::size_t nnz) {
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
}

void check_words(const std::int64_t* words, std::size_t n, std::size_t vocab_size) {
  for (std::size_t j = 0; j < n; ++j)
    if (words[j] < 0 || static_cast<std::uint64_t>(words[j]) >= vocab_size)
      throw InvalidArgument("words[" + str(j) + "] = " + std::to_string(words[j]) + " is not a word id in [0, " +
                            str(vocab_size) + ")");
}

void check_weights(const float* weights, std::size_t n, const char* name) {
  for (std::size_t j = 0; j < n; ++j)
    if (!std::isfinite(weights[j]) || weights[j] < 0.0f)
      throw InvalidArgument(std::string(name) + "[" + str(j) + "] = " + std::to_string(weights[j]) +
                            " must be finite and >= 0");
}

void* grow_array(void* p, std::size_t n, std::size_t elem_size) {
  if (n == 0) return p;
  if (n > std::numeric_limits<std::size_t>::max() / elem_size) throw std::bad_alloc();
  void* q = std::realloc(p, n * elem_size);
  if (q == nullptr) throw std::bad_alloc();
  return q;
}

std::vector<char> select_terms(const std::vector<std::size_t>& word, const std::vector<double>& factor,
                               const std::vector<std::uint64_t>& cost, std::uint64_t max_postings) {
  const std::size_t m = factor.size();
  std::vector<char> keep(m, 1);
  std::uint64_t total = 0;
  for (std::uint64_t c : cost) total += c;
  if (max_postings == 0 || total <= max_postings || m == 0) return keep;
  // Group the terms by word: cost = the sum of the terms' costs (each term scans the word's
  // list), first_of = the word's first term (the tie-break), importance = sum of factors.
  std::vector<std::size_t> first_of;  // group -> first term
  std::vector<std::size_t> group(m);
  std::vector<double> importance;
  std::vector<std::uint64_t> group_cost;
  {
    std::vector<std::pair<std::size_t, std::size_t>> by_word(m);  // (word, term)
    for (std::size_t t = 0; t < m; ++t) by_word[t] = {word[t], t};
    std::sort(by_word.begin(), by_word.end());
    for (std::size_t i = 0; i < m;) {
      std::size_t j = i;
      while (j < m && by_word[j].first == by_word[i].first) ++j;
      const std::size_t g = first_of.size();
      first_of.push_back(by_word[i].second);  // the smallest term index of the word
      std::uint64_t c = 0;
      for (std::size_t k = i; k < j; ++k) {
        group[by_word[k].second] = g;
        c += cost[by_word[k].second];
      }
      group_cost.push_back(c);
      i = j;
    }
  }
  // Summed in term order, as the reference does.
  importance.assign(first_of.size(), 0.0);
  for (std::size_t t = 0; t < m; ++t) importance[group[t]] += factor[t];
  const std::size_t n_groups = first_of.size();
  std::vector<std::size_t> order(n_groups);
  for (std::size_t g = 0; g < n_groups; ++g) order[g] = g;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return importance[a] != importance[b] ? importance[a] > importance[b] : first_of[a] < first_of[b];
  });
  std::vector<char> take(n_groups, 0);
  std::uint64_t used = 0;
  for (std::size_t i = 0; i < n_groups; ++i) {
    const std::size_t g = order[i];
    if (i > 0 && used + group_cost[g] > max_postings) continue;
    take[g] = 1;
    used += group_cost[g];
  }
  for (std::size_t t = 0; t < m; ++t) keep[t] = take[group[t]];
  return keep;
}

}  // namespace detail
}  // namespace roicore
