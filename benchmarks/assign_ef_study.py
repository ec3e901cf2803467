"""Word assignment with HNSW: efSearch against speed, recall and BoW-only mAP.

Takes a saved roiret index of Oxford5k-dev (its vocabulary and local-feature settings),
extracts the database features once, then for each efSearch assigns them all (one faiss
thread, timed), measures recall against exact assignment, rebuilds the BoW index and
evaluates BoW-only mAP (classic / revisited medium / hard) with the query boxes.

    python benchmarks/assign_ef_study.py --index /tmp/roiret-eval/oxford5k-dev-conv-max-roiret-* \\
        --dataset ../shared/datasets/oxford5k-dev --ef 128 64 32 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", required=True, help="a saved roiret index of the dataset")
    ap.add_argument("--dataset", default="../shared/datasets/oxford5k-dev")
    ap.add_argument("--ef", type=int, nargs="+", default=[128, 64, 32, 16])
    ap.add_argument("--recall-sample", type=int, default=20_000)
    a = ap.parse_args(argv)

    import faiss

    from roiret.bow.index import BowIndex
    from roiret.eval import load_gnd
    from roiret.eval.table import evaluate_oxford
    from roiret.io.images import load_image, resize_max_side
    from roiret.search.index import TwoStageIndex
    from roiret.search.ranking import rank
    from roiret.search.retriever import Retriever

    root = Path(a.dataset)
    if not (root / "gnd.json").exists():
        print(f"skipped: no dataset at {root}")
        return 0
    gt = load_gnd(root / "gnd.json")
    r = Retriever.load(a.index, progress=False)
    faiss.omp_set_num_threads(1)
    ext, voc, store = r.encoder.extractor, r.encoder.vocabulary, r.store
    t0 = time.time()
    feats = [ext.extract(resize_max_side(load_image(str(gt.image_path(n))), r.config.max_side)[0]) for n in store.names]
    allx = np.concatenate([f.descriptors for f in feats])
    print(f"{len(allx)} descriptors of {len(feats)} images in {time.time() - t0:.0f} s", flush=True)
    sample = allx[: a.recall_sample]
    exact = voc.assign_exact(sample)
    print("| efSearch | descriptors/s | ms per image | recall | classic | medium | hard |")
    print("|---|---|---|---|---|---|---|")
    for ef in a.ef:
        voc.hnsw_ef_search = ef
        t = time.perf_counter()
        voc.assign(allx)
        dt = time.perf_counter() - t
        recall = float((voc.assign(sample) == exact).mean())
        bow = BowIndex(voc, ext)
        bow.add_features(feats, ids=store.ids)
        index = TwoStageIndex(bow, store)  # the new inverted file with the saved RoIs
        params = r.config.rerank.replace(mode="bow")
        res = evaluate_oxford(
            gt,
            lambda q, index=index, params=params: (
                rank(
                    r.prepare_query(gt.image_path(q.image), q.bbox, with_rois=False),  # voc: the ef being measured
                    index,
                    r.nbits,
                    params,
                    K=r.config.K,
                    top=len(r),
                ).hits
            ),
        )
        print(
            f"| {ef} | {len(allx) / dt:,.0f} | {1000 * dt / len(feats):.0f} | {recall:.3f} | "
            f"{100 * res['classic']:.2f} | {100 * res['revisited/medium']:.2f} | {100 * res['revisited/hard']:.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
