// roiret._core — thin pybind11 bindings of the roicore library.
//
// Every function follows the same order: check dtypes, shapes and contiguity while holding
// the GIL (refusing rather than silently casting codes and boxes), allocate the outputs,
// take raw pointers, release the GIL, run the core, return arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "roicore/common.h"
#include "roicore/cpu.h"
#include "roicore/embedded_file.h"
#include "roicore/hamming.h"
#include "roicore/checksum.h"
#include "roicore/inverted_file.h"
#include "roicore/mapped_file.h"
#include "roicore/parallel.h"
#include "roicore/roi_select.h"
#include "roicore/spatial_verify.h"

namespace py = pybind11;
using roicore::EmbeddedInvertedFile;
using roicore::InvertedFile;

namespace {

// ---------------------------------------------------------------------------------------
// argument checking
// ---------------------------------------------------------------------------------------
std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

std::string type_name(const py::handle& h) { return py::str(py::type::of(h).attr("__name__")).cast<std::string>(); }

bool c_contiguous(const py::array& a) { return (a.flags() & py::array::c_style) != 0; }

bool aligned(const py::array& a) { return (a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) != 0; }

// Same element type as T: numpy's notion of equivalence, so that e.g. np.ulonglong arrays
// are accepted as uint64 on platforms where both are 8-byte unsigned, while byte-swapped
// ('>u8') arrays are refused.
template <class T>
bool same_dtype(const py::array& a) {
  return py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), py::dtype::of<T>().ptr());
}

// A numpy array of exactly dtype T, `ndim` dimensions, C-contiguous. `what` describes the
// expected shape, e.g. "(n, words)". Raises TypeError / ValueError with what came instead.
template <class T>
py::array_t<T, py::array::c_style> strict(const py::handle& obj, const char* name, int ndim, const char* what) {
  const std::string want = std::string(py::str(py::dtype::of<T>()).cast<std::string>()) + " array of shape " + what;
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + ": expected a numpy " + want + ", got " + type_name(obj));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!same_dtype<T>(a))
    throw py::type_error(std::string(name) + ": expected " + want + ", got " + dtype_str(a) + " " + shape_str(a) +
                         " (convert explicitly, e.g. x.astype(np." + py::str(py::dtype::of<T>()).cast<std::string>() +
                         "))");
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + ": expected " + want + ", got " + std::to_string(a.ndim()) +
                          "-d shape " + shape_str(a));
  if (!c_contiguous(a))
    throw py::value_error(std::string(name) + ": expected a C-contiguous " + want +
                          ", got a strided view; use np.ascontiguousarray(" + name + ")");
  if (!aligned(a))
    throw py::value_error(std::string(name) + ": expected an aligned " + want + ", got an unaligned view of a buffer; use " +
                          name + ".copy()");
  return py::reinterpret_borrow<py::array_t<T, py::array::c_style>>(a);
}

// Integer data that is not a code: any numpy integer array (or sequence) converts to int64
// when every value fits. Floats and booleans are refused.
py::array_t<std::int64_t, py::array::c_style> as_int64(const py::handle& obj, const char* name) {
  py::module_ np = py::module_::import("numpy");
  py::array a = py::isinstance<py::array>(obj) ? py::reinterpret_borrow<py::array>(obj) : py::array(np.attr("asarray")(obj));
  const char kind = a.dtype().kind();
  if (a.size() == 0 && (kind == 'f' || kind == 'O')) {
    a = py::array(np.attr("zeros")(a.attr("shape"), "int64"));
  } else if (kind != 'i' && kind != 'u') {
    throw py::type_error(std::string(name) + ": expected an integer array, got " + dtype_str(a) + " " + shape_str(a));
  }
  if (a.ndim() != 1) throw py::value_error(std::string(name) + ": expected a 1-d array, got shape " + shape_str(a));
  if (kind == 'u' && a.dtype().itemsize() == 8 && a.size() > 0) {
    const auto mx = np.attr("max")(a).cast<std::uint64_t>();
    if (mx > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      throw py::value_error(std::string(name) + ": value " + std::to_string(mx) + " does not fit in int64");
  }
  return py::array_t<std::int64_t, py::array::c_style>(np.attr("require")(a, "int64", py::make_tuple("C", "A")));
}

// Weights (counts): any integer or float array converts to float32.
py::array_t<float, py::array::c_style> as_f32(const py::handle& obj, const char* name) {
  py::module_ np = py::module_::import("numpy");
  py::array a = py::isinstance<py::array>(obj) ? py::reinterpret_borrow<py::array>(obj) : py::array(np.attr("asarray")(obj));
  const char kind = a.dtype().kind();
  if (a.size() == 0 && kind == 'O') a = py::array(np.attr("zeros")(a.attr("shape"), "float32"));
  else if (kind != 'i' && kind != 'u' && kind != 'f')
    throw py::type_error(std::string(name) + ": expected a numeric array, got " + dtype_str(a) + " " + shape_str(a));
  if (a.ndim() != 1) throw py::value_error(std::string(name) + ": expected a 1-d array, got shape " + shape_str(a));
  return py::array_t<float, py::array::c_style>(np.attr("require")(a, "float32", py::make_tuple("C", "A")));
}

std::size_t code_bits(const py::array& codes, const py::object& nbits_obj, const char* name) {
  const auto words = static_cast<std::size_t>(codes.shape(1));
  if (words == 0) throw py::value_error(std::string(name) + ": codes have 0 words (shape " + shape_str(codes) + ")");
  if (nbits_obj.is_none()) return words * 64;
  if (!PyLong_Check(nbits_obj.ptr()) && !PyIndex_Check(nbits_obj.ptr()))
    throw py::type_error("nbits: expected an integer or None, got " + type_name(nbits_obj));
  int overflow = 0;
  const py::object as_int = py::reinterpret_steal<py::object>(PyNumber_Index(nbits_obj.ptr()));
  if (!as_int) throw py::error_already_set();
  const long long nb = PyLong_AsLongLongAndOverflow(as_int.ptr(), &overflow);
  if (overflow != 0 || (nb == -1 && PyErr_Occurred()))
    throw py::value_error("nbits = " + py::str(as_int).cast<std::string>() + " is out of range");
  if (nb < 1) throw py::value_error("nbits must be >= 1, got " + std::to_string(nb));
  const auto nbits = static_cast<std::size_t>(nb);
  if (roicore::words_for_bits(nbits) != words)
    throw py::value_error("nbits=" + std::to_string(nbits) + " needs " + std::to_string(roicore::words_for_bits(nbits)) +
                          " uint64 words per code, but " + name + " has " + std::to_string(words));
  return nbits;
}

void same_width(const py::array& a, const char* an, const py::array& b, const char* bn) {
  if (a.shape(1) != b.shape(1))
    throw py::value_error(std::string("code widths differ: ") + an + " has " + std::to_string(a.shape(1)) +
                          " words per code, " + bn + " has " + std::to_string(b.shape(1)));
}

// An (rows, cols) output of `itemsize`-byte elements must be addressable: refuse sizes whose
// byte count or row stride overflows (pybind11 computes the strides in signed arithmetic,
// even when the other dimension is 0).
void check_output(std::size_t rows, std::size_t cols, std::size_t itemsize, const char* what) {
  const auto max = static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max());
  std::size_t n = 0, bytes = 0, row_bytes = 0;
  if (__builtin_mul_overflow(cols, itemsize, &row_bytes) || row_bytes > max || rows > max ||
      __builtin_mul_overflow(rows, cols, &n) || __builtin_mul_overflow(n, itemsize, &bytes) || bytes > max)
    throw py::value_error(std::string("the output (") + std::to_string(rows) + " x " + std::to_string(cols) +
                          ") is too large: " + what);
}

py::object g_index_format_error;  // roiret.errors.IndexFormatError (a ValueError subclass)

std::string fspath(const py::object& p) {
  py::object s = py::module_::import("os").attr("fspath")(p);
  if (!py::isinstance<py::bytes>(s) && !py::isinstance<py::str>(s)) throw py::type_error("path: expected str or os.PathLike");
  const std::string out = s.cast<std::string>();
  // the C library would stop at the NUL and open another file than the one named
  if (out.find('\0') != std::string::npos) throw py::value_error("path: embedded null byte");
  return out;
}

// ---------------------------------------------------------------------------------------
// kernels
// ---------------------------------------------------------------------------------------
py::array_t<std::uint64_t> pack_codes(const py::object& x_obj, int threads) {
  if (!py::isinstance<py::array>(x_obj))
    throw py::type_error("x: expected a numpy float32 or float64 array of shape (n, d), got " + type_name(x_obj));
  py::array x = py::reinterpret_borrow<py::array>(x_obj);
  const bool f32 = same_dtype<float>(x), f64 = same_dtype<double>(x);
  if (!f32 && !f64)
    throw py::type_error("x: expected float32 or float64 array of shape (n, d), got " + dtype_str(x) + " " + shape_str(x));
  if (x.ndim() != 2) throw py::value_error("x: expected a 2-d array (n, d), got shape " + shape_str(x));
  if (!c_contiguous(x)) throw py::value_error("x: expected a C-contiguous array; use np.ascontiguousarray(x)");
  if (!aligned(x)) throw py::value_error("x: expected an aligned array, got an unaligned view of a buffer; use x.copy()");
  const auto n = static_cast<std::size_t>(x.shape(0)), d = static_cast<std::size_t>(x.shape(1));
  if (d == 0) throw py::value_error("x: descriptors have 0 dimensions (shape " + shape_str(x) + ")");
  const std::size_t words = roicore::words_for_bits(d);
  py::array_t<std::uint64_t> out({n, words});
  std::uint64_t* o = out.mutable_data();
  const void* p = x.data();
  {
    py::gil_scoped_release nogil;
    if (f32) roicore::pack_codes_f32(static_cast<const float*>(p), n, d, o, threads);
    else roicore::pack_codes_f64(static_cast<const double*>(p), n, d, o, threads);
  }
  return out;
}

py::array_t<std::uint32_t> hamming_matrix(const py::object& a_obj, const py::object& b_obj, const py::object& nbits_obj,
                                          int threads) {
  auto a = strict<std::uint64_t>(a_obj, "a", 2, "(na, words)");
  auto b = strict<std::uint64_t>(b_obj, "b", 2, "(nb, words)");
  same_width(a, "a", b, "b");
  const std::size_t nbits = code_bits(a, nbits_obj, "a");
  const auto na = static_cast<std::size_t>(a.shape(0)), nb = static_cast<std::size_t>(b.shape(0));
  check_output(na, nb, 8, "na x nb distances");
  py::array_t<std::uint32_t> out({na, nb});
  std::uint32_t* o = out.mutable_data();
  const std::uint64_t *pa = a.data(), *pb = b.data();
  {
    py::gil_scoped_release nogil;
    roicore::hamming_matrix(pa, na, pb, nb, nbits, o, threads);
  }
  return out;
}

py::tuple hamming_knn(const py::object& q_obj, const py::object& db_obj, long long k, const py::object& nbits_obj,
                      int threads) {
  auto q = strict<std::uint64_t>(q_obj, "q", 2, "(nq, words)");
  auto db = strict<std::uint64_t>(db_obj, "db", 2, "(n, words)");
  same_width(q, "q", db, "db");
  const std::size_t nbits = code_bits(q, nbits_obj, "q");
  if (k < 1) throw py::value_error("k must be >= 1, got " + std::to_string(k));
  const auto nq = static_cast<std::size_t>(q.shape(0)), ndb = static_cast<std::size_t>(db.shape(0));
  const auto kk = static_cast<std::size_t>(k);
  check_output(nq, kk, 12, "reduce k (larger than the database only pads)");
  py::array_t<std::uint32_t> dist({nq, kk});
  py::array_t<std::int64_t> idx({nq, kk});
  std::uint32_t* pd = dist.mutable_data();
  std::int64_t* pi = idx.mutable_data();
  const std::uint64_t *pq = q.data(), *pdb = db.data();
  {
    py::gil_scoped_release nogil;
    roicore::hamming_knn(pq, nq, pdb, ndb, nbits, kk, pd, pi, threads);
  }
  return py::make_tuple(dist, idx);
}

py::tuple cross_match(const py::object& q_obj, const py::object& db_obj, const py::object& offsets_obj, long long nbits,
                      const py::object& mask_obj, const py::object& images_obj, int threads) {
  auto q = strict<std::uint64_t>(q_obj, "q", 2, "(nq, words)");
  auto db = strict<std::uint64_t>(db_obj, "db", 2, "(n, words)");
  same_width(q, "q", db, "db");
  const std::size_t nb = code_bits(q, py::int_(nbits), "q");
  auto offsets = strict<std::int64_t>(offsets_obj, "offsets", 1, "(n_images + 1,)");
  if (offsets.shape(0) < 1) throw py::value_error("offsets: expected at least 1 value (n_images + 1), got 0");
  const auto nq = static_cast<std::size_t>(q.shape(0)), ndb = static_cast<std::size_t>(db.shape(0));
  const auto n_groups = static_cast<std::size_t>(offsets.shape(0) - 1);
  roicore::validate_offsets(offsets.data(), n_groups, ndb, "offsets");

  const std::uint8_t* mask = nullptr;
  py::array_t<std::uint8_t> mask_arr;
  if (!mask_obj.is_none()) {
    if (!py::isinstance<py::array>(mask_obj))
      throw py::type_error("query_mask: expected a numpy bool array of shape (nq,), got " + type_name(mask_obj));
    py::array m = py::reinterpret_borrow<py::array>(mask_obj);
    if (!same_dtype<bool>(m) && !same_dtype<std::uint8_t>(m))
      throw py::type_error("query_mask: expected a bool array of shape (nq,), got " + dtype_str(m) + " " + shape_str(m));
    if (m.ndim() != 1 || static_cast<std::size_t>(m.shape(0)) != nq)
      throw py::value_error("query_mask: expected shape (" + std::to_string(nq) + ",), got " + shape_str(m));
    mask_arr = py::array_t<std::uint8_t>(py::module_::import("numpy").attr("ascontiguousarray")(m, "uint8"));
    mask = mask_arr.data();
  }
  const std::int64_t* images = nullptr;
  py::array_t<std::int64_t, py::array::c_style> images_arr;
  std::size_t n_out = n_groups;
  if (!images_obj.is_none()) {
    images_arr = as_int64(images_obj, "images");
    n_out = static_cast<std::size_t>(images_arr.shape(0));
    images = images_arr.data();
    for (std::size_t i = 0; i < n_out; ++i)
      if (images[i] < 0 || static_cast<std::size_t>(images[i]) >= n_groups)
        throw py::value_error("images[" + std::to_string(i) + "] = " + std::to_string(images[i]) +
                              " is not an image index in [0, " + std::to_string(n_groups) + ")");
  }
  py::array_t<float> score(n_out);
  py::array_t<std::int64_t> bq(n_out), bd(n_out), votes(nq);
  float* ps = score.mutable_data();
  std::int64_t *pbq = bq.mutable_data(), *pbd = bd.mutable_data(), *pv = votes.mutable_data();
  const std::uint64_t *pq = q.data(), *pdb = db.data();
  const std::int64_t* po = offsets.data();
  {
    py::gil_scoped_release nogil;
    roicore::cross_match(pq, nq, pdb, po, n_groups, images, n_out, nb, mask, ps, pbq, pbd, pv, threads);
  }
  return py::make_tuple(score, bq, bd, votes);
}

py::array_t<std::int64_t> select_rois(const py::object& boxes_obj, const py::object& scores_obj,
                                      const py::object& sizes_obj, long long K, double t_min, double t_rate,
                                      double t_iou, int threads) {
  auto boxes = strict<float>(boxes_obj, "boxes", 3, "(B, D, 4)");
  auto scores = strict<float>(scores_obj, "scores", 2, "(B, D)");
  auto sizes = strict<float>(sizes_obj, "image_sizes", 2, "(B, 2)");
  const auto B = static_cast<std::size_t>(boxes.shape(0)), D = static_cast<std::size_t>(boxes.shape(1));
  if (boxes.shape(2) != 4) throw py::value_error("boxes: expected shape (B, D, 4), got " + shape_str(boxes));
  if (static_cast<std::size_t>(scores.shape(0)) != B || static_cast<std::size_t>(scores.shape(1)) != D)
    throw py::value_error("scores: expected shape (" + std::to_string(B) + ", " + std::to_string(D) + ") to match boxes, got " +
                          shape_str(scores));
  if (static_cast<std::size_t>(sizes.shape(0)) != B || sizes.shape(1) != 2)
    throw py::value_error("image_sizes: expected shape (" + std::to_string(B) + ", 2) as (width, height), got " +
                          shape_str(sizes));
  if (K < 1) throw py::value_error("K (the number of RoIs to keep) must be >= 1, got " + std::to_string(K));
  if (std::isnan(t_min) || t_min < 0.0 || t_min > 1.0)
    throw py::value_error("t_min (minimum box area / image area) must be in [0, 1], got " + std::to_string(t_min));
  if (std::isnan(t_rate) || t_rate < 1.0)
    throw py::value_error("t_rate (maximum aspect ratio) must be >= 1, got " + std::to_string(t_rate));
  if (std::isnan(t_iou) || t_iou <= 0.0 || t_iou > 1.0)
    throw py::value_error("t_iou (IoU above which a box is suppressed) must be in (0, 1], got " + std::to_string(t_iou));
  const auto kk = static_cast<std::size_t>(K);
  check_output(B, kk, 8, "reduce K (more than D boxes only pads)");
  py::array_t<std::int64_t> out({B, kk});
  std::int64_t* o = out.mutable_data();
  const float *pb = boxes.data(), *ps = scores.data(), *pz = sizes.data();
  {
    py::gil_scoped_release nogil;
    roicore::select_rois(pb, ps, pz, B, D, kk, t_min, t_rate, t_iou, o, threads);
  }
  return out;
}

// One value per feature: a 1-d array of exactly n values.
template <class A>
void same_count(const A& a, const char* name, std::size_t n, const char* of) {
  if (static_cast<std::size_t>(a.shape(0)) != n)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(n) + " values (one per " + of + "), got " +
                          shape_str(a));
}

std::size_t count_param(long long v, long long minimum, const char* name) {
  if (v < minimum)
    throw py::value_error(std::string(name) + " must be >= " + std::to_string(minimum) + ", got " + std::to_string(v));
  return static_cast<std::size_t>(v);
}

py::tuple spatial_verify(const py::object& qw_obj, const py::object& qxy_obj, const py::object& qs_obj,
                         const py::object& qa_obj, const py::object& dw_obj, const py::object& dxy_obj,
                         const py::object& ds_obj, const py::object& da_obj, const py::object& off_obj,
                         const py::object& sides_obj, const py::object& rows_obj, long long max_per_word,
                         long long max_correspondences, double inlier_threshold, double scale_tolerance,
                         double angle_tolerance, long long lo_iterations, int threads) {
  auto qw = strict<std::uint32_t>(qw_obj, "query_words", 1, "(nq,)");
  auto qxy = strict<float>(qxy_obj, "query_xy", 2, "(nq, 2)");
  auto qs = strict<float>(qs_obj, "query_sizes", 1, "(nq,)");
  auto qa = strict<float>(qa_obj, "query_angles", 1, "(nq,)");
  auto dw = strict<std::uint32_t>(dw_obj, "db_words", 1, "(n,)");
  auto dxy = strict<std::uint16_t>(dxy_obj, "db_xy", 2, "(n, 2)");
  auto ds = strict<std::uint8_t>(ds_obj, "db_scales", 1, "(n,)");
  auto da = strict<std::uint8_t>(da_obj, "db_angles", 1, "(n,)");
  auto off = strict<std::int64_t>(off_obj, "db_offsets", 1, "(n_images + 1,)");
  auto sides = strict<float>(sides_obj, "db_sides", 1, "(n_images,)");
  auto rows = as_int64(rows_obj, "rows");
  const auto nq = static_cast<std::size_t>(qw.shape(0)), n = static_cast<std::size_t>(dw.shape(0));
  if (static_cast<std::size_t>(qxy.shape(0)) != nq || qxy.shape(1) != 2)
    throw py::value_error("query_xy: expected shape (" + std::to_string(nq) + ", 2) as (x, y), got " + shape_str(qxy));
  same_count(qs, "query_sizes", nq, "query feature");
  same_count(qa, "query_angles", nq, "query feature");
  if (static_cast<std::size_t>(dxy.shape(0)) != n || dxy.shape(1) != 2)
    throw py::value_error("db_xy: expected shape (" + std::to_string(n) + ", 2) as (x, y), got " + shape_str(dxy));
  same_count(ds, "db_scales", n, "database feature");
  same_count(da, "db_angles", n, "database feature");
  if (off.shape(0) < 1) throw py::value_error("db_offsets: expected at least 1 value (n_images + 1), got 0");
  const auto n_images = static_cast<std::size_t>(off.shape(0) - 1);
  same_count(sides, "db_sides", n_images, "image: len(db_offsets) - 1");
  roicore::SvParams p;
  p.max_per_word = count_param(max_per_word, 1, "max_per_word");
  p.max_correspondences = count_param(max_correspondences, 3, "max_correspondences");
  p.lo_iterations = count_param(lo_iterations, 0, "lo_iterations");
  if (!(inlier_threshold > 0.0) || !std::isfinite(inlier_threshold))
    throw py::value_error("inlier_threshold (a fraction of the image's longest side) must be positive and finite, got " +
                          std::to_string(inlier_threshold));
  if (!(scale_tolerance > 1.0) || !std::isfinite(scale_tolerance))
    throw py::value_error("scale_tolerance (the largest scale ratio to the hypothesis) must be > 1 and finite, got " +
                          std::to_string(scale_tolerance));
  if (!(angle_tolerance > 0.0 && angle_tolerance <= 180.0))
    throw py::value_error(
        "angle_tolerance (the largest orientation difference to the hypothesis, in degrees) must be in (0, 180], got " +
        std::to_string(angle_tolerance));
  p.inlier_threshold = inlier_threshold;
  p.scale_tolerance = scale_tolerance;
  p.angle_tolerance = angle_tolerance;
  const auto R = static_cast<std::size_t>(rows.shape(0));
  py::array_t<std::int32_t> inliers(R);
  py::array_t<double> affine({R, std::size_t{2}, std::size_t{3}});
  py::array_t<float> qbox({R, std::size_t{4}}), dbox({R, std::size_t{4}});
  py::array_t<std::int32_t> corr(R);
  const roicore::SvQuery q{qw.data(), qxy.data(), qs.data(), qa.data(), nq};
  const roicore::SvDatabase db{dw.data(), dxy.data(), ds.data(), da.data(), n, off.data(), sides.data(), n_images};
  const roicore::SvOutput out{inliers.mutable_data(), affine.mutable_data(), qbox.mutable_data(), dbox.mutable_data(),
                              corr.mutable_data()};
  const std::int64_t* pr = rows.data();
  {
    py::gil_scoped_release nogil;
    roicore::spatial_verify(q, db, pr, R, p, out, threads);
  }
  return py::make_tuple(inliers, affine, qbox, dbox, corr);
}

// ---------------------------------------------------------------------------------------
// InvertedFile, EmbeddedInvertedFile
// ---------------------------------------------------------------------------------------
template <class T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> a(v.size());
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// The images of an add() in CSR form: ids (n), offsets (n + 1), words (nnz).
struct CsrImages {
  py::array_t<std::int64_t, py::array::c_style> ids, offsets, words;
  std::size_t n, nnz;
};

CsrImages csr_images(const py::object& ids_obj, const py::object& offsets_obj, const py::object& words_obj) {
  CsrImages c{as_int64(ids_obj, "image_ids"), as_int64(offsets_obj, "offsets"), as_int64(words_obj, "words"), 0, 0};
  c.n = static_cast<std::size_t>(c.ids.shape(0));
  c.nnz = static_cast<std::size_t>(c.words.shape(0));
  if (static_cast<std::size_t>(c.offsets.shape(0)) != c.n + 1)
    throw py::value_error("offsets: expected " + std::to_string(c.n + 1) + " values (len(image_ids) + 1), got " +
                          std::to_string(c.offsets.shape(0)));
  return c;
}

// Weights of m words (any numeric array, as float32), or ones when None.
py::array_t<float, py::array::c_style> word_weights(const py::object& obj, std::size_t m, const char* name) {
  py::array_t<float, py::array::c_style> w;
  if (obj.is_none()) {
    w = py::array_t<float, py::array::c_style>(m);
    std::fill(w.mutable_data(), w.mutable_data() + m, 1.0f);
  } else {
    w = as_f32(obj, name);
  }
  if (static_cast<std::size_t>(w.shape(0)) != m)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(m) + " values (one per word), got " +
                          std::to_string(w.shape(0)));
  return w;
}

std::size_t vocab_count(long long vocab_size) {
  if (vocab_size < 1) throw py::value_error("vocab_size must be >= 1, got " + std::to_string(vocab_size));
  return static_cast<std::size_t>(vocab_size);
}

std::size_t top_count(long long top) {
  if (top < 1) throw py::value_error("top must be >= 1, got " + std::to_string(top));
  return static_cast<std::size_t>(top);
}

// (ids int64, scores float32), or (ids int64, scores float64) with the exact scores.
py::tuple search_result(const std::vector<std::int64_t>& ids, const std::vector<float>& scores,
                        const std::vector<double>* exact) {
  if (exact != nullptr) return py::make_tuple(to_array(ids), to_array(*exact));
  return py::make_tuple(to_array(ids), to_array(scores));
}

void ivf_add(InvertedFile& self, const py::object& ids_obj, const py::object& offsets_obj, const py::object& words_obj,
             const py::object& counts_obj) {
  const CsrImages c = csr_images(ids_obj, offsets_obj, words_obj);
  auto counts = word_weights(counts_obj, c.nnz, "counts");
  const std::int64_t *pi = c.ids.data(), *po = c.offsets.data(), *pw = c.words.data();
  const float* pc = counts.data();
  py::gil_scoped_release nogil;
  self.add(pi, c.n, po, pw, pc, c.nnz);
}

template <bool kExact>
py::tuple ivf_search(const InvertedFile& self, const py::object& words_obj, const py::object& counts_obj, long long top,
                     int threads) {
  const std::size_t tn = top_count(top);
  auto words = as_int64(words_obj, "words");
  const auto m = static_cast<std::size_t>(words.shape(0));
  auto counts = word_weights(counts_obj, m, "counts");
  std::vector<std::int64_t> ids;
  std::vector<float> scores;
  std::vector<double> exact;
  const std::int64_t* pw = words.data();
  const float* pc = counts.data();
  {
    py::gil_scoped_release nogil;
    self.search(pw, pc, m, tn, ids, scores, threads, kExact ? &exact : nullptr);
  }
  return search_result(ids, scores, kExact ? &exact : nullptr);
}

py::tuple ivf_search_batch(const InvertedFile& self, const py::object& offsets_obj, const py::object& words_obj,
                           const py::object& counts_obj, long long top, int threads) {
  const std::size_t tn = top_count(top);
  auto offsets = as_int64(offsets_obj, "offsets");
  if (offsets.shape(0) < 1) throw py::value_error("offsets: expected n_queries + 1 values, got 0");
  auto words = as_int64(words_obj, "words");
  const auto nnz = static_cast<std::size_t>(words.shape(0));
  auto counts = word_weights(counts_obj, nnz, "counts");
  const auto nq = static_cast<std::size_t>(offsets.shape(0) - 1);
  check_output(nq, tn, 12, "reduce top (more than len(self) only pads)");
  py::array_t<std::int64_t> oi({nq, tn});
  py::array_t<float> os({nq, tn});
  std::int64_t* pi = oi.mutable_data();
  float* ps = os.mutable_data();
  const std::int64_t *po = offsets.data(), *pw = words.data();
  const float* pc = counts.data();
  {
    py::gil_scoped_release nogil;
    self.search_batch(po, nq, pw, pc, nnz, tn, pi, ps, threads);
  }
  return py::make_tuple(oi, os);
}

// Signatures of `rows` pairs: a C-contiguous uint64 array (rows, W), never cast.
py::array_t<std::uint64_t, py::array::c_style> signature_rows(const EmbeddedInvertedFile& self, const py::object& obj,
                                                              std::size_t rows, const char* rows_are) {
  const std::size_t W = self.words_per_signature();
  const std::string want = "(" + std::to_string(rows) + ", " + std::to_string(W) + ")";
  auto s = strict<std::uint64_t>(obj, "signatures", 2, want.c_str());
  if (static_cast<std::size_t>(s.shape(0)) != rows || static_cast<std::size_t>(s.shape(1)) != W)
    throw py::value_error("signatures: expected shape " + want + " (one " + std::to_string(self.nbits()) +
                          "-bit signature of " + std::to_string(W) + " uint64 words per " + rows_are + "), got " +
                          shape_str(s));
  return s;
}

void eivf_add(EmbeddedInvertedFile& self, const py::object& ids_obj, const py::object& offsets_obj,
              const py::object& words_obj, const py::object& sigs_obj) {
  const CsrImages c = csr_images(ids_obj, offsets_obj, words_obj);
  auto sigs = signature_rows(self, sigs_obj, c.nnz, "word");
  const std::int64_t *pi = c.ids.data(), *po = c.offsets.data(), *pw = c.words.data();
  const std::uint64_t* ps = sigs.data();
  py::gil_scoped_release nogil;
  self.add(pi, c.n, po, pw, ps, c.nnz);
}

template <bool kExact>
py::tuple eivf_search(const EmbeddedInvertedFile& self, const py::object& words_obj, const py::object& sigs_obj,
                      const py::object& weights_obj, long long top, double alpha, double tau, int threads,
                      long long max_postings) {
  if (max_postings < 0) throw py::value_error("max_postings must be >= 0 (0: no limit), got " + std::to_string(max_postings));
  const std::size_t tn = top_count(top);
  auto words = as_int64(words_obj, "words");
  const auto m = static_cast<std::size_t>(words.shape(0));
  auto sigs = signature_rows(self, sigs_obj, m, "query word");
  auto weights = word_weights(weights_obj, m, "weights");
  std::vector<std::int64_t> ids;
  std::vector<float> scores;
  std::vector<double> exact;
  const std::int64_t* pw = words.data();
  const std::uint64_t* ps = sigs.data();
  const float* pc = weights.data();
  {
    py::gil_scoped_release nogil;
    self.search(pw, ps, pc, m, tn, alpha, tau, ids, scores, threads, kExact ? &exact : nullptr,
                static_cast<std::uint64_t>(max_postings));
  }
  return search_result(ids, scores, kExact ? &exact : nullptr);
}

py::tuple eivf_selected_terms(const EmbeddedInvertedFile& self, const py::object& words_obj,
                              const py::object& weights_obj, long long max_postings) {
  if (max_postings < 0) throw py::value_error("max_postings must be >= 0 (0: no limit), got " + std::to_string(max_postings));
  auto words = as_int64(words_obj, "words");
  const auto m = static_cast<std::size_t>(words.shape(0));
  auto weights = word_weights(weights_obj, m, "weights");
  std::vector<char> keep;
  std::uint64_t postings = 0;
  const std::int64_t* pw = words.data();
  const float* pc = weights.data();
  {
    py::gil_scoped_release nogil;
    postings = self.selected_terms(pw, pc, m, static_cast<std::uint64_t>(max_postings), keep);
  }
  py::array_t<bool> k(static_cast<py::ssize_t>(m));
  std::copy(keep.begin(), keep.end(), k.mutable_data());
  return py::make_tuple(k, postings);
}

py::tuple eivf_document(const EmbeddedInvertedFile& self, std::int64_t id, const py::object& words_obj) {
  std::vector<std::int64_t> words;
  std::vector<std::uint64_t> sigs;
  const bool given = !words_obj.is_none();
  py::array_t<std::int64_t, py::array::c_style> cand;
  if (given) cand = as_int64(words_obj, "words");
  const std::int64_t* pc = given ? cand.data() : nullptr;
  const std::size_t nc = given ? static_cast<std::size_t>(cand.shape(0)) : 0;
  {
    py::gil_scoped_release nogil;
    self.document(id, words, sigs, pc, nc);
  }
  const std::size_t W = self.words_per_signature();
  py::array_t<std::uint64_t> s({words.size(), W});
  std::copy(sigs.begin(), sigs.end(), s.mutable_data());
  return py::make_tuple(to_array(words), s);
}

// What both inverted files share: collection statistics, removal, sizes, persistence.
template <class Index>
void bind_index_common(py::class_<Index>& cls) {
  cls.def(
         "set_collection_stats",
         [](Index& self, long long n_docs, const py::object& df_obj) {
           if (n_docs < 0) throw py::value_error("n_docs must be >= 0, got " + std::to_string(n_docs));
           auto df = as_int64(df_obj, "df");
           const auto n = static_cast<std::size_t>(df.shape(0));
           std::vector<std::uint64_t> d(n);
           const std::int64_t* p = df.data();
           for (std::size_t i = 0; i < n; ++i) {
             if (p[i] < 0) throw py::value_error("df[" + std::to_string(i) + "] is negative");
             d[i] = static_cast<std::uint64_t>(p[i]);
           }
           py::gil_scoped_release nogil;
           self.set_collection_stats(static_cast<std::uint64_t>(n_docs), d.data(), n);
         },
         py::arg("n_docs"), py::arg("df"),
         R"doc(Score with the statistics of a whole collection split over several inverted
files (shards): idf_t = ln(n_docs / df[t]) and the image norms computed with it, so each
image scores bit for bit as in one file holding the collection. df: vocab_size counts, each
at least this file's own and at most n_docs; n_docs >= len(self) (ValueError otherwise).
Not saved; add() and remove() clear them (set them again after a change).)doc")
      .def("clear_collection_stats", py::method_adaptor<Index>(&Index::clear_collection_stats),
           "Back to this file's own statistics (idf from its own images).")
      .def_property_readonly("has_collection_stats", py::method_adaptor<Index>(&Index::has_collection_stats),
                             "True while statistics set by set_collection_stats() are in use.")
      .def_property_readonly("stats_documents", py::method_adaptor<Index>(&Index::stats_documents),
                             "The N of the idf: the collection's when set, else len(self).")
      .def(
          "remove",
          [](Index& self, const py::object& ids_obj) {
            auto ids = as_int64(ids_obj, "image_ids");
            const std::int64_t* p = ids.data();
            const auto n = static_cast<std::size_t>(ids.shape(0));
            py::gil_scoped_release nogil;
            return self.remove(p, n);
          },
          py::arg("image_ids"),
          "Remove images by id (all or nothing: an unknown id raises ValueError); returns how many were removed.")
      .def("__len__", py::method_adaptor<Index>(&Index::size))
      .def("__contains__", [](const Index& self, std::int64_t id) { return self.contains(id); }, py::arg("image_id"))
      .def_property_readonly("vocab_size", py::method_adaptor<Index>(&Index::vocab_size))
      .def_property_readonly("num_postings", py::method_adaptor<Index>(&Index::num_postings))
      .def("memory_bytes", &Index::memory_bytes, "Bytes held in memory by postings, per-word and per-image arrays (signatures read through a map: "
           "mapped_bytes()).")
      .def("ids", [](const Index& self) { return to_array(self.ids()); }, "Image ids in insertion order.")
      .def("document_frequencies", [](const Index& self) { return to_array(self.document_frequencies()); },
           "df_t for every word (uint32, vocab_size values).")
      .def("idf", [](const Index& self) { return to_array(self.idf()); }, "idf_t = ln(N / df_t) for every word (0 where df_t = 0).")
      .def(
          "save",
          [](const Index& self, const py::object& path) {
            const std::string p = fspath(path);
            py::gil_scoped_release nogil;
            self.save(p);
          },
          py::arg("path"),
          R"doc(Write a versioned binary file (magic, sizes, CRC-32 per section) atomically:
a temporary file in the same directory, fsync, then rename over path.)doc")
;
}

constexpr const char* kLoadDoc = R"doc(Read and fully validate a file written by save(). Raises
roiret.errors.IndexFormatError (wrong magic, newer version, truncated, checksum mismatch,
inconsistent contents) or OSError.)doc";

// Index::load(path, args...) with the GIL released.
template <class Index, class... Args>
std::unique_ptr<Index> load_index_file(const py::object& path, Args... args) {
  const std::string p = fspath(path);
  py::gil_scoped_release nogil;
  return Index::load(p, args...);
}

// ---------------------------------------------------------------------------------------
// module definition
// ---------------------------------------------------------------------------------------
// roicore's exceptions as Python ones: InvalidArgument -> ValueError, FormatError ->
// roiret.errors.IndexFormatError, IoError -> OSError(errno, strerror, path).
void register_exceptions() {
  g_index_format_error = py::module_::import("roiret.errors").attr("IndexFormatError");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const roicore::InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const roicore::FormatError& e) {
      PyErr_SetString(g_index_format_error.ptr(), e.what());
    } catch (const roicore::IoError& e) {
      py::object err = py::reinterpret_steal<py::object>(
          PyObject_CallFunction(PyExc_OSError, "iss", e.error_number(), std::strerror(e.error_number()), e.path().c_str()));
      if (err) PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(err.ptr())), err.ptr());
    }
  });
}

// CPU dispatch, threads and the CRC-32 of index files.
void bind_dispatch(py::module_& m) {
  m.def("simd_level", [] { return std::string(roicore::simd_level_name(roicore::active_simd_level())); },
        "Name of the SIMD kernels in use: 'generic', 'popcnt', 'avx2' or 'avx512'.");
  m.def("detected_simd_level", [] { return std::string(roicore::simd_level_name(roicore::detected_simd_level())); },
        "Highest SIMD level this CPU and OS support.");
  m.def("supported_simd_levels",
        [] {
          std::vector<std::string> out;
          for (auto l : roicore::supported_simd_levels()) out.emplace_back(roicore::simd_level_name(l));
          return out;
        },
        "SIMD levels that can run on this CPU, lowest first.");
  m.def("set_simd_level",
        [](const std::string& name) {
          return std::string(roicore::simd_level_name(roicore::set_simd_level(roicore::parse_simd_level(name))));
        },
        py::arg("level"),
        "Force the SIMD kernels (e.g. 'generic' to test the fallback); returns the previous level. "
        "Raises ValueError for a level this CPU cannot run. The ROIRET_SIMD environment variable sets the "
        "initial level at import.");
  m.def("search_block_bytes", [] { return roicore::search_block_bytes(); },
        "Accumulator bytes per document range of an inverted-file search (ranges sized to stay in L2).");
  m.def("set_search_block_bytes", [](std::size_t bytes) { return roicore::set_search_block_bytes(bytes); },
        py::arg("bytes"),
        "Set the accumulator bytes per document range of inverted-file searches (0: the default, 512 KiB); "
        "returns the previous value. Results are identical for every value; only the speed changes.");
  m.def("get_num_threads", [] { return roicore::default_num_threads(); },
        "Default number of threads used by the kernels.");
  m.def("set_num_threads", [](int n) { roicore::set_default_num_threads(n); }, py::arg("n"),
        "Set the default number of threads (n <= 0 restores the hardware default).");
  m.def("crc32",
        [](const py::bytes& data, std::uint32_t crc) {
          std::string s = data;
          return roicore::crc32_update(crc, s.data(), s.size());
        },
        py::arg("data"), py::arg("crc") = 0, "CRC-32 as used in index files (equal to zlib.crc32).");
}

// The kernels (each checks its arguments above, then releases the GIL).
void bind_kernels(py::module_& m) {
  m.def("pack_codes", &pack_codes, py::arg("x"), py::arg("threads") = 0);
  m.def("hamming_matrix", &hamming_matrix, py::arg("a"), py::arg("b"), py::arg("nbits") = py::none(),
        py::arg("threads") = 0);
  m.def("hamming_knn", &hamming_knn, py::arg("q"), py::arg("db"), py::arg("k"), py::arg("nbits") = py::none(),
        py::arg("threads") = 0);
  m.def("cross_match", &cross_match, py::arg("q"), py::arg("db"), py::arg("offsets"), py::arg("nbits"),
        py::arg("query_mask") = py::none(), py::arg("images") = py::none(), py::arg("threads") = 0);
  m.def("select_rois", &select_rois, py::arg("boxes"), py::arg("scores"), py::arg("image_sizes"), py::arg("K"),
        py::arg("t_min"), py::arg("t_rate"), py::arg("t_iou"), py::arg("threads") = 0);
  m.def("spatial_verify", &spatial_verify, py::arg("query_words"), py::arg("query_xy"), py::arg("query_sizes"),
        py::arg("query_angles"), py::arg("db_words"), py::arg("db_xy"), py::arg("db_scales"), py::arg("db_angles"),
        py::arg("db_offsets"), py::arg("db_sides"), py::arg("rows"), py::arg("max_per_word"),
        py::arg("max_correspondences"), py::arg("inlier_threshold"), py::arg("scale_tolerance"),
        py::arg("angle_tolerance"), py::arg("lo_iterations"), py::arg("threads") = 0);
}

constexpr const char* kInvertedFileDoc = R"doc(Inverted file with TF-IDF scoring (the bag-of-words first stage).

Documents are images with integer ids and bags of visual words with positive weights
(usually counts). With N images and df_t the number of images containing word t,
idf_t = ln(N / df_t) (0 for unseen words); document and query vectors are (weight * idf)
L2-normalised, and the score is their dot product. idf and norms always reflect the
current collection (additions are merged lazily before the next search or save).

Memory: 8 bytes per posting (uint32 image index + float32 weight) plus O(vocabulary)
plus O(images).

Thread safety: every method may be called from any number of threads at once; searches
share a reader lock (and release the GIL), add/remove take it exclusively.

Parameters
----------
vocab_size : int
    Number of visual words; word ids are in [0, vocab_size).
)doc";

// The InvertedFile class: a flat table of methods with their docstrings.
void bind_inverted_file(py::module_& m) {
  py::class_<InvertedFile> cls(m, "InvertedFile", kInvertedFileDoc);
  cls.def(py::init([](long long vocab_size) { return new InvertedFile(vocab_count(vocab_size)); }), py::arg("vocab_size"))
      .def("add", &ivf_add, py::arg("image_ids"), py::arg("offsets"), py::arg("words"), py::arg("counts") = py::none(),
           R"doc(Add images in CSR form: image i has id image_ids[i] and the words
words[offsets[i]:offsets[i+1]] with weights counts[...] (default 1). Repeated words in an
image are summed, zero weights dropped. Ids must be new and unique; word ids in range;
weights finite and >= 0. Everything is checked before anything changes (ValueError).)doc")
      .def("search", &ivf_search<false>, py::arg("words"), py::arg("counts") = py::none(), py::arg("top") = 100,
           py::arg("threads") = 0,
           R"doc(Top min(top, len(self)) images for a bag of words -> (ids int64, scores float32),
by descending score; ties, and images sharing no word with the query (score 0), in
insertion order. A large search (>= 2**20 postings scanned) splits the images over up to
`threads` threads (0: roiret.get_num_threads()); results are identical for every count.)doc")
      .def("search_exact", &ivf_search<true>, py::arg("words"), py::arg("counts") = py::none(), py::arg("top") = 100,
           py::arg("threads") = 0,
           R"doc(search(), with the scores in double precision (float64): the key the results
are ordered by (descending; ties in insertion order). Merging the results of several
inverted files that share collection statistics by (exact score, file order, position)
reproduces the order of one file holding all their images.)doc")
      .def("search_batch", &ivf_search_batch, py::arg("offsets"), py::arg("words"), py::arg("counts") = py::none(),
           py::arg("top") = 100, py::arg("threads") = 0,
           R"doc(Many queries in CSR form, searched in parallel -> (ids (nq, top), scores (nq, top)),
padded with -1 / -inf when the index holds fewer than top images.)doc")
      .def("__repr__", [](const InvertedFile& self) {
        return "InvertedFile(vocab_size=" + std::to_string(self.vocab_size()) + ", images=" + std::to_string(self.size()) +
               ", postings=" + std::to_string(self.num_postings()) + ")";
      });
  bind_index_common(cls);
  cls.def_static("load", &load_index_file<InvertedFile>, py::arg("path"), kLoadDoc);
}

constexpr const char* kEmbeddedFileDoc = R"doc(Inverted file whose postings carry binary signatures, scored
with the aggregated selective match kernel (ASMK*, Tolias, Avrithis, Jegou 2013): the
Hamming-embedded bag-of-words first stage.

An image is a set of (visual word, signature) pairs, each word at most once (one
aggregated, binarised residual per word). Signatures have nbits bits in
W = ceil(nbits / 64) uint64 words (bit i = bit i % 64 of word i // 64; bits >= nbits are
ignored). With N images and df_c the images holding word c, idf_c = ln(N / df_c) (0 for
unseen words) and an image's norm is 1 / sqrt(sum of idf_c over its words). A query is
terms (word, signature, weight), words may repeat. With h the Hamming distance and
u = 1 - 2 h / nbits, sigma(h) = sign(u) |u|**alpha if u > tau else 0, and

    score(d) = norm_d * sum_t weight_t * idf_{word_t} * sigma(h(q_t, b_{d, word_t}))

over the terms whose word d holds (float64; word by word in the order of each word's first
term, a word's terms summed in term order: a word repeated by many terms, as in an expanded
query, has its list read once). The caller normalises the query weights. idf and norms always reflect the current collection (additions are merged lazily
before the next search or save).

Memory: 4 + 8 W bytes per posting (uint32 image index + signature: 12 at 64 bits) plus
O(vocabulary) plus O(images); 4 bytes per posting when the signatures are memory-mapped
(load(path, mmap=True)).

Thread safety: every method may be called from any number of threads at once; searches
share a reader lock (and release the GIL), add/remove take it exclusively.

Parameters
----------
vocab_size : int
    Number of visual words; word ids are in [0, vocab_size).
nbits : int
    Signature length in bits, 1..1024.
)doc";

// The EmbeddedInvertedFile class.
void bind_embedded_file(py::module_& m) {
  py::class_<EmbeddedInvertedFile> cls(m, "EmbeddedInvertedFile", kEmbeddedFileDoc);
  cls.def(py::init([](long long vocab_size, long long nbits) {
            const std::size_t V = vocab_count(vocab_size);
            if (nbits < 1 || nbits > static_cast<long long>(EmbeddedInvertedFile::kMaxBits))
              throw py::value_error("nbits must be in [1, " + std::to_string(EmbeddedInvertedFile::kMaxBits) +
                                    "], got " + std::to_string(nbits));
            return new EmbeddedInvertedFile(V, static_cast<std::size_t>(nbits));
          }),
          py::arg("vocab_size"), py::arg("nbits") = 64)
      .def("add", &eivf_add, py::arg("image_ids"), py::arg("offsets"), py::arg("words"), py::arg("signatures"),
           R"doc(Add images in CSR form: image i has id image_ids[i] and the pairs
j in offsets[i]:offsets[i+1] of word words[j] and signature signatures[j] (uint64 array
(len(words), W), C-contiguous; never cast). Ids must be new and unique; word ids in range
and each at most once per image (any order). Everything is checked before anything
changes (ValueError, TypeError for a wrong dtype).)doc")
      .def("search", &eivf_search<false>, py::arg("words"), py::arg("signatures"), py::arg("weights") = py::none(),
           py::arg("top") = 100, py::arg("alpha") = 3.0, py::arg("tau") = 0.0, py::arg("threads") = 1,
           py::arg("max_postings") = 0,
           R"doc(Top min(top, len(self)) images for query terms (words, signatures (len(words), W)
uint64, weights finite >= 0, default 1) -> (ids int64, scores float32), by descending score;
ties in insertion order; images scoring 0 (sharing no word, or every match at u <= tau)
fill the list in insertion order before any negative score. alpha > 0 shapes the kernel,
tau in [-1, 1) is its threshold. A large search (>= 2**20 postings scanned) splits the
images over up to `threads` threads (0: roiret.get_num_threads()); results are identical
for every count. max_postings > 0 bounds the postings scanned, counted with the
collection's df: when the terms that can score hold more, whole words are scanned by
descending sum of their terms' weight x idf while they fit (at least one word; see
selected_terms).)doc")
      .def("search_exact", &eivf_search<true>, py::arg("words"), py::arg("signatures"),
           py::arg("weights") = py::none(), py::arg("top") = 100, py::arg("alpha") = 3.0, py::arg("tau") = 0.0,
           py::arg("threads") = 1, py::arg("max_postings") = 0,
           R"doc(search(), with the scores in double precision (float64): the key the results
are ordered by. Merging the results of several files that share collection statistics by
(exact score, file order, position) reproduces the order of one file holding all their
images.)doc")
      .def("selected_terms", &eivf_selected_terms, py::arg("words"), py::arg("weights") = py::none(),
           py::arg("max_postings") = 0,
           R"doc(The query terms a search with this max_postings scans -> (keep bool (len(words),),
postings int): keep[t] False for a term skipped by the budget or that cannot score
(weight or idf 0); a word's terms are kept or skipped together; postings: what the kept
terms' words hold in the collection (its df when statistics are set, else this file's).)doc")
      .def("document", &eivf_document, py::arg("image_id"), py::arg("words") = py::none(),
           R"doc(The pairs of one image -> (words int64 ascending, signatures uint64 (k, W)), as
added (bits >= nbits zero). words (optional, 1-D integers in [0, vocab_size), any order,
repeats allowed): only the pairs whose word is among them, found by searching only those
words' lists — pass the image's feature words to skip the rest of the vocabulary (measured
at 10^6 images and 50 000 words: 0.19 ms instead of 2.7 ms). ValueError for an unknown id or
a word out of range.)doc")
      .def_property_readonly("nbits", &EmbeddedInvertedFile::nbits)
      .def("__repr__", [](const EmbeddedInvertedFile& self) {
        return "EmbeddedInvertedFile(vocab_size=" + std::to_string(self.vocab_size()) +
               ", nbits=" + std::to_string(self.nbits()) + ", images=" + std::to_string(self.size()) +
               ", postings=" + std::to_string(self.num_postings()) +
               (self.mapped_bytes() > 0 ? ", signatures mapped" : "") + ")";
      });
  bind_index_common(cls);
  cls.def_static(
         "load", [](const py::object& path, bool mmap) { return load_index_file<EmbeddedInvertedFile>(path, mmap); },
         py::arg("path"), py::arg("mmap") = false,
         R"doc(Read and fully validate a file written by save(). mmap=True maps the signatures
section read-only instead of reading it into memory (checked the same way, through the
map): the process then holds 4 bytes a posting and the signatures are file-cache pages,
shared with other processes mapping the file and dropped under memory pressure instead of
the process being killed; the first add() or remove() copies them into memory. A file in
format version 1 (written before the aligned layout) whose signatures do not start at a
multiple of 8 bytes is read instead: mapped_bytes() is then 0 (save it again to map it).
The file must not be truncated or rewritten in place while mapped (save() renames a new
file over it, which the map survives). Raises roiret.errors.IndexFormatError (wrong magic,
newer version, truncated, checksum mismatch, inconsistent contents) or OSError.)doc")
      .def("mapped_bytes", &EmbeddedInvertedFile::mapped_bytes,
           "Bytes of signatures read through a memory map of the file (load(mmap=True)); 0 when in memory.");
}

constexpr const char* kMappedFileDoc = R"doc(MappedFile(path): a whole file memory-mapped read-only,
holding no file descriptor (it is closed as soon as the file is mapped).

A read-only buffer of len(self) bytes (memoryview(f), np.frombuffer(f, ...)); the mapping
lives as long as this object or any array made from it, even if the file is renamed or
removed. A symbolic link as the last path component is refused (OSError, ELOOP), and so is
anything but a regular file (roiret.errors.IndexFormatError); OSError (errno, path) when
the file cannot be opened or mapped.)doc";

// A read-only mapping of a file as a Python buffer (what numpy arrays of index files view).
void bind_mapped_file(py::module_& m) {
  py::class_<roicore::MappedFile>(m, "MappedFile", py::buffer_protocol(), kMappedFileDoc)
      .def(py::init([](const py::object& path) {
             const std::string p = fspath(path);
             py::gil_scoped_release nogil;
             return new roicore::MappedFile(p);
           }),
           py::arg("path"))
      .def_buffer([](const roicore::MappedFile& f) {
        return py::buffer_info(const_cast<unsigned char*>(f.data()), 1, py::format_descriptor<unsigned char>::format(),
                               1, {static_cast<py::ssize_t>(f.size())}, {py::ssize_t{1}}, /*readonly=*/true);
      })
      .def("__len__", &roicore::MappedFile::size)
      .def_property_readonly("path", &roicore::MappedFile::path, "The path the file was mapped from.")
      .def("__repr__", [](const roicore::MappedFile& f) {
        return "MappedFile('" + f.path() + "', " + std::to_string(f.size()) + " bytes)";
      });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "roiret._core: native kernels (private; use the public names in roiret).";
  register_exceptions();
  bind_dispatch(m);
  bind_kernels(m);
  bind_inverted_file(m);
  bind_embedded_file(m);
  bind_mapped_file(m);
  m.attr("INVERTED_FILE_FORMAT_VERSION") = InvertedFile::kFormatVersion;
  m.attr("EMBEDDED_FILE_FORMAT_VERSION") = EmbeddedInvertedFile::kFormatVersion;
}
