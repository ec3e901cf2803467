// roicore — binary codes and Hamming similarity.
//
// Code layout: a code of `nbits` bits is `words = ceil(nbits / 64)` uint64 words; bit i
// of the code is bit (i % 64) of word (i / 64) (least significant bit first). Bits at
// positions >= nbits are ignored by every distance below (they may hold anything).
// Matrices of codes are row-major: code r occupies words [r * words, (r + 1) * words).
// Similarity of two codes = 1 - Hamming / nbits.
//
// All functions take caller-allocated outputs and raw pointers; sizes are in elements.
// `threads` <= 0 means roicore::default_num_threads().
#pragma once

#include <cstddef>
#include <cstdint>

namespace roicore {

// Binarise rows of x (n x d, row-major) against their own mean: bit i = x_i > mean(x).
// The mean is computed in double precision (compensated summation) and clamped to the
// row's [min, max], so a constant row gives all-zero bits. Throws InvalidArgument on a
// NaN or infinite value.
// out: n * words_for_bits(d) words.
void pack_codes_f32(const float* x, std::size_t n, std::size_t d, std::uint64_t* out, int threads);
void pack_codes_f64(const double* x, std::size_t n, std::size_t d, std::uint64_t* out, int threads);

// out[i * nb + j] = Hamming(a_i, b_j) over the first nbits bits.
// a: na * words, b: nb * words, out: na * nb, words = words_for_bits(nbits).
void hamming_matrix(const std::uint64_t* a, std::size_t na, const std::uint64_t* b, std::size_t nb,
                    std::size_t nbits, std::uint32_t* out, int threads);

// For each query the k nearest database codes (ascending distance; ties: lower index).
// k may exceed ndb: each row is then padded with distance UINT32_MAX and index -1
// (k == 0 writes nothing). out_dist, out_idx: nq * k.
void hamming_knn(const std::uint64_t* q, std::size_t nq, const std::uint64_t* db, std::size_t ndb,
                 std::size_t nbits, std::size_t k, std::uint32_t* out_dist, std::int64_t* out_idx,
                 int threads);

// Grouped cross-matching, the re-ranking kernel.
//   q:        nq codes (the query image's RoIs).
//   db:       codes of many images' RoIs, image g owning rows [offsets[g], offsets[g + 1]).
//   offsets:  n_groups + 1 non-decreasing values, offsets[0] >= 0, offsets[n_groups] <= ndb
//             (validated by the caller).
//   images:   if non-null, the n_out group indices to evaluate (each < n_groups); else all
//             groups (n_out = n_groups).
//   query_mask: if non-null, nq bytes; only queries with a non-zero byte take part.
// Outputs (n_out each): score = max over pairs of 1 - Hamming/nbits (as float32 of the
// double value), best_query / best_db = the pair (query row, db row); ties go to the
// lower db row, then the lower query row. A group with no rows (or no active query)
// gets score -inf and -1, -1.
// query_votes (nq): number of evaluated groups whose best pair uses that query row.
void cross_match(const std::uint64_t* q, std::size_t nq, const std::uint64_t* db,
                 const std::int64_t* offsets, std::size_t n_groups, const std::int64_t* images,
                 std::size_t n_out, std::size_t nbits, const std::uint8_t* query_mask,
                 float* score, std::int64_t* best_query, std::int64_t* best_db,
                 std::int64_t* query_votes, int threads);

}  // namespace roicore

namespace roicore {

// Checks CSR group offsets: n_groups + 1 values, offsets[0] >= 0, non-decreasing,
// offsets[n_groups] <= n_rows. Throws InvalidArgument naming the first bad position.
void validate_offsets(const std::int64_t* offsets, std::size_t n_groups, std::size_t n_rows,
                      const char* name);

}  // namespace roicore
