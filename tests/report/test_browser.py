"""report.html in a real browser (headless Chromium) with the network blocked: every image
decodes, nothing is fetched, and the page fits a 1280-pixel window without sideways scrolling."""

import json
import os
import re
import shutil
import subprocess

import pytest

from expertcache.report.build import write_report

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium on PATH (.ci/run installs Debian's chromium)")

# Appended to a copy of the report: after load, writes what the page holds into the DOM that --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.setAttribute("data-probe", JSON.stringify({
    images: images.length,
    decoded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    fetched: performance.getEntriesByType("resource").map(r => r.name).filter(n => !n.startsWith("data:")),
    width: document.documentElement.scrollWidth}));
});
</script>"""


def test_report_renders_offline_in_chromium(tmp_path):
    write_report(["example:olmoe-1b-7b", "example:gpt-oss-120b"], tmp_path / "r")
    page = tmp_path / "probe.html"
    page.write_text((tmp_path / "r" / "report.html").read_text() + PROBE)
    no_network = ["--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]
    sandbox = ["--no-sandbox"] if os.geteuid() == 0 else []
    result = subprocess.run(
        [BROWSER, "--headless", "--disable-gpu", *sandbox, *no_network, "--window-size=1280,900",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'data-probe="([^"]*)"', result.stdout)
    assert found, result.stderr[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"'))
    figures = len(list((tmp_path / "r" / "figures").iterdir()))
    assert probe["images"] == figures == 13  # 6 + 6 figures and the comparison
    assert probe["decoded"] == probe["images"]
    assert probe["fetched"] == []
    assert probe["width"] <= 1280
