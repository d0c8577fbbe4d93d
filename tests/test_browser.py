"""Build the book (smoke profile), serve it on 127.0.0.1 and look at every page in headless Chromium.

Every request that leaves 127.0.0.1 is aborted and recorded, so passing means the
book works offline. A missing browser is an error, never a skip.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from hessian_lib.book import list_chapters, run_book

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def built_book(tmp_path_factory, data_root) -> Path:
    html = run_book("smoke", data_root=data_root, build_dir=tmp_path_factory.mktemp("book"), log=lambda m: None)
    assert html is not None and (html / "index.html").exists()
    return html


@pytest.fixture(scope="session")
def server(built_book):
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is required for the browser tests: apt-get install chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    outside: list[str] = []
    failed: list[str] = []

    def route(r):
        if r.request.url.startswith("http://127.0.0.1"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("response", lambda resp: failed.append(resp.url) if resp.status >= 400 else None)
    page.goto(url, wait_until="load")
    page.wait_for_load_state("networkidle")
    return page, outside, failed


VISIBLE_FRAMES = """(root) => Array.from(root.querySelectorAll('.widget-image'))
    .filter(e => e.offsetParent !== null).map(e => e.src)"""


@pytest.mark.parametrize("chapter", ["book/intro", *list_chapters()])
def test_page_renders_offline(browser, server, chapter):
    page, outside, failed = _open(browser, f"{server}/{chapter}.html")
    try:
        assert outside == [], f"requests left 127.0.0.1: {outside}"
        assert failed == [], f"local files missing: {failed}"
        # every figure loaded
        broken = page.evaluate("() => Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80))")
        assert broken == []
        source = Path(chapter + (".ipynb" if chapter != "book/intro" else ".md"))
        text = source.read_text()
        if "$" in text:
            page.wait_for_selector("mjx-container", timeout=20_000)
            raw = page.evaluate("() => document.querySelector('article').innerText.includes('\\\\frac')")
            assert not raw, "equations left untypeset"
        if chapter != "book/intro":
            figures = page.evaluate("() => document.querySelectorAll('article img').length")
            assert figures >= 3, "a chapter shows its computed figures"
        if '"application/vnd.jupyter.widget-view+json"' in text or "frame_explorer" in text:
            _check_widgets(page)
    finally:
        page.close()


def _check_widgets(page):
    page.wait_for_selector(".widget-slider .noUi-handle", timeout=20_000)
    explorers = page.query_selector_all(".widget-vbox:has(.widget-image)")
    assert explorers, "the interactive figure did not render"
    for explorer in explorers:
        handles = explorer.query_selector_all(".noUi-handle")
        assert handles
        for handle in handles:
            before = page.evaluate(VISIBLE_FRAMES, explorer)
            assert len(before) == 1, "exactly one frame is shown at a time"
            handle.focus()
            page.keyboard.press("End")
            page.wait_for_timeout(200)
            after = page.evaluate(VISIBLE_FRAMES, explorer)
            slider_count = len(page.evaluate("(h) => h.closest('.widget-slider').querySelector('.widget-readout').innerText", handle))
            assert slider_count >= 1
            assert after != before, "moving a slider must change the displayed frame"
            page.keyboard.press("Home")
            page.wait_for_timeout(200)
