"""When is a spatially verified match evidence? Unrelated and true image pairs verified at
several vocabulary sizes, with a fixed inlier count (``min_inliers`` alone, the rule before)
and with the a-contrario threshold of :func:`roiret.search.verify.required_inliers` (the
table of docs/RESULTS.md, "How many inliers make a match").

    python benchmarks/verify_threshold_study.py --datasets ../shared/datasets \\
        --vocab-sizes 500,1000,2000,8000,20000 --cache /tmp/verify-threshold

Pairs (each verified with the library's kernel on a :class:`~roiret.search.geometry.GeometryStore`,
as ``Retriever.search`` does; RootSIFT, at most 2 000 keypoints, images at most 500 px):

* **skimage**: scikit-image's photos — unrelated: every ordered pair of different photos;
  true: each photo against 5 rotated, rescaled, cropped, JPEG re-compressed copies of itself.
* **oxford5k-dev crops**: each classic query's box — true: its ``good`` images; unrelated:
  the ``good`` and ``ok`` images of the other four landmarks (other buildings, often
  similar architecture: the hardest negatives here).
* **oxford5k-dev whole**: 60 whole images of one landmark against 5 of another (unrelated).
* **ukbench-56**: each image against the 3 other views of its object (true) and the 52
  images of the other objects (unrelated).

Vocabularies are learned (10 k-means iterations, 200 000 descriptors sampled with seed 0)
on the Oxford images used here, never on labels. Features and vocabularies are kept in
``--cache``. The datasets are optional (their rows are skipped when absent).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np

PHOTOS = [
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "rocket", "stereo_motorcycle", "text",
]  # fmt: skip
#: (degrees, scale, crop fraction per side, JPEG quality) of the true copies
TRANSFORMS = [(20, 0.7, 0.1, 75), (-10, 0.9, 0.05, 60), (45, 0.5, 0.0, 80), (0, 1.0, 0.25, 50), (90, 0.8, 0.1, 70)]
MIN_INLIERS = 5

#: one image's local features: (xy, sizes, angles, descriptors, longest side)
Features = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]


def photo(name: str) -> np.ndarray:
    """A scikit-image photo as RGB uint8, at most 500 px."""
    from skimage import data

    from roiret.io.images import load_shrunk, to_uint8_rgb

    x = getattr(data, name)()
    if isinstance(x, tuple):
        x = x[0]
    if x.ndim == 3 and x.shape[2] == 4:
        x = x[..., :3]
    return load_shrunk(np.ascontiguousarray(to_uint8_rgb(x)), 500).image


def transformed(img: np.ndarray, angle: float, scale: float, crop: float, quality: int) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    out = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    y0, x0 = int(crop * h), int(crop * w)
    ok, enc = cv2.imencode(".jpg", out[y0 : h - y0, x0 : w - x0, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(enc, cv2.IMREAD_COLOR)[..., ::-1].copy()


def extract_all(datasets: Path, cache: Path) -> Dict[str, Features]:
    """Features of every image the pairs use, by key (``ox/<stem>``, ``uk/<stem>``,
    ``sk/<photo>``, ``sk/<photo>/<transform>``); cached."""
    path = cache / "features.pkl"
    if path.exists():
        with path.open("rb") as f:
            return pickle.load(f)  # noqa: S301 - our own cache file
    from roiret.bow.features import LocalFeatureExtractor
    from roiret.io.images import load_shrunk

    ext = LocalFeatureExtractor("rootsift", max_keypoints=2000, max_side=None)

    def features(img: np.ndarray) -> Features:
        f = ext.extract(img)
        return f.xy, f.sizes, np.asarray(f.angles, np.float32), f.descriptors, float(max(img.shape[:2]))

    out: Dict[str, Features] = {}
    for name in PHOTOS:
        img = photo(name)
        out[f"sk/{name}"] = features(img)
        for t, params in enumerate(TRANSFORMS):
            out[f"sk/{name}/{t}"] = features(transformed(img, *params))
    for folder, key in (("oxford5k-dev", "ox"), ("ukbench-56", "uk")):
        for stem in _images(datasets / folder) if (datasets / folder / "gnd.json").exists() else []:
            out[f"{key}/{stem}"] = features(load_shrunk(str(datasets / folder / "jpg" / f"{stem}.jpg"), 500).image)
    cache.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(out, f)
    return out


def _images(root: Path) -> List[str]:
    """The images of a dataset that the pairs use (Oxford: the classic queries and the good
    and ok images of every landmark; UKBench: all)."""
    g = json.loads((root / "gnd.json").read_text())
    if "protocols" not in g:
        return list(g["images"])
    names = set()
    for q in g["protocols"]["classic"]["queries"]:
        names |= {q["image"], *q["good"], *q["ok"]}
    return sorted(names)


def pairs(datasets: Path, keys: List[str]) -> List[Tuple[str, str, str, str, object]]:
    """(collection, kind, query key, database key, query box or None) of every pair."""
    out: List[Tuple[str, str, str, str, object]] = []
    photos = [k for k in keys if k.startswith("sk/") and k.count("/") == 1]
    out += [("skimage", "unrelated", a, b, None) for a in photos for b in photos if a != b]
    out += [("skimage", "true", f"{a}/{t}", a, None) for a in photos for t in range(len(TRANSFORMS))]
    if (datasets / "oxford5k-dev" / "gnd.json").exists():
        queries = json.loads((datasets / "oxford5k-dev" / "gnd.json").read_text())["protocols"]["classic"]["queries"]
        landmark: Dict[str, set] = {}
        for q in queries:
            landmark.setdefault(q["landmark"], set()).update(q["good"] + q["ok"])
        for q in queries:
            box, a = tuple(q["bbox"]), f"ox/{q['image']}"
            out += [("oxford crops", "true", a, f"ox/{n}", box) for n in q["good"] if n != q["image"]]
            others = sorted(set().union(*[v for k, v in landmark.items() if k != q["landmark"]]))
            out += [("oxford crops", "unrelated", a, f"ox/{n}", box) for n in others]
        rng, names = np.random.default_rng(1), sorted(landmark)
        for _ in range(60):
            i, j = rng.choice(len(names), 2, replace=False)
            a = str(rng.choice(sorted(landmark[names[i]])))
            others = rng.choice(sorted(landmark[names[j]]), 5, replace=False)
            out += [("oxford whole", "unrelated", f"ox/{a}", f"ox/{b}", None) for b in others]
    uk = sorted(k for k in keys if k.startswith("uk/"))
    for i, a in enumerate(uk):
        kinds = ["true" if i // 4 == j // 4 else "unrelated" for j in range(len(uk))]
        out += [("ukbench-56", kinds[j], a, b, None) for j, b in enumerate(uk) if j != i]
    return out


def vocabulary(size: int, feats: Dict[str, Features], cache: Path):
    from roiret.bow.vocabulary import Vocabulary

    path = cache / f"vocabulary-{size}.npz"
    if path.exists():
        return Vocabulary.load(path)
    train = [f[3] for k, f in feats.items() if k.startswith("ox/")] or [f[3] for f in feats.values()]
    voc = Vocabulary.fit(train, size, seed=0, max_train_descriptors=200_000, kmeans_iterations=10, progress=False)
    voc.save(path)
    return voc


def verify_pairs(size: int, feats: Dict[str, Features], todo, cache: Path) -> List[Tuple[str, str, int, int, bool]]:
    """(collection, kind, inliers, correspondences, verified by the a-contrario rule) per pair."""
    from roiret.search.geometry import FeatureGeometry, GeometryStore
    from roiret.search.verify import verify_rows

    voc = vocabulary(size, feats, cache)
    words = {k: voc.assign(f[3]).astype(np.uint32) for k, f in feats.items()}
    db_keys = sorted({p[3] for p in todo})
    row = {k: i for i, k in enumerate(db_keys)}
    store = GeometryStore()
    for k in db_keys:
        xy, sizes, angles, _, side = feats[k]
        store.add(FeatureGeometry(words[k], xy, sizes, angles), (side, side))
    out = []
    by_query: Dict[Tuple[str, object], List[Tuple[str, str, str]]] = {}
    for collection, kind, a, b, box in todo:
        by_query.setdefault((a, box), []).append((collection, kind, b))
    for (a, box), rest in by_query.items():
        xy, sizes, angles, _, _ = feats[a]
        keep = np.ones(len(xy), bool)
        if box is not None:
            x1, y1, x2, y2 = box  # type: ignore[misc]
            keep = (xy[:, 0] >= x1) & (xy[:, 0] <= x2) & (xy[:, 1] >= y1) & (xy[:, 1] <= y2)
        query = FeatureGeometry(words[a][keep], xy[keep], sizes[keep], angles[keep])
        checks = verify_rows(query, store, np.array([row[b] for _, _, b in rest]))
        for collection, kind, b in rest:
            c = checks[row[b]]
            out.append((collection, kind, c.inliers, c.correspondences, c.verified(MIN_INLIERS)))
    return out


def table(results: Dict[int, List[Tuple[str, str, int, int, bool]]]) -> str:
    lines = [
        "| words | collection | pairs true / unrelated | true verified: 5 inliers / a-contrario | "
        "unrelated verified: 5 inliers / a-contrario | correspondences p50 (unrelated) |",
        "|---|---|---|---|---|---|",
    ]
    for size, rows in results.items():
        for collection in dict.fromkeys(r[0] for r in rows):
            t = [r for r in rows if r[0] == collection and r[1] == "true"]
            u = [r for r in rows if r[0] == collection and r[1] == "unrelated"]

            def pct(sel, fixed: bool) -> str:
                if not sel:
                    return "–"
                return f"{100 * np.mean([(r[2] >= MIN_INLIERS) if fixed else r[4] for r in sel]):.1f} %"

            m = np.median([r[3] for r in u]) if u else float("nan")
            lines.append(
                f"| {size} | {collection} | {len(t)} / {len(u)} | {pct(t, True)} / {pct(t, False)} | "
                f"{pct(u, True)} / **{pct(u, False)}** | {m:.0f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=Path, default=Path("../shared/datasets"), help="oxford5k-dev/, ukbench-56/")
    ap.add_argument("--vocab-sizes", default="500,1000,2000,8000,20000")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/verify-threshold"), help="features and vocabularies")
    args = ap.parse_args(argv)
    feats = extract_all(args.datasets, args.cache)
    todo = pairs(args.datasets, sorted(feats))
    results = {int(v): verify_pairs(int(v), feats, todo, args.cache) for v in args.vocab_sizes.split(",")}
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
