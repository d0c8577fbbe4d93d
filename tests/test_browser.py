"""Build the book (smoke profile), serve it on 127.0.0.1 and look at every page in headless Chromium.

Every request that leaves 127.0.0.1 is aborted and recorded, so passing means the
book works offline. A missing browser is an error, never a skip.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hessian_lib.book import list_chapters

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def built_book(tmp_path_factory, data_root) -> Path:
    """The book built by the command line, as a user would (a subprocess, so the browser's event loop
    and papermill's never share a process)."""
    build = tmp_path_factory.mktemp("book")
    proc = subprocess.run(
        [sys.executable, "-m", "hessian_lib", "book", "--profile", "smoke", "--data-root", str(data_root),
         "--build-dir", str(build)],
        capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for chapter in list_chapters():
        assert f"{chapter} done in" in proc.stdout, f"no progress line for {chapter}"
    assert f"The book is at {build / 'html' / 'index.html'}" in proc.stdout
    return build / "html"


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
def test_page_renders_offline(server, browser, chapter):
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
            assert after != before, "moving a slider must change the displayed frame"
            page.keyboard.press("Home")
            page.wait_for_timeout(200)
