// Native tests of roicore (no Python): every kernel against a naive reference at every
// SIMD level this CPU supports, the inverted file and its file format. Built with
// -DROIRET_BUILD_TESTS=ON; CI also runs it under AddressSanitizer + UBSan
// (-DROIRET_SANITIZE=ON).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "roicore/checksum.h"
#include "roicore/common.h"
#include "roicore/cpu.h"
#include "roicore/hamming.h"
#include "roicore/inverted_file.h"
#include "roicore/roi_select.h"

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK(cond)                                                                   \
  do {                                                                                \
    ++g_checks;                                                                       \
    if (!(cond)) {                                                                    \
      ++g_failures;                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
    }                                                                                 \
  } while (0)

template <class E, class F>
bool throws(F&& f) {
  try {
    f();
  } catch (const E&) {
    return true;
  } catch (...) {
    return false;
  }
  return false;
}

using u64 = std::uint64_t;

unsigned naive_dist(const u64* a, const u64* b, std::size_t nbits) {
  unsigned s = 0;
  for (std::size_t i = 0; i < nbits; ++i) s += ((a[i / 64] >> (i % 64)) & 1) != ((b[i / 64] >> (i % 64)) & 1);
  return s;
}

std::vector<u64> random_codes(std::mt19937_64& rng, std::size_t n, std::size_t words) {
  std::vector<u64> v(n * words);
  for (auto& x : v) x = rng();  // tail bits beyond nbits are garbage on purpose
  return v;
}

void test_hamming_matrix(std::mt19937_64& rng) {
  std::vector<std::size_t> widths;
  for (std::size_t b = 1; b <= 130; ++b) widths.push_back(b);
  for (std::size_t b : {255, 256, 257, 511, 512, 513, 1024, 4095, 4096}) widths.push_back(b);
  for (std::size_t nbits : widths) {
    const std::size_t w = roicore::words_for_bits(nbits);
    for (std::size_t nb : {0, 1, 7, 8, 9, 17, 33}) {
      auto a = random_codes(rng, 3, w), b = random_codes(rng, nb, w);
      std::vector<std::uint32_t> out(3 * nb);
      roicore::hamming_matrix(a.data(), 3, b.data(), nb, nbits, out.data(), 2);
      bool ok = true;
      for (std::size_t i = 0; i < 3; ++i)
        for (std::size_t j = 0; j < nb; ++j) ok &= out[i * nb + j] == naive_dist(&a[i * w], &b[j * w], nbits);
      CHECK(ok);
    }
  }
}

void test_knn(std::mt19937_64& rng) {
  for (std::size_t nbits : {5, 64, 256, 777, 4096}) {
    const std::size_t w = roicore::words_for_bits(nbits), n = 500, k = 7;
    auto q = random_codes(rng, 3, w), db = random_codes(rng, n, w);
    std::vector<std::uint32_t> d(3 * k);
    std::vector<std::int64_t> idx(3 * k);
    roicore::hamming_knn(q.data(), 3, db.data(), n, nbits, k, d.data(), idx.data(), 2);
    for (std::size_t i = 0; i < 3; ++i) {
      std::vector<std::pair<unsigned, std::size_t>> all;
      for (std::size_t j = 0; j < n; ++j) all.emplace_back(naive_dist(&q[i * w], &db[j * w], nbits), j);
      std::sort(all.begin(), all.end());
      bool ok = true;
      for (std::size_t t = 0; t < k; ++t)
        ok &= d[i * k + t] == all[t].first && idx[i * k + t] == static_cast<std::int64_t>(all[t].second);
      CHECK(ok);
    }
  }
}

void test_cross_match(std::mt19937_64& rng) {
  for (std::size_t nbits : {3, 64, 100, 256, 512, 1000, 4096}) {
    const std::size_t w = roicore::words_for_bits(nbits), nq = 9, G = 23;
    std::vector<std::int64_t> off(G + 1, 0);
    for (std::size_t g = 0; g < G; ++g) off[g + 1] = off[g] + static_cast<std::int64_t>(rng() % 13);
    const auto n = static_cast<std::size_t>(off[G]);
    auto q = random_codes(rng, nq, w), db = random_codes(rng, n, w);
    std::vector<std::uint8_t> mask(nq);
    for (auto& m : mask) m = rng() % 3 != 0;
    std::vector<float> score(G);
    std::vector<std::int64_t> bq(G), bd(G), votes(nq);
    roicore::cross_match(q.data(), nq, db.data(), off.data(), G, nullptr, G, nbits, mask.data(), score.data(),
                         bq.data(), bd.data(), votes.data(), 3);
    std::vector<std::int64_t> rv(nq, 0);
    bool ok = true;
    for (std::size_t g = 0; g < G; ++g) {
      long best = -1, bi = -1, bj = -1;
      for (std::int64_t j = off[g]; j < off[g + 1]; ++j)
        for (std::size_t i = 0; i < nq; ++i) {
          if (!mask[i]) continue;
          const long dd = naive_dist(&q[i * w], &db[static_cast<std::size_t>(j) * w], nbits);
          if (best < 0 || dd < best) best = dd, bi = static_cast<long>(i), bj = j;
        }
      if (best < 0) {
        ok &= std::isinf(score[g]) && bq[g] == -1 && bd[g] == -1;
      } else {
        ok &= score[g] == static_cast<float>(1.0 - static_cast<double>(best) / nbits) && bq[g] == bi && bd[g] == bj;
        ++rv[static_cast<std::size_t>(bi)];
      }
    }
    CHECK(ok);
    CHECK(votes == rv);
  }
}

void test_pack_codes() {
  const float x[2][5] = {{0, 3, 1, 2, 1.5f}, {2, 2, 2, 2, 2}};
  u64 out[2];
  roicore::pack_codes_f32(&x[0][0], 2, 5, out, 1);
  CHECK(out[0] == 0b01010);  // mean 1.5: only 3 and 2 are above it
  CHECK(out[1] == 0);        // constant row
  const double bad[2] = {1.0, std::numeric_limits<double>::quiet_NaN()};
  u64 o2[1];
  CHECK(throws<roicore::InvalidArgument>([&] { roicore::pack_codes_f64(bad, 1, 2, o2, 1); }));
}

void test_select_rois() {
  const float boxes[] = {0, 0, 10, 10, 0, 0, 10, 10.2f, 0, 0, 1, 1, 0, 0, 50, 5, 50, 50, 60, 60, 5, 5, 5, 9};
  const float scores[] = {1, 2, 9, 9, 0.5f, 9};
  const float sizes[] = {100, 100};
  std::int64_t out[4];
  roicore::select_rois(boxes, scores, sizes, 1, 6, 4, 0.01, 3.0, 0.95, out, 1);
  CHECK(out[0] == 1 && out[1] == 4 && out[2] == -1 && out[3] == -1);
  float nan_boxes[24];
  std::memcpy(nan_boxes, boxes, sizeof(boxes));
  nan_boxes[5] = std::numeric_limits<float>::quiet_NaN();
  CHECK(throws<roicore::InvalidArgument>([&] {
    roicore::select_rois(nan_boxes, scores, sizes, 1, 6, 4, 0.01, 3.0, 0.95, out, 1);
  }));
}

void test_crc() {
  const char* s = "123456789";
  CHECK(roicore::crc32_update(0, s, 9) == 0xCBF43926u);  // the standard check value
  CHECK(roicore::crc32_update(roicore::crc32_update(0, s, 4), s + 4, 5) == 0xCBF43926u);
}

void test_inverted_file(std::mt19937_64& rng) {
  const std::size_t V = 50, N = 40;
  roicore::InvertedFile ivf(V);
  std::vector<std::int64_t> ids(N), off(N + 1, 0), words;
  std::vector<float> counts;
  for (std::size_t d = 0; d < N; ++d) {
    ids[d] = static_cast<std::int64_t>(100 + d);
    const std::size_t len = 1 + rng() % 8;
    for (std::size_t t = 0; t < len; ++t) {
      words.push_back(static_cast<std::int64_t>(rng() % V));
      counts.push_back(1.0f + static_cast<float>(rng() % 3));
    }
    off[d + 1] = static_cast<std::int64_t>(words.size());
  }
  ivf.add(ids.data(), N / 2, off.data(), words.data(), counts.data(), static_cast<std::size_t>(off[N / 2]));
  std::vector<std::int64_t> off2(off.begin() + N / 2, off.end());
  for (auto& o : off2) o -= off[N / 2];
  ivf.add(ids.data() + N / 2, N - N / 2, off2.data(), words.data() + off[N / 2], counts.data() + off[N / 2],
          words.size() - static_cast<std::size_t>(off[N / 2]));
  CHECK(ivf.size() == N);
  // each document finds itself first with score 1
  bool self_first = true;
  for (std::size_t d = 0; d < N; d += 7) {
    std::vector<std::int64_t> out_ids;
    std::vector<float> out_scores;
    ivf.search(&words[static_cast<std::size_t>(off[d])], &counts[static_cast<std::size_t>(off[d])],
               static_cast<std::size_t>(off[d + 1] - off[d]), 5, out_ids, out_scores);
    // a duplicate bag could tie; the top score must be 1 and the document among the ties
    self_first &= std::fabs(out_scores[0] - 1.0f) < 1e-5f;
  }
  CHECK(self_first);
  const std::int64_t dup = 100;
  CHECK(throws<roicore::InvalidArgument>([&] {
    const std::int64_t o[2] = {0, 0};
    ivf.add(&dup, 1, o, nullptr, nullptr, 0);
  }));

  const std::string path = "roicore_test.ivf";
  ivf.save(path);
  auto loaded = roicore::InvertedFile::load(path);
  CHECK(loaded->size() == N && loaded->num_postings() == ivf.num_postings());
  std::vector<std::int64_t> a_ids, b_ids;
  std::vector<float> a_sc, b_sc;
  ivf.search(words.data(), counts.data(), 10, 40, a_ids, a_sc);
  loaded->search(words.data(), counts.data(), 10, 40, b_ids, b_sc);
  CHECK(a_ids == b_ids && a_sc == b_sc);

  std::ifstream in(path, std::ios::binary);
  std::vector<char> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  bool all_refused = true;
  for (std::size_t cut = 0; cut < blob.size(); cut += 3) {
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(blob.data(), static_cast<std::streamsize>(cut));
    all_refused &= throws<roicore::FormatError>([&] { roicore::InvertedFile::load(path); });
  }
  CHECK(all_refused);
  all_refused = true;
  for (std::size_t pos = 0; pos < blob.size(); pos += 5) {
    auto b = blob;
    b[pos] ^= 0x01;
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(b.data(), static_cast<std::streamsize>(b.size()));
    all_refused &= throws<roicore::FormatError>([&] { roicore::InvertedFile::load(path); });
  }
  CHECK(all_refused);
  std::remove(path.c_str());
  CHECK(throws<roicore::IoError>([&] { roicore::InvertedFile::load("does/not/exist.ivf"); }));

  const std::int64_t rm[2] = {101, 105};
  CHECK(ivf.remove(rm, 2) == 2 && ivf.size() == N - 2 && !ivf.contains(101) && ivf.contains(102));
}

}  // namespace

int main() {
  std::mt19937_64 rng(12345);
  for (const auto level : roicore::supported_simd_levels()) {
    roicore::set_simd_level(level);
    std::printf("SIMD level %s\n", roicore::simd_level_name(level));
    test_hamming_matrix(rng);
    test_knn(rng);
    test_cross_match(rng);
  }
  test_pack_codes();
  test_select_rois();
  test_crc();
  test_inverted_file(rng);
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
