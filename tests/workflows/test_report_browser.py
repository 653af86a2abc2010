"""The demo's report in a real headless browser (Debian's chromium + chromium-driver through selenium): no
console errors, every section there, every image decoded, the box overlay where the stored boxes are, and a
full-page screenshot."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from unimo_pipe.pipeline.feature_store import open_feature_dir

BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVERS = ("/usr/bin/chromedriver",)
EXPECTED_SECTIONS = {"not-shown", "stage", "regions", "augment", "retrieval", "shards", "training"}
KNOWN_IMAGE = "astronaut.jpg"


def _first(paths: tuple[str, ...], name: str) -> str | None:
    found = [p for p in paths if Path(p).is_file()]
    return found[0] if found else shutil.which(name)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    binary, driver = _first(BROWSERS, "chromium"), _first(DRIVERS, "chromedriver")
    if binary is None or driver is None:
        pytest.skip("no chromium and chromedriver on this machine (CI installs them: apt-get install chromium "
                    "chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


def test_the_demo_report_renders_in_a_real_browser(demo_output, browser, tmp_path):
    out, _ = demo_output
    browser.get((out / "report.html").as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    kinds = set(browser.execute_script(
        "return [...document.querySelectorAll('section.report-section')].map(s => s.dataset.kind)"))
    assert kinds == EXPECTED_SECTIONS
    images = browser.execute_script(
        "return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(images) >= 12 and all(complete and width > 0 and height > 0 for _, complete, width, height in images)

    overlay = browser.execute_script(
        """const svg = document.querySelector(`svg.boxes[data-image="${arguments[0]}"]`);
        const img = svg.parentElement.querySelector('img');
        img.scrollIntoView();
        const frame = img.getBoundingClientRect();
        return {viewBox: svg.getAttribute('viewBox'), frame: [frame.left, frame.top, frame.width, frame.height],
                boxes: [...svg.querySelectorAll('rect.box')].map(r => {
                    const b = r.getBoundingClientRect();
                    return {stored: r.dataset.box.split(' ').map(Number), drawn: [b.left, b.top, b.right, b.bottom]};
                })};""", KNOWN_IMAGE)
    store = open_feature_dir(out / "features")
    stored = store.get_dump(KNOWN_IMAGE)["boxes"]
    width, height = store.meta[KNOWN_IMAGE]["width"], store.meta[KNOWN_IMAGE]["height"]
    assert overlay["viewBox"] == f"0 0 {width} {height}"
    assert len(overlay["boxes"]) == len(stored)
    np.testing.assert_allclose([b["stored"] for b in overlay["boxes"]], stored, atol=0.01)
    left, top, shown_width, shown_height = overlay["frame"]
    scale = np.array([shown_width / width, shown_height / height] * 2)
    expected = stored * scale + np.array([left, top, left, top])
    np.testing.assert_allclose([b["drawn"] for b in overlay["boxes"]], expected, atol=1.5)  # pixels on screen

    full_height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, full_height)
    screenshot = tmp_path / "demo-report.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
