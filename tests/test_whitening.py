"""PCA-whitening: identity covariance on its training data, dims, persistence, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from roiret.cnn.whitening import PCAWhitening, l2_normalize
from roiret.errors import IndexFormatError, NotTrainedError
from roiret.io.arrays import load_arrays, save_arrays


def _correlated(n=2000, d=12, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    return rng.standard_normal((n, d)) @ a + rng.standard_normal(d) * 5


def test_identity_covariance_on_training_data():
    x = _correlated()
    w = PCAWhitening().fit(x)
    y = w.transform(x, normalize=False).astype(np.float64)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    cov = (y - y.mean(0)).T @ (y - y.mean(0)) / len(y)
    np.testing.assert_allclose(cov, np.eye(12), atol=1e-4)
    assert w.in_dim == 12 and w.out_dim == 12
    # eigenvalues descending
    assert (np.diff(w.eigenvalues_) <= 0).all()


def test_dims_keep_the_leading_components():
    x = _correlated(seed=1)
    full = PCAWhitening().fit(x).transform(x, normalize=False)
    w4 = PCAWhitening(dims=4).fit(x)
    y4 = w4.transform(x, normalize=False)
    assert y4.shape == (2000, 4)
    np.testing.assert_allclose(np.abs(y4), np.abs(full[:, :4]), rtol=1e-4, atol=1e-4)
    cov = np.cov(y4.T, bias=True)
    np.testing.assert_allclose(cov, np.eye(4), atol=1e-4)


def test_l2_after_whitening_and_eps():
    x = _correlated(seed=2)
    y = PCAWhitening(eps=1.0).fit(x).transform(x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)
    assert y.dtype == np.float32


def test_degenerate_components_are_dropped():
    rng = np.random.default_rng(3)
    x = np.zeros((500, 10))
    x[:, :3] = rng.standard_normal((500, 3))  # 7 dead channels (like unused conv filters)
    with pytest.warns(RuntimeWarning, match="only 3 non-degenerate"):
        w = PCAWhitening(dims=8).fit(x)
    assert w.out_dim == 3
    assert np.isfinite(w.transform(x)).all()
    # fewer samples than dimensions
    w2 = PCAWhitening().fit(rng.standard_normal((5, 10)))
    assert w2.out_dim == 4


def test_torch_input_matches_numpy():
    x = _correlated(seed=4)
    w = PCAWhitening(dims=6).fit(torch.from_numpy(x).float())
    q = x[:7]
    a = w.transform(q)
    b = w.transform(torch.from_numpy(q).float())
    assert isinstance(b, torch.Tensor) and b.dtype == torch.float32
    np.testing.assert_allclose(b.numpy(), a, rtol=1e-4, atol=1e-5)


def test_save_load_roundtrip(tmp_path):
    x = _correlated(seed=5)
    w = PCAWhitening(dims=5, eps=0.1).fit(x)
    p = tmp_path / "w.npz"
    w.save(p)
    v = PCAWhitening.load(p)
    np.testing.assert_array_equal(v.transform(x[:10]), w.transform(x[:10]))
    assert (v.dims, v.eps, v.n_samples_) == (5, 0.1, 2000)
    assert "12 -> 5" in repr(v)
    st = PCAWhitening.from_state(w.state_dict())
    np.testing.assert_array_equal(st.projection_, w.projection_)


def test_saved_as_a_checksummed_array_file(tmp_path):
    w = PCAWhitening(dims=4).fit(_correlated(seed=6))
    p = tmp_path / "w.npz"
    w.save(p)
    hdr, arrays = load_arrays(p, "roiret.PCAWhitening", 2)  # roiret.io.arrays checks every SHA-256
    assert (hdr["version"], hdr["dims"], hdr["n_samples"]) == (2, 4, 2000) and set(arrays) == {
        "mean",
        "projection",
        "eigenvalues",
    }
    np.testing.assert_array_equal(arrays["projection"], w.projection_)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w.npz"]  # no temporary file left
    with np.load(p) as z:  # a valid .npz whose mean is not the one the header's SHA-256 names
        entries = {k: z[k] for k in z.files}
    entries["mean"][0] += 1.0
    np.savez(p, **entries)
    with pytest.raises(IndexFormatError, match="'mean' is corrupt"):
        PCAWhitening.load(p)


def test_a_file_of_version_1_still_loads(tmp_path):
    """What PCAWhitening.save wrote before it used roiret.io.arrays (its code, verbatim)."""
    import json

    x = _correlated(seed=7)
    w = PCAWhitening(dims=6, eps=0.01).fit(x)
    st = w.state_dict()
    meta = {k: st[k] for k in ("format", "version", "dims", "eps", "rank_tol", "normalize", "n_samples")}
    meta["version"] = 1
    p = tmp_path / "old.npz"
    with open(p, "wb") as f:
        np.savez(
            f,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            mean=st["mean"],
            projection=st["projection"],
            eigenvalues=st["eigenvalues"],
        )
    v = PCAWhitening.load(p)
    np.testing.assert_array_equal(v.transform(x[:10]), w.transform(x[:10]))
    assert (v.dims, v.eps, v.n_samples_) == (6, 0.01, 2000)
    with open(p, "wb") as f:  # a version-1 file without its projection
        np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), mean=st["mean"])
    with pytest.raises(IndexFormatError, match="old.npz: not a PCAWhitening file"):
        PCAWhitening.load(p)


def test_load_refuses_other_files(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, a=np.zeros(3))
    with pytest.raises(IndexFormatError, match="not a roiret roiret.PCAWhitening file"):
        PCAWhitening.load(p)
    np.save(tmp_path / "a.npy", np.zeros(3))  # NumPy reads it, as an array
    with pytest.raises(IndexFormatError, match=r"a\.npy: not a readable .* \(ValueError: a ndarray, not an \.npz"):
        PCAWhitening.load(tmp_path / "a.npy")
    save_arrays(p, "roiret.PCAWhitening", 3, {}, {})
    with pytest.raises(IndexFormatError, match="version 3; this roiret reads versions 1 to 2"):
        PCAWhitening.load(p)
    save_arrays(p, "roiret.PCAWhitening", 2, {"dims": None}, {"mean": np.zeros(3)})
    with pytest.raises(IndexFormatError, match="invalid PCAWhitening file"):
        PCAWhitening.load(p)
    with pytest.raises(FileNotFoundError):
        PCAWhitening.load(tmp_path / "missing.npz")
    st = PCAWhitening().fit(_correlated()).state_dict()
    st["version"] = 99
    with pytest.raises(ValueError, match="newer"):
        PCAWhitening.from_state(st)


def test_errors():
    w = PCAWhitening()
    with pytest.raises(NotTrainedError, match="PCAWhitening is not trained"):
        w.transform(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="2-D"):
        w.fit(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        w.fit(np.full((4, 2), np.nan))
    with pytest.raises(ValueError, match="at least 2"):
        w.fit(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="no variance"):
        w.fit(np.ones((10, 3)))
    w.fit(_correlated())
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        w.transform(np.zeros((2, 11)))
    with pytest.raises(ValueError, match="dims"):
        PCAWhitening(dims=0)


def test_l2_normalize_keeps_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0, 0]])
    t = l2_normalize(torch.tensor(x))
    np.testing.assert_allclose(t.numpy(), [[0.6, 0.8], [0, 0]])
