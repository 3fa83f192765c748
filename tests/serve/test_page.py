"""The page at / in a real browser (Debian's chromium driven by Playwright): pick an image,
see the overlay and the segment list, hover a segment, download links. Its screenshot is
docs/images/serve_page.png (rewritten when PANOPTIC_EXT_UPDATE_DOCS=1)."""

import os
import shutil

import httpx
import pytest

from tests.helpers.tools import REPO

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: `make install` installs Debian's chromium "
                    "(apt-get install chromium) where apt can")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=60_000)
        yield b
        b.close()


@pytest.mark.timeout(180)
def test_page_uploads_and_shows_segments(server, browser, images, tmp_path):
    expected = httpx.post(server.url + "/v1/panoptic", files={"file": open(images[0], "rb")},
                          timeout=60).json()["segments_info"]
    page = browser.new_page(viewport={"width": 1000, "height": 640})
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_selector("text=Model ready")
    page.set_input_files("#file", images[0])
    page.wait_for_selector("body[data-done='1']")

    items = page.locator("#segments li")
    assert items.count() == len(expected)
    for i, seg in enumerate(expected):
        text = items.nth(i).inner_text()
        assert seg["category_name"] in text and f"area {seg['area']} px" in text
    painted = page.evaluate("""() => {
        const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0;
        return [c.width, c.height, n]; }""")
    covered = sum(s["area"] for s in expected)
    assert painted == [64, 64, covered]  # every pixel of a segment, none elsewhere

    # Hover the middle of the first segment's box: the info line names its class.
    seg = expected[0]
    box = page.locator("#overlay").bounding_box()
    scale = box["width"] / 64
    x0, y0, w, h = seg["bbox"]
    page.mouse.move(box["x"] + (x0 + w / 2) * scale, box["y"] + (y0 + h / 2) * scale)
    assert page.locator("#info").inner_text() != ""
    items.nth(0).hover()
    assert seg["category_name"] in page.locator("#info").inner_text()
    assert page.locator("#download-png").get_attribute("href").startswith(
        "data:image/png;base64,")
    assert page.locator("#download-json").get_attribute("download").endswith("_panoptic.json")
    assert errors == []

    shot = tmp_path / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
    if os.environ.get("PANOPTIC_EXT_UPDATE_DOCS") == "1":
        os.makedirs(os.path.join(REPO, "docs", "images"), exist_ok=True)
        shutil.copy(shot, os.path.join(REPO, "docs", "images", "serve_page.png"))
    page.close()
