"""Pages as a person sees them: headless Chromium loads a page, reports which images did not
load and which section titles it shows, and keeps a screenshot as a test artefact (in
``$ROIRET_TEST_ARTIFACTS``, default ``build/test-artifacts/``). Tests using it skip where
Chromium is not installed (``.ci/run`` installs Debian's ``chromium``)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

ARTIFACTS = Path(os.environ.get("ROIRET_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "build/test-artifacts"))

_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.alt || i.src.slice(0, 60); });
  var out = {images: imgs.length, broken: broken,
             headings: Array.prototype.map.call(document.querySelectorAll('h1,h2'),
                                                function (h) { return h.textContent; }),
             legend: Array.prototype.map.call(document.querySelectorAll('.legend span'),
                                              function (s) { return s.textContent; })};
  var pre = document.createElement('pre'); pre.id = 'roiret-probe';
  pre.textContent = 'PROBE' + JSON.stringify(out) + 'PROBE';
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(exe: str, args: List[str]) -> str:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


def inspect_page(page: Path, shot_name: str) -> Dict[str, object]:
    """Load ``page`` in headless Chromium: ``{"images": n, "broken": [...], "headings": [...],
    "legend": [...], "screenshot": path}``."""
    exe = chromium()
    assert exe is not None
    probe = page.with_name(page.stem + ".probe.html")
    probe.write_text(page.read_text("utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = _run(exe, ["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()])
    m = re.search(r'<pre id="roiret-probe">PROBE(.*?)PROBE</pre>', dom, re.S)
    assert m, f"the page did not finish loading in Chromium: {dom[:500]}"
    result = json.loads(html.unescape(m.group(1)))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{shot_name}.png"
    _run(exe, ["--window-size=1400,2000", f"--screenshot={shot}", page.as_uri()])
    result["screenshot"] = shot
    return result
