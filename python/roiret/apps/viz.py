"""Pictures of search results, like the paper's Figure 6: the query with its box (blue) and
RoIs, then the ranked database images — before re-ranking (BoW order) and after — each
with the best-matching RoI drawn in magenta and, when the ground truth is known, a green
(positive) or red (negative) border. PNG strips and a self-contained HTML page (images
embedded as data URIs: one file to open or send).
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    AbstractSet,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
)

import numpy as np

from ..io import PathLike

if TYPE_CHECKING:  # pragma: no cover
    from ..search.results import Hit, SearchResult

Color = Tuple[int, int, int]

__all__ = [
    "LEGEND",
    "draw_boxes",
    "encode_jpeg",
    "encode_png",
    "hits_table",
    "locate_image",
    "render_strip",
    "result_strip",
    "write_html",
]

BLUE = (40, 90, 255)
MAGENTA = (255, 0, 255)
GREEN = (30, 200, 60)
RED = (230, 30, 30)
YELLOW = (255, 210, 0)


def _cv2() -> Any:
    import cv2

    return cv2


def draw_boxes(
    img: np.ndarray, boxes: Iterable[Sequence[float]], color: Color = MAGENTA, thickness: int = 2
) -> np.ndarray:
    """A copy of the RGB ``img`` with rectangles ``(x1, y1, x2, y2)`` (pixels) drawn."""
    cv2 = _cv2()
    out = np.ascontiguousarray(img.copy())
    h, w = out.shape[:2]
    for b in boxes:
        if b is None:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        x1, x2 = max(0, min(w - 1, x1)), max(0, min(w - 1, x2 - 1))
        y1, y2 = max(0, min(h - 1, y1)), max(0, min(h - 1, y2 - 1))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness, lineType=cv2.LINE_AA)
    return out


def _thumb(img: np.ndarray, height: int, border: Optional[Color] = None, label: str = "") -> np.ndarray:
    cv2 = _cv2()
    h, w = img.shape[:2]
    nw = max(1, int(round(w * height / h)))
    t: np.ndarray = cv2.resize(img, (nw, height), interpolation=cv2.INTER_AREA)
    if border is not None:
        t = cv2.copyMakeBorder(t, 5, 5, 5, 5, cv2.BORDER_CONSTANT, value=border)
    else:
        t = cv2.copyMakeBorder(t, 5, 5, 5, 5, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    if label:
        cap = np.full((22, t.shape[1], 3), 255, np.uint8)
        cv2.putText(
            cap, label[: max(4, t.shape[1] // 8)], (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
        t = np.concatenate([t, cap], 0)
    return t


def render_strip(tiles: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """Tiles side by side on a white background (bottom-padded to the tallest)."""
    height = max(t.shape[0] for t in tiles)
    parts = []
    for t in tiles:
        pad = np.full((height - t.shape[0], t.shape[1], 3), 255, np.uint8)
        parts += [np.concatenate([t, pad], 0), np.full((height, gap, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], 1)


def result_strip(
    query: np.ndarray,
    query_box: Optional[Sequence[float]],
    result: SearchResult,
    load: Callable[[Hit], np.ndarray],
    *,
    top: int = 8,
    positives: Optional[AbstractSet[int]] = None,
    height: int = 150,
    show_query_rois: bool = True,
    reranked: bool = True,
) -> np.ndarray:
    """One row: the query (its box in blue, its RoIs in yellow, the RoI of the best pair
    of the first hit in magenta), then ``top`` hits (``load(hit)`` → RGB image), each with
    its best-matching RoI in magenta and a green / red border when ``positives`` (a set of
    ids) is given. ``reranked=False`` draws no RoI pair (a BoW-order row)."""
    q = query
    if show_query_rois and len(result.query_boxes):
        q = draw_boxes(q, result.query_boxes, YELLOW, 1)
    if query_box is not None:
        q = draw_boxes(q, [query_box], BLUE, 3)
    first = result.hits[0] if result.hits else None
    if reranked and first is not None and first.query_box is not None:
        q = draw_boxes(q, [first.query_box], MAGENTA, 2)
    tiles = [_thumb(q, height, None, "query")]
    for h in result.hits[:top]:
        img = load(h)
        if reranked and h.db_box is not None:
            img = draw_boxes(img, [h.db_box], MAGENTA, max(2, img.shape[0] // 150))
        border = None if positives is None else (GREEN if h.id in positives else RED)
        s = h.score if reranked else h.bow_score  # a first-stage row shows the first stage's score
        # a verified hit's score is its inliers: say so (every score: the table under the strip)
        label = f"{h.rank}  {h.inliers} inliers" if h.verified else f"{h.rank}  {s:.2f}"
        tiles.append(_thumb(img, height, border, label))
    return render_strip(tiles)


def locate_image(name: str, index_folder: PathLike) -> Optional[str]:
    """The file an indexed image's ``name`` refers to, or None: an absolute path (what
    :meth:`Retriever.add <roiret.Retriever.add>` stores) as it is; a relative one — stored by
    an older roiret as it was typed — in the current folder, else beside the index folder."""
    p = Path(name)
    if p.is_absolute():
        return name if p.is_file() else None
    for base in (Path.cwd(), Path(index_folder).resolve().parent):
        if (base / p).is_file():
            return str(base / p)
    return None


def encode_png(img: np.ndarray) -> bytes:
    """RGB array → PNG bytes."""
    cv2 = _cv2()
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the image as PNG")
    return bytes(buf.tobytes())


def write_png(path: PathLike, img: np.ndarray) -> None:
    Path(path).write_bytes(encode_png(img))


def encode_jpeg(img: np.ndarray, quality: int = 85) -> bytes:
    """RGB array → JPEG bytes (what pages embed: photos are ~10x smaller than as PNG)."""
    cv2 = _cv2()
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("could not encode the image as JPEG")
    return bytes(buf.tobytes())


#: what the pictures draw, by key: (colour as CSS, what it marks)
LEGEND = {
    "query_box": ("#2850ff", "query box"),
    "query_rois": ("#e6c200", "query RoIs"),
    "pair": ("#ff00ff", "best-matching RoI pair"),
    "positive": ("#1ec83c", "positive"),
    "negative": ("#e61e1e", "negative"),
}


#: the name of ``Hit.bow_score`` by first stage
FIRST_STAGE_SCORE = {"asmk": "ASMK similarity", "tfidf": "TF-IDF cosine"}


def hits_table(result: SearchResult, top: int) -> List[Dict[str, Any]]:
    """The rows a page shows under a strip: full names and every score of the first ``top``
    hits (``score`` as :class:`~roiret.search.results.Hit` defines it; verified hits marked)."""
    return [
        {
            "rank": h.rank,
            "name": str(h.name),
            "inliers": f"{h.inliers} verified" if h.verified else h.inliers,
            "score": h.score,
            "RoI similarity": h.roi_score,
            FIRST_STAGE_SCORE[result.first_stage]: h.bow_score,
        }
        for h in result.hits[:top]
    ]


def _table(rows: List[Dict[str, Any]]) -> str:
    cols = list(rows[0])
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in cols) + "</tr>"]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            cls = "num" if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else "txt"
            cells.append(f"<td class='{cls}'>{html.escape(_fmt(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def write_html(
    path: PathLike, title: str, sections: List[Dict[str, Any]], intro: str = "", legend: Sequence[str] = ()
) -> None:
    """A self-contained page (pictures embedded as JPEG data URIs). Each section:
    ``{"title": str, "text": str (optional), "images": [(caption, RGB array, rows or None)],
    "table": [dict rows] (optional)}`` — an image's rows (e.g. :func:`hits_table`) are shown
    under it. ``legend``: keys of :data:`LEGEND` for what the pictures actually draw."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:24px;color:#222}img{max-width:100%;border:1px solid #ddd}"
        "table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px}"
        "td.num{text-align:right}td.txt{text-align:left;overflow-wrap:anywhere;max-width:40em}"
        "th{background:#f3f3f3;text-align:left}.cap{font-size:13px;color:#555;margin:10px 0 4px}"
        ".legend span{display:inline-block;padding:1px 8px;margin-right:8px;color:#fff}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if legend:
        parts.append(
            "<p class='legend'>"
            + "".join(f"<span style='background:{LEGEND[k][0]}'>{html.escape(LEGEND[k][1])}</span>" for k in legend)
            + "</p>"
        )
    if intro:
        parts.append(f"<p>{intro}</p>")
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.get('title', ''))}</h2>")
        if sec.get("text"):
            parts.append(f"<p>{sec['text']}</p>")
        for item in sec.get("images", []):
            caption, img, rows = (tuple(item) + (None,))[:3]
            data = base64.b64encode(encode_jpeg(img)).decode("ascii")
            parts.append(
                f"<div class='cap'>{html.escape(caption)}</div><img src='data:image/jpeg;base64,{data}' "
                f"alt='{html.escape(caption)}'>"
            )
            if rows:
                parts.append(_table(rows))
        if sec.get("table"):
            parts.append(_table(sec["table"]))
    parts.append("</body></html>")
    tmp = Path(str(path) + ".tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)


def _fmt(v: object) -> str:
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{v:.2f}"
    return str(v)
