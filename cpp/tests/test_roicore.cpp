// Native tests of roicore (no Python): every kernel against a naive reference at every
// SIMD level this CPU supports, the inverted file and its file format. Built with
// -DROIRET_BUILD_TESTS=ON; CI also runs it under AddressSanitizer + UBSan
// (-DROIRET_SANITIZE=ON).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "roicore/checksum.h"
#include "roicore/common.h"
#include "roicore/cpu.h"
#include "roicore/embedded_file.h"
#include "roicore/hamming.h"
#include "roicore/inverted_file.h"
#include "roicore/mapped_file.h"
#include "roicore/parallel.h"
#include "roicore/roi_select.h"
#include "roicore/spatial_verify.h"

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

// Spatial verification, hand-checked: query words 1-4 on a square, word 5 in the right place
// but at 2^(17/16) times the scale (fails the scale test of the similarity and of the affine
// fit's closest similarity), word 9 far away; the image is the query moved by (+20, +30). L = 65535, so
// the quantised positions are the integer pixels.
struct SvCase {
  std::vector<std::uint32_t> qw{3, 1, 2, 4, 5, 9};
  std::vector<float> qxy{10, 10, 100, 10, 10, 100, 100, 100, 55, 40, 50, 50};
  std::vector<float> qs = std::vector<float>(6, 4.0f), qa = std::vector<float>(6, 0.0f);
  std::vector<std::uint32_t> dw{1, 2, 3, 4, 5, 9};
  std::vector<std::uint16_t> dxy{120, 40, 30, 130, 30, 40, 120, 130, 75, 70, 60000, 60000};
  std::vector<std::uint8_t> ds{64, 64, 64, 64, 64 + 17, 64}, da = std::vector<std::uint8_t>(6, 0);
  std::vector<std::int64_t> off{0, 6};
  std::vector<float> sides{65535.0f};
  std::int32_t inliers[2], corr[2];
  double affine[12];
  float qbox[8], dbox[8];

  void run(const std::vector<std::int64_t>& rows, const roicore::SvParams& p, int threads = 1) {
    const roicore::SvQuery q{qw.data(), qxy.data(), qs.data(), qa.data(), qw.size()};
    const roicore::SvDatabase db{dw.data(), dxy.data(), ds.data(), da.data(), dw.size(), off.data(), sides.data(),
                                 off.size() - 1};
    roicore::spatial_verify(q, db, rows.data(), rows.size(), p, {inliers, affine, qbox, dbox, corr}, threads);
  }
};

bool near_translation(const double* A, double tx, double ty) {
  const double want[6] = {1, 0, tx, 0, 1, ty};
  for (int i = 0; i < 6; ++i)
    if (!(std::fabs(A[i] - want[i]) < 1e-9)) return false;
  return true;
}

void test_spatial_verify() {
  roicore::SvParams p;
  {
    SvCase c;
    p.lo_iterations = 0;
    c.run({0}, p);
    CHECK(c.inliers[0] == 4);  // the similarity of word 1: words 1-4; word 5 fails the scale test
    CHECK(c.corr[0] == 6);     // words 1-5 and 9 are common: six tentative correspondences
    CHECK(near_translation(c.affine, 20, 30));
    CHECK(c.qbox[0] == 10 && c.qbox[1] == 10 && c.qbox[2] == 100 && c.qbox[3] == 100);
    CHECK(std::fabs(c.dbox[0] - 30) < 1e-3 && std::fabs(c.dbox[3] - 130) < 1e-3);
    p.lo_iterations = 3;
    c.run({0, 0}, p);
    CHECK(c.inliers[0] == 4 && c.inliers[1] == 4);  // LO's scale test keeps word 5 out
    CHECK(near_translation(c.affine, 20, 30) && near_translation(c.affine + 6, 20, 30));
    p.scale_tolerance = 2.2;
    c.run({0}, p);
    CHECK(c.inliers[0] == 5);
    p.lo_iterations = 0;
    c.run({0}, p);
    CHECK(c.inliers[0] == 5);
    p = roicore::SvParams{};
  }
  {  // word 5 at the right scale but turned by 90 degrees: out by the orientation test alone
    SvCase c;
    c.ds[4] = 64;
    c.da[4] = 64;
    for (std::size_t lo : {0, 3}) {
      p.lo_iterations = lo;
      p.angle_tolerance = 30.0;
      c.run({0}, p);
      CHECK(c.inliers[0] == 4 && near_translation(c.affine, 20, 30));
      p.angle_tolerance = 91.0;
      c.run({0}, p);
      CHECK(c.inliers[0] == 5 && near_translation(c.affine, 20, 30));
      p.angle_tolerance = 180.0;
      c.run({0}, p);
      CHECK(c.inliers[0] == 5);
    }
    c.da[4] = 128 + 64;  // -90 degrees
    p.angle_tolerance = 89.0;
    c.run({0}, p);
    CHECK(c.inliers[0] == 4);
    p = roicore::SvParams{};
  }
  {  // two correspondences: NaN
    SvCase c;
    c.dw.resize(2);
    c.off[1] = 2;
    c.run({0}, p);
    CHECK(c.corr[0] == 2);
    CHECK(c.inliers[0] == 0 && std::isnan(c.affine[0]) && std::isnan(c.affine[5]) && std::isnan(c.qbox[0]) &&
          std::isnan(c.dbox[3]));
  }
  {  // collinear inliers: the affine fit is refused and the similarity stays
    SvCase c;
    c.qxy = {10, 10, 100, 10, 40, 10, 70, 10, 55, 40, 50, 50};
    c.dxy = {120, 40, 60, 40, 30, 40, 90, 40, 75, 70, 60000, 60000};
    c.run({0}, p);
    CHECK(c.inliers[0] == 4 && near_translation(c.affine, 20, 30));
  }
  {  // invalid input throws before any work
    SvCase c;
    CHECK(throws<roicore::InvalidArgument>([&] { c.run({1}, p); }));
    CHECK(throws<roicore::InvalidArgument>([&] { c.run({-1}, p); }));
    c.dw[3] = 0;
    CHECK(throws<roicore::InvalidArgument>([&] { c.run({0}, p); }));
    SvCase d;
    d.qs[2] = 0.0f;
    CHECK(throws<roicore::InvalidArgument>([&] { d.run({0}, p); }));
    SvCase e;
    e.off = {0, 5};
    CHECK(throws<roicore::InvalidArgument>([&] { e.run({0}, p); }));
    roicore::SvParams bad;
    bad.max_correspondences = 2;
    CHECK(throws<roicore::InvalidArgument>([&] { SvCase().run({0}, bad); }));
    for (double a : {0.0, -1.0, 180.5, std::nan(""), HUGE_VAL}) {
      roicore::SvParams bad_angle;
      bad_angle.angle_tolerance = a;
      CHECK(throws<roicore::InvalidArgument>([&] { SvCase().run({0}, bad_angle); }));
    }
  }
}

// Random images with planted translations: the same results at every SIMD level and thread count.
void test_spatial_verify_threads(std::mt19937_64& rng) {
  const std::size_t nq = 300, n_images = 40, per = 250;
  std::uniform_real_distribution<float> pos(0, 400), ang(0, 360), size(1, 30);
  std::vector<std::uint32_t> qw(nq);
  std::vector<float> qxy(2 * nq), qs(nq), qa(nq);
  for (std::size_t i = 0; i < nq; ++i) {
    qw[i] = static_cast<std::uint32_t>(rng() % 150);
    qxy[2 * i] = pos(rng);
    qxy[2 * i + 1] = pos(rng);
    qs[i] = size(rng);
    qa[i] = ang(rng);
  }
  std::vector<std::uint32_t> dw;
  std::vector<std::uint16_t> dxy;
  std::vector<std::uint8_t> ds, da;
  std::vector<std::int64_t> off{0};
  std::vector<float> sides;
  for (std::size_t g = 0; g < n_images; ++g) {
    std::vector<std::uint32_t> w(per);
    for (std::size_t k = 0; k < per; ++k) {
      const std::size_t i = rng() % nq;
      const bool inlier = k < per / 4;
      w[k] = inlier ? qw[i] : static_cast<std::uint32_t>(rng() % 150);
      const double x = inlier ? qxy[2 * i] + 50.0 : pos(rng), y = inlier ? qxy[2 * i + 1] + 20.0 : pos(rng);
      dxy.push_back(static_cast<std::uint16_t>(x / 500.0 * 65535.0));
      dxy.push_back(static_cast<std::uint16_t>(y / 500.0 * 65535.0));
      ds.push_back(inlier ? static_cast<std::uint8_t>(std::lround(16 * (std::log2(qs[i]) + 2))) : rng() % 256);
      da.push_back(inlier ? static_cast<std::uint8_t>(std::lround(qa[i] * 256 / 360) % 256) : rng() % 256);
    }
    // sort this image's features by word, carrying the others along
    std::vector<std::size_t> o(per);
    for (std::size_t k = 0; k < per; ++k) o[k] = k;
    std::stable_sort(o.begin(), o.end(), [&](std::size_t a, std::size_t b) { return w[a] < w[b]; });
    const std::size_t base = off.back();
    std::vector<std::uint16_t> xy2(dxy.begin() + 2 * base, dxy.end());
    std::vector<std::uint8_t> s2(ds.begin() + base, ds.end()), a2(da.begin() + base, da.end());
    for (std::size_t k = 0; k < per; ++k) {
      dw.push_back(w[o[k]]);
      dxy[2 * (base + k)] = xy2[2 * o[k]];
      dxy[2 * (base + k) + 1] = xy2[2 * o[k] + 1];
      ds[base + k] = s2[o[k]];
      da[base + k] = a2[o[k]];
    }
    off.push_back(static_cast<std::int64_t>(base + per));
    sides.push_back(500.0f);
  }
  std::vector<std::int64_t> rows;
  for (std::size_t g = 0; g < n_images; ++g) rows.push_back(static_cast<std::int64_t>((g * 7) % n_images));
  const roicore::SvQuery q{qw.data(), qxy.data(), qs.data(), qa.data(), nq};
  const roicore::SvDatabase db{dw.data(), dxy.data(), ds.data(), da.data(), dw.size(), off.data(), sides.data(), n_images};
  std::vector<std::int32_t> in1(n_images), in2(n_images), m1(n_images), m2(n_images);
  std::vector<double> a1(6 * n_images), a2(6 * n_images);
  std::vector<float> q1(4 * n_images), q2(4 * n_images), d1(4 * n_images), d2(4 * n_images);
  const auto previous = roicore::active_simd_level();
  roicore::set_simd_level(roicore::SimdLevel::kGeneric);
  roicore::spatial_verify(q, db, rows.data(), n_images, roicore::SvParams{}, {in1.data(), a1.data(), q1.data(), d1.data(), m1.data()}, 1);
  bool planted = true;
  for (std::size_t i = 0; i < n_images; ++i) planted &= in1[i] >= 20 && std::fabs(a1[6 * i + 2] - 50) < 2;
  CHECK(planted);
  for (const auto level : roicore::supported_simd_levels()) {  // every level, 1 to 5 threads: the same bits
    roicore::set_simd_level(level);
    for (int t : {1, 2, 5}) {
      roicore::spatial_verify(q, db, rows.data(), n_images, roicore::SvParams{},
                              {in2.data(), a2.data(), q2.data(), d2.data(), m2.data()}, t);
      CHECK(in1 == in2 && m1 == m2);
      CHECK(std::memcmp(a1.data(), a2.data(), a1.size() * sizeof(double)) == 0);
      CHECK(std::memcmp(q1.data(), q2.data(), q1.size() * sizeof(float)) == 0);
      CHECK(std::memcmp(d1.data(), d2.data(), d1.size() * sizeof(float)) == 0);
    }
  }
  roicore::set_simd_level(previous);
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


// Edge cases found while hardening: absurd thread counts (clamped, never millions of
// threads or per-thread buffers), k far beyond the data (padded output, no k-sized
// reservation), empty inputs, concurrent searches and additions, a crafted header that
// announces an enormous file.
void test_edge_cases(std::mt19937_64& rng) {
  CHECK(roicore::resolve_threads(1 << 30) == roicore::kMaxThreads);
  CHECK(roicore::resolve_threads(0) >= 1 && roicore::resolve_threads(-5) >= 1);
  {
    const std::size_t w = 2, nq = 3000, ndb = 40, k = 5;
    auto q = random_codes(rng, nq, w), db = random_codes(rng, ndb, w);
    std::vector<std::uint32_t> d1(nq * k), d2(nq * k);
    std::vector<std::int64_t> i1(nq * k), i2(nq * k);
    roicore::hamming_knn(q.data(), nq, db.data(), ndb, 128, k, d1.data(), i1.data(), 1);
    roicore::hamming_knn(q.data(), nq, db.data(), ndb, 128, k, d2.data(), i2.data(), 1 << 30);
    CHECK(d1 == d2 && i1 == i2);
    std::vector<std::uint32_t> m1(nq * ndb), m2(nq * ndb);
    roicore::hamming_matrix(q.data(), nq, db.data(), ndb, 128, m1.data(), 1);
    roicore::hamming_matrix(q.data(), nq, db.data(), ndb, 128, m2.data(), 1 << 30);
    CHECK(m1 == m2);
  }
  {  // k much larger than the database: padded, and no k-sized allocation per query
    const std::size_t k = std::size_t{1} << 20;
    auto db = random_codes(rng, 3, 1);
    std::vector<std::uint32_t> d(k);
    std::vector<std::int64_t> idx(k);
    roicore::hamming_knn(db.data(), 1, db.data(), 3, 64, k, d.data(), idx.data(), 4);
    CHECK(idx[0] == 0 && d[0] == 0 && idx[3] == -1 && idx[k - 1] == -1 &&
          d[k - 1] == std::numeric_limits<std::uint32_t>::max());
    roicore::hamming_knn(db.data(), 0, db.data(), 3, 64, k, d.data(), idx.data(), 4);  // no queries
    roicore::hamming_knn(db.data(), 1, db.data(), 0, 64, 2, d.data(), idx.data(), 4);  // empty database
    CHECK(idx[0] == -1 && idx[1] == -1);
  }
  {  // select_rois with k >> D, and with no boxes
    const float boxes[] = {0, 0, 10, 10};
    const float scores[] = {1};
    const float sizes[] = {10, 10};
    const std::size_t k = 100000;
    std::vector<std::int64_t> out(k, 7);
    roicore::select_rois(boxes, scores, sizes, 1, 1, k, 0.0, 3.0, 0.95, out.data(), 1 << 30);
    CHECK(out[0] == 0 && out[1] == -1 && out[k - 1] == -1);
    roicore::select_rois(boxes, scores, sizes, 1, 0, 3, 0.0, 3.0, 0.95, out.data(), 1);
    CHECK(out[0] == -1 && out[2] == -1);
  }
  {  // cross_match: no groups, empty groups, threads clamped
    auto q = random_codes(rng, 4, 1);
    const std::int64_t off[3] = {0, 0, 0};
    float score[2];
    std::int64_t bq[2], bd[2], votes[4];
    roicore::cross_match(q.data(), 4, q.data(), off, 2, nullptr, 2, 64, nullptr, score, bq, bd, votes, 1 << 30);
    CHECK(std::isinf(score[0]) && bq[1] == -1 && bd[1] == -1 && votes[0] == 0);
    roicore::cross_match(q.data(), 4, q.data(), off, 0, nullptr, 0, 64, nullptr, score, bq, bd, votes, 2);
  }
  {  // parallel_for: every chunk runs exactly once whatever the thread request
    for (int t : {1, 2, 7, roicore::kMaxThreads, 1 << 30}) {
      std::vector<int> seen(5000, 0);
      roicore::parallel_for(seen.size(), t, 1, [&](std::size_t b, std::size_t e, int) {
        for (std::size_t i = b; i < e; ++i) ++seen[i];
      });
      bool ok = true;
      for (int v : seen) ok &= v == 1;
      CHECK(ok);
    }
    CHECK(throws<roicore::InvalidArgument>([] {
      roicore::parallel_for(100, 4, 1, [](std::size_t b, std::size_t, int) {
        if (b > 0) throw roicore::InvalidArgument("x");
      });
    }));
  }
  {  // inverted file: empty, concurrent searches while adding, crafted huge header
    roicore::InvertedFile ivf(30);
    std::vector<std::int64_t> ids;
    std::vector<float> sc;
    const std::int64_t w0 = 3;
    const float c0 = 1.0f;
    ivf.search(&w0, &c0, 1, 5, ids, sc);
    CHECK(ids.empty());
    const std::string path = "roicore_edge.ivf";
    ivf.save(path);
    CHECK(roicore::InvertedFile::load(path)->size() == 0);

    std::thread adder([&] {
      std::mt19937_64 r2(7);
      for (std::int64_t d = 0; d < 300; ++d) {
        std::int64_t words[4];
        for (auto& x : words) x = static_cast<std::int64_t>(r2() % 30);
        const std::int64_t off[2] = {0, 4};
        const float counts[4] = {1.0f, 1.0f, 2.0f, 1.0f};
        ivf.add(&d, 1, off, words, counts, 4);
      }
    });
    bool sane = true;
    std::vector<std::thread> searchers;
    std::vector<int> ok(3, 1);
    for (int s = 0; s < 3; ++s)
      searchers.emplace_back([&, s] {
        std::vector<std::int64_t> oi;
        std::vector<float> os;
        for (int it = 0; it < 200; ++it) {
          const std::int64_t w[2] = {it % 30, (it * 7) % 30};
          const float c[2] = {1.0f, 2.0f};
          ivf.search(w, c, 2, 10, oi, os);
          for (std::size_t j = 1; j < os.size(); ++j) ok[static_cast<std::size_t>(s)] &= os[j] <= os[j - 1];
          ok[static_cast<std::size_t>(s)] &= oi.size() <= 10;
        }
      });
    adder.join();
    for (auto& t : searchers) t.join();
    for (int v : ok) sane &= v == 1;
    CHECK(sane && ivf.size() == 300);

    // a header with valid checksums announcing 2**26 words (the most) and 2**40 postings,
    // in a 64-byte file: refused as truncated before anything is allocated
    ivf.save(path);
    std::ifstream in(path, std::ios::binary);
    std::vector<unsigned char> h(64);
    in.read(reinterpret_cast<char*>(h.data()), 64);
    in.close();
    const std::uint64_t V = roicore::InvertedFile::kMaxVocabulary, nnz = std::uint64_t{1} << 40;
    std::memcpy(&h[16], &V, 8);
    std::memcpy(&h[32], &nnz, 8);
    const std::uint32_t crc = roicore::crc32_update(0, h.data(), 60);
    std::memcpy(&h[60], &crc, 4);
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(h.data()), 64);
    bool truncated = false;
    try {
      roicore::InvertedFile::load(path);
    } catch (const roicore::FormatError& e) {
      truncated = std::string(e.what()).find("truncated") != std::string::npos;
    }
    CHECK(truncated);
    // one word more than the most: implausible, refused from the header alone
    const std::uint64_t V2 = roicore::InvertedFile::kMaxVocabulary + 1;
    std::memcpy(&h[16], &V2, 8);
    const std::uint32_t crc2 = roicore::crc32_update(0, h.data(), 60);
    std::memcpy(&h[60], &crc2, 4);
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(h.data()), 64);
    bool implausible = false;
    try {
      roicore::InvertedFile::load(path);
    } catch (const roicore::FormatError& e) {
      implausible = std::string(e.what()).find("implausible sizes") != std::string::npos;
    }
    CHECK(implausible);
    bool refused = false;
    try {
      roicore::InvertedFile too_big(roicore::InvertedFile::kMaxVocabulary + 1);
    } catch (const roicore::InvalidArgument& e) {
      refused = std::string(e.what()).find("vocab_size must be <= 2**26") != std::string::npos;
    }
    CHECK(refused);
    std::remove(path.c_str());
  }
}

}  // namespace

// Shards with the collection's statistics: every document scores bit for bit as in one
// inverted file holding the whole collection, and merging the shards' top lists by (exact
// score desc, shard, position) gives exactly the single file's order — ties included.
void test_collection_stats(std::mt19937_64& rng) {
  const std::size_t V = 40, N = 90, S = 3;
  std::vector<std::int64_t> off(N + 1, 0), words;
  std::vector<float> counts;
  for (std::size_t d = 0; d < N; ++d) {
    const std::size_t len = d % 11 == 0 ? 2 : 1 + rng() % 6;  // a few short bags: many ties
    for (std::size_t t = 0; t < len; ++t) {
      words.push_back(static_cast<std::int64_t>(d % 11 == 0 ? t : rng() % V));
      counts.push_back(1.0f + static_cast<float>(rng() % 2));
    }
    off[d + 1] = static_cast<std::int64_t>(words.size());
  }
  auto add_range = [&](roicore::InvertedFile& f, std::size_t b, std::size_t e) {
    std::vector<std::int64_t> ids, o;
    for (std::size_t d = b; d < e; ++d) ids.push_back(static_cast<std::int64_t>(d));
    for (std::size_t d = b; d <= e; ++d) o.push_back(off[d] - off[b]);
    f.add(ids.data(), e - b, o.data(), words.data() + off[b], counts.data() + off[b],
          static_cast<std::size_t>(off[e] - off[b]));
  };
  roicore::InvertedFile whole(V);
  add_range(whole, 0, N);
  std::vector<std::unique_ptr<roicore::InvertedFile>> shards;
  std::vector<std::uint64_t> df(V, 0);
  for (std::size_t s = 0; s < S; ++s) {
    shards.push_back(std::make_unique<roicore::InvertedFile>(V));
    add_range(*shards.back(), N * s / S, N * (s + 1) / S);
    const auto own = shards.back()->document_frequencies();
    for (std::size_t w = 0; w < V; ++w) df[w] += own[w];
  }
  CHECK(!shards[0]->has_collection_stats() && shards[0]->stats_documents() == N / S);
  for (auto& sh : shards) sh->set_collection_stats(N, df.data(), V);
  CHECK(shards[1]->has_collection_stats() && shards[1]->stats_documents() == N);
  CHECK(shards[2]->idf() == whole.idf());
  bool same = true;
  for (std::size_t q = 0; q < N; q += 5) {
    const auto* w = &words[static_cast<std::size_t>(off[q])];
    const auto* c = &counts[static_cast<std::size_t>(off[q])];
    const auto m = static_cast<std::size_t>(off[q + 1] - off[q]);
    std::vector<std::int64_t> ids1;
    std::vector<float> sc1;
    std::vector<double> ex1;
    whole.search(w, c, m, N, ids1, sc1, 1, &ex1);
    std::vector<std::tuple<double, std::size_t, std::size_t, std::int64_t, float>> merged;
    for (std::size_t s = 0; s < S; ++s) {
      std::vector<std::int64_t> ids;
      std::vector<float> sc;
      std::vector<double> ex;
      shards[s]->search(w, c, m, N, ids, sc, 1, &ex);
      for (std::size_t i = 0; i < ids.size(); ++i) merged.emplace_back(-ex[i], s, i, ids[i], sc[i]);
    }
    std::sort(merged.begin(), merged.end());
    for (std::size_t i = 0; i < N; ++i) {
      same &= std::get<3>(merged[i]) == ids1[i] && std::get<4>(merged[i]) == sc1[i];
      same &= -std::get<0>(merged[i]) == ex1[i] && static_cast<float>(ex1[i]) == sc1[i];
    }
  }
  CHECK(same);
  // refused: wrong length, N below the shard's size, df below the shard's own, df above N
  CHECK(throws<roicore::InvalidArgument>([&] { shards[0]->set_collection_stats(N, df.data(), V - 1); }));
  CHECK(throws<roicore::InvalidArgument>([&] { shards[0]->set_collection_stats(N / S - 1, df.data(), V); }));
  std::vector<std::uint64_t> low(V, 0), high(V, N + 1);
  CHECK(throws<roicore::InvalidArgument>([&] { shards[0]->set_collection_stats(N, low.data(), V); }));
  CHECK(throws<roicore::InvalidArgument>([&] { shards[0]->set_collection_stats(N, high.data(), V); }));
  CHECK(shards[0]->has_collection_stats());  // a refused call changes nothing
  // a change clears them (the shard's share moved); clear_collection_stats goes back too
  const std::int64_t gone = 0;
  shards[0]->remove(&gone, 1);
  CHECK(!shards[0]->has_collection_stats() && shards[0]->stats_documents() == N / S - 1);
  shards[1]->clear_collection_stats();
  roicore::InvertedFile alone(V);
  add_range(alone, N / S, 2 * N / S);
  CHECK(!shards[1]->has_collection_stats() && shards[1]->idf() == alone.idf());
}


// The Hamming-embedded inverted file against a naive ASMK* score at every SIMD level
// (widths with a tail word), its validation, tail bits, threads, save / load.
namespace {
struct EmbeddedData {
  std::size_t V, N, nbits, W;
  std::vector<std::int64_t> ids, off, words;
  std::vector<u64> sigs;
};

EmbeddedData embedded_data(std::mt19937_64& rng, std::size_t V, std::size_t N, std::size_t nbits, std::size_t max_len) {
  EmbeddedData e{V, N, nbits, roicore::words_for_bits(nbits), {}, {0}, {}, {}};
  for (std::size_t d = 0; d < N; ++d) {
    e.ids.push_back(static_cast<std::int64_t>(1000 - 3 * d));  // decreasing: the hash index
    std::vector<std::int64_t> ws;
    for (std::size_t w = 0; w < V; ++w) ws.push_back(static_cast<std::int64_t>(w));
    std::shuffle(ws.begin(), ws.end(), rng);
    ws.resize(1 + rng() % max_len);  // distinct words, any order
    e.words.insert(e.words.end(), ws.begin(), ws.end());
    e.off.push_back(static_cast<std::int64_t>(e.words.size()));
  }
  e.sigs = random_codes(rng, e.words.size(), e.W);  // bits beyond nbits set on purpose
  return e;
}

// score of every document by the definition (embedded_file.h), in double.
std::vector<double> naive_asmk(const EmbeddedData& e, const std::vector<std::int64_t>& qw, const std::vector<u64>& qs,
                               const std::vector<float>& qc, double alpha, double tau) {
  std::vector<std::size_t> df(e.V, 0);
  for (auto w : e.words) ++df[static_cast<std::size_t>(w)];
  std::vector<double> idf(e.V), score(e.N, 0.0);
  for (std::size_t w = 0; w < e.V; ++w) idf[w] = df[w] ? std::log(double(e.N) / double(df[w])) : 0.0;
  for (std::size_t d = 0; d < e.N; ++d) {
    double self = 0.0, s = 0.0;
    for (auto j = e.off[d]; j < e.off[d + 1]; ++j) self += idf[static_cast<std::size_t>(e.words[j])];
    for (std::size_t t = 0; t < qw.size(); ++t)
      for (auto j = e.off[d]; j < e.off[d + 1]; ++j)
        if (e.words[j] == qw[t]) {
          const double u = 1.0 - 2.0 * naive_dist(&qs[t * e.W], &e.sigs[j * e.W], e.nbits) / double(e.nbits);
          const double sig = u > tau ? (u > 0 ? std::pow(u, alpha) : -std::pow(-u, alpha)) : 0.0;
          s += double(qc[t]) * idf[static_cast<std::size_t>(qw[t])] * sig;
        }
    score[d] = self > 0 ? s / std::sqrt(self) : 0.0;
  }
  return score;
}
}  // namespace

void test_embedded_file(std::mt19937_64& rng) {
  for (std::size_t nbits : {1, 63, 64, 100, 128, 256, 1024}) {
    const EmbeddedData e = embedded_data(rng, 30, 60, nbits, 12);
    roicore::EmbeddedInvertedFile f(e.V, nbits);
    const std::size_t half = static_cast<std::size_t>(e.off[e.N / 2]);
    f.add(e.ids.data(), e.N / 2, e.off.data(), e.words.data(), e.sigs.data(), half);
    std::vector<std::int64_t> off2(e.off.begin() + static_cast<std::ptrdiff_t>(e.N / 2), e.off.end());
    for (auto& o : off2) o -= static_cast<std::int64_t>(half);
    f.add(e.ids.data() + e.N / 2, e.N - e.N / 2, off2.data(), e.words.data() + half, e.sigs.data() + half * e.W,
          e.words.size() - half);
    CHECK(f.size() == e.N && f.num_postings() == e.words.size());
    // a query: some words repeated, random signatures and weights
    std::vector<std::int64_t> qw;
    std::vector<float> qc;
    for (int t = 0; t < 25; ++t) {
      qw.push_back(static_cast<std::int64_t>(rng() % e.V));
      qc.push_back(0.25f * static_cast<float>(rng() % 5));
    }
    const auto qs = random_codes(rng, qw.size(), e.W);
    for (auto [alpha, tau] : {std::pair{3.0, 0.0}, std::pair{1.0, -0.5}, std::pair{2.0, 0.25}}) {
      const auto ref = naive_asmk(e, qw, qs, qc, alpha, tau);
      std::vector<std::int64_t> base_ids;
      std::vector<float> base_sc;
      for (const auto level : roicore::supported_simd_levels()) {
        roicore::set_simd_level(level);
        std::vector<std::int64_t> ids;
        std::vector<float> sc;
        std::vector<double> exact;
        f.search(qw.data(), qs.data(), qc.data(), qw.size(), e.N, alpha, tau, ids, sc, 1, &exact);
        bool ok = ids.size() == e.N;
        for (std::size_t k = 0; ok && k < ids.size(); ++k) {
          const auto d = static_cast<std::size_t>(std::find(e.ids.begin(), e.ids.end(), ids[k]) - e.ids.begin());
          ok &= std::fabs(exact[k] - ref[d]) <= 1e-9 * (1.0 + std::fabs(ref[d]));
          if (k > 0) ok &= exact[k] <= exact[k - 1];  // positives, zeros, negatives
        }
        CHECK(ok);
        if (base_ids.empty()) base_ids = ids, base_sc = sc;
        CHECK(ids == base_ids && sc == base_sc);  // identical at every level
      }
      roicore::set_simd_level(roicore::detected_simd_level());
    }
    // document() returns the pairs with the tail bits cleared
    std::vector<std::int64_t> dw;
    std::vector<u64> ds;
    f.document(e.ids[7], dw, ds);
    bool same = dw.size() == static_cast<std::size_t>(e.off[8] - e.off[7]) && std::is_sorted(dw.begin(), dw.end());
    for (std::size_t k = 0; same && k < dw.size(); ++k) {
      const auto j = static_cast<std::size_t>(std::find(e.words.begin() + e.off[7], e.words.begin() + e.off[8], dw[k]) -
                                              e.words.begin());
      for (std::size_t w = 0; w < e.W; ++w)
        same &= ds[k * e.W + w] == (e.sigs[j * e.W + w] & (w + 1 == e.W ? roicore::tail_mask_for_bits(nbits) : ~0ULL));
    }
    CHECK(same);
    // save / load round trip
    const std::string path = "roicore_test.ask";
    f.save(path);
    auto g = roicore::EmbeddedInvertedFile::load(path);
    std::vector<std::int64_t> a_ids, b_ids;
    std::vector<float> a_sc, b_sc;
    f.search(qw.data(), qs.data(), qc.data(), qw.size(), 20, 3.0, 0.0, a_ids, a_sc);
    g->search(qw.data(), qs.data(), qc.data(), qw.size(), 20, 3.0, 0.0, b_ids, b_sc);
    CHECK(g->nbits() == nbits && g->size() == e.N && a_ids == b_ids && a_sc == b_sc);
    // mapped signatures: the same results; a change copies them into memory first
    auto h = roicore::EmbeddedInvertedFile::load(path, true);
    CHECK(h->mapped_bytes() == h->num_postings() * e.W * 8 && h->memory_bytes() + h->mapped_bytes() == g->memory_bytes());
    h->search(qw.data(), qs.data(), qc.data(), qw.size(), 20, 3.0, 0.0, b_ids, b_sc);
    CHECK(a_ids == b_ids && a_sc == b_sc);
    const std::int64_t gone = e.ids[0];
    h->remove(&gone, 1);
    g->remove(&gone, 1);
    CHECK(h->mapped_bytes() == 0);
    g->search(qw.data(), qs.data(), qc.data(), qw.size(), 20, 3.0, 0.0, a_ids, a_sc);
    h->search(qw.data(), qs.data(), qc.data(), qw.size(), 20, 3.0, 0.0, b_ids, b_sc);
    CHECK(a_ids == b_ids && a_sc == b_sc);
    std::remove(path.c_str());
  }
  // validation: nothing changes on a refused call
  roicore::EmbeddedInvertedFile f(10, 64);
  const std::int64_t ids[2] = {1, 2}, off[3] = {0, 2, 3}, words[3] = {4, 5, 4};
  const u64 sigs[3] = {1, 2, 3};
  f.add(ids, 2, off, words, sigs, 3);
  const std::int64_t dup_word[3] = {4, 4, 5}, big_word[3] = {4, 5, 10}, new_ids[2] = {3, 4};
  CHECK(throws<roicore::InvalidArgument>([&] { f.add(new_ids, 2, off, dup_word, sigs, 3); }));
  CHECK(throws<roicore::InvalidArgument>([&] { f.add(new_ids, 2, off, big_word, sigs, 3); }));
  CHECK(throws<roicore::InvalidArgument>([&] { f.add(ids, 2, off, words, sigs, 3); }));  // ids present
  CHECK(f.size() == 2 && f.num_postings() == 3);
  std::vector<std::int64_t> oi;
  std::vector<float> os;
  const float w1 = 1.0f, wnan = std::nanf("");
  CHECK(throws<roicore::InvalidArgument>([&] { f.search(words, sigs, &w1, 1, 5, 0.0, 0.0, oi, os); }));
  CHECK(throws<roicore::InvalidArgument>([&] { f.search(words, sigs, &w1, 1, 5, 3.0, 1.0, oi, os); }));
  CHECK(throws<roicore::InvalidArgument>([&] { f.search(words, sigs, &wnan, 1, 5, 3.0, 0.0, oi, os); }));
  CHECK(throws<roicore::InvalidArgument>([] { roicore::EmbeddedInvertedFile(10, 0); }));
  CHECK(throws<roicore::InvalidArgument>([] { roicore::EmbeddedInvertedFile(10, 1025); }));
  const std::int64_t unknown = 99;
  CHECK(throws<roicore::InvalidArgument>([&] { f.remove(&unknown, 1); }));
  std::vector<std::int64_t> dw;
  std::vector<u64> ds;
  CHECK(throws<roicore::InvalidArgument>([&] { f.document(unknown, dw, ds); }));
  CHECK(f.remove(ids, 1) == 1 && f.size() == 1 && f.num_postings() == 1);

  // threads: a search over >= kParallelEmbeddedPostings postings is split, bit-identical
  const EmbeddedData big = embedded_data(rng, 64, 20000, 64, 64);
  roicore::EmbeddedInvertedFile fb(big.V, 64);
  fb.add(big.ids.data(), big.N, big.off.data(), big.words.data(), big.sigs.data(), big.words.size());
  std::vector<std::int64_t> qw;
  for (std::size_t w = 0; w < big.V; ++w) qw.push_back(static_cast<std::int64_t>(w));
  qw.insert(qw.end(), qw.begin(), qw.end());  // every word twice
  const std::vector<float> qc(qw.size(), 1.0f);
  const auto qs = random_codes(rng, qw.size(), 1);
  CHECK(fb.num_postings() * 2 >= roicore::kParallelEmbeddedPostings);
  std::vector<std::int64_t> base_ids;
  std::vector<float> base_sc;
  fb.search(qw.data(), qs.data(), qc.data(), qw.size(), big.N, 3.0, -0.2, base_ids, base_sc, 1);
  for (int t : {2, 3, 8}) {
    std::vector<std::int64_t> ids;
    std::vector<float> sc;
    fb.search(qw.data(), qs.data(), qc.data(), qw.size(), big.N, 3.0, -0.2, ids, sc, t);
    CHECK(ids == base_ids && sc == base_sc);
  }
}

// A mapped file: its bytes, read-only, with no descriptor left open — the mapping outlives
// the file's name; empty files, directories, symbolic links and missing files.
void test_mapped_file() {
  const std::string path = "roicore_mapped.bin", link = "roicore_mapped.lnk";
  const std::string text = "roiret mapped file";
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    std::fwrite(text.data(), 1, text.size(), f);
    std::fclose(f);
  }
  const int probe = ::open("/dev/null", O_RDONLY);  // the lowest free descriptor, before
  ::close(probe);
  {
    roicore::MappedFile m(path);
    CHECK(m.size() == text.size() && std::memcmp(m.data(), text.data(), text.size()) == 0);
    const int next = ::open("/dev/null", O_RDONLY);  // the same number: none was kept
    CHECK(next == probe);
    ::close(next);
    std::remove(path.c_str());
    CHECK(std::memcmp(m.data(), text.data(), text.size()) == 0);  // still mapped
  }
  std::FILE* f = std::fopen(path.c_str(), "wb");
  std::fclose(f);
  CHECK(roicore::MappedFile(path).size() == 0);
  CHECK(::symlink(path.c_str(), link.c_str()) == 0);
  CHECK(throws<roicore::IoError>([&] { roicore::MappedFile m(link); }));  // ELOOP
  CHECK(throws<roicore::FormatError>([&] { roicore::MappedFile m("."); }));
  CHECK(throws<roicore::IoError>([&] { roicore::MappedFile m("roicore_no_such_file"); }));
  std::remove(link.c_str());
  std::remove(path.c_str());
}

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
  test_spatial_verify();
  test_spatial_verify_threads(rng);
  test_crc();
  test_inverted_file(rng);
  test_collection_stats(rng);
  test_embedded_file(rng);
  test_edge_cases(rng);
  test_mapped_file();
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
