"""Build the book (smoke profile), serve it on 127.0.0.1 and look at every page in headless Chromium.

Every request that leaves 127.0.0.1 is aborted and recorded, so passing means the book works offline.
The pages are checked as a reader at a 1280-pixel window sees them: nothing scrolls sideways, every
figure and table is numbered and captioned, every citation and figure reference resolves, and the
scoreboard has a row per claim with a verdict word and a link to evidence that exists. A missing
browser is an error, never a skip.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from hessian_lib.book import ABOUT_PAGE, list_chapters
from hessian_lib.verdicts import CLAIMS, NO_CHAPTER, NOT_RUN, VERDICT_WORDS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDTH = 1280
#: Every page of the book: the introduction, the chapters, the back matter.
PAGES = ["book/intro", *list_chapters(), "book/bibliography", ABOUT_PAGE]


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
        name = Path(chapter).name
        assert f"{chapter} done in" in proc.stdout, f"no progress line for {chapter}"
        assert re.search(rf"{name}: cell \d+ \(code cell 1 of \d+\) took", proc.stdout), f"no cell lines for {name}"
        assert re.search(rf"^\s+{name}\s+\d+\.\d s$", proc.stdout, re.M), f"no time for {name} in the summary"
    assert f"The book is at {build / 'html' / 'index.html'}" in proc.stdout
    assert "running over TCP" not in proc.stderr, "the kernels talk over local sockets, without a warning"
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
    page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
    page.set_default_timeout(90_000)  # a shared, busy machine can be slow to go network-idle
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


def _html(server, page_path: str) -> str:
    with urllib.request.urlopen(f"{server}/{page_path}") as response:
        return response.read().decode()


def _ids(server, page_path: str) -> set[str]:
    """The element ids of a page of the book, from its static HTML (to check that an anchor exists)."""
    return set(re.findall(r'\bid="([^"]+)"', _html(server, page_path)))


def _article(html: str) -> str:
    return html[html.index("<article"):html.rindex("</article>")]


VISIBLE_FRAMES = """(root) => Array.from(root.querySelectorAll('.widget-image'))
    .filter(e => e.offsetParent !== null).map(e => e.src)"""

#: Elements that must not scroll sideways: code, outputs, tables and their wrappers, figures, the page.
SIDEWAYS = """() => {
  const found = Array.from(document.querySelectorAll(
      'article pre, article div.highlight, article .cell_output, article .output, article table, '
      + 'article .pst-scrollable-table-container, article .table-wrapper, article figure'))
    .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)
    .map(e => `${e.tagName.toLowerCase()}.${e.className} (${e.scrollWidth} > ${e.clientWidth} px)`);
  if (document.documentElement.scrollWidth > window.innerWidth) found.push('the page itself');
  return found;
}"""


@pytest.mark.parametrize("path", PAGES)
def test_page_renders_offline_and_fits(server, browser, path):
    page, outside, failed = _open(browser, f"{server}/{path}.html")
    try:
        assert outside == [], f"requests left 127.0.0.1: {outside}"
        assert failed == [], f"local files missing: {failed}"
        # every figure loaded
        broken = page.evaluate(
            "() => Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => "
            "i.src.slice(0, 80))"
        )
        assert broken == []
        source = next((s for s in (Path(f"{path}.ipynb"), Path(f"{path}.md")) if s.exists()), None)
        text = source.read_text() if source else ""
        if "$" in text:
            # the article's own equations (a heading's math also sits in the hidden print-only contents)
            page.wait_for_selector("article mjx-container", timeout=20_000)
            raw = page.evaluate("() => document.querySelector('article').innerText.includes('\\\\frac')")
            assert not raw, "equations left untypeset"
        if '"application/vnd.jupyter.widget-view+json"' in text or "frame_explorer" in text:
            _check_widgets(page)
        assert page.evaluate(SIDEWAYS) == [], f"scrolls sideways at {WIDTH} px"
    finally:
        page.close()


CAPTIONS = """() => ({
  figures: Array.from(document.querySelectorAll('article figure')).map(f => ({
    id: f.id, number: (f.querySelector('figcaption .caption-number') || {}).innerText || '',
    caption: (f.querySelector('figcaption .caption-text') || {}).innerText || ''})),
  tables: Array.from(document.querySelectorAll('article table')).map(t => ({
    id: t.id, number: (t.querySelector('caption .caption-number') || {}).innerText || '',
    caption: (t.querySelector('caption .caption-text') || {}).innerText || ''})),
  refs: Array.from(document.querySelectorAll('article a span.std-numref, article a span.std-ref'))
    .map(s => ({text: s.innerText, href: s.closest('a').href})),
  unresolved: Array.from(document.querySelectorAll('article span.problematic, article .xref:not(a *)'))
    .map(e => e.innerText),
})"""


@pytest.mark.parametrize("chapter", list_chapters())
def test_figures_and_tables_are_numbered_and_captioned(server, browser, chapter):
    page, _, _ = _open(browser, f"{server}/{chapter}.html")
    try:
        found = page.evaluate(CAPTIONS)
    finally:
        page.close()
    figures, tables = found["figures"], found["tables"]
    assert figures or tables, "a chapter shows numbered figures or tables"
    for item, word in [(f, "Figure") for f in figures] + [(t, "Table") for t in tables]:
        assert re.fullmatch(rf"{word} \d+", item["number"].strip()), f"unnumbered: {item}"
        assert item["caption"].strip(), f"no caption: {item}"
        assert item["id"], f"no anchor to refer to: {item}"
    ids = {i["id"] for i in figures + tables}
    for ref in found["refs"]:
        assert re.fullmatch(r"(Figure|Table) \d+", ref["text"]) or not ref["text"].startswith(("Figure", "Table"))
        target = urlparse(ref["href"])
        if target.path.endswith(f"{chapter}.html") and ref["text"].startswith(("Figure", "Table")):
            assert target.fragment in ids, f"{ref['text']} points at a missing #{target.fragment}"
    assert found["unresolved"] == []


def test_every_citation_resolves(server):
    entries = re.findall(r'id="([^"]+)" role="doc-biblioentry"', _html(server, "book/bibliography.html"))
    assert len(entries) >= 11, "the bibliography lists the works the book relies on"
    cited = 0
    for path in PAGES:
        article = _article(_html(server, f"{path}.html"))
        assert "{cite" not in article and "[?]" not in article and 'class="problematic"' not in article, \
            f"unresolved citation on {path}"
        fragments = re.findall(r'href="(?:[^"#]*/)?bibliography\.html#([^"]+)"', article)
        missing = sorted(set(fragments) - set(entries))
        assert not missing, f"{path}: citations without a bibliography entry: {missing}"
        cited += len(fragments)
    assert cited >= 10, "the chapters cite their sources"


def test_scoreboard_has_a_row_per_claim_with_evidence(server, browser):
    page, outside, _ = _open(browser, f"{server}/book/scoreboard.html")
    try:
        assert outside == []
        rows = page.evaluate("""() => {
          const table = Array.from(document.querySelectorAll('article table'))
            .find(t => (t.querySelector('caption') || {innerText: ''}).innerText.includes('claims'));
          if (!table) return null;
          const head = Array.from(table.querySelectorAll('thead th')).map(th => th.innerText.trim());
          return Array.from(table.querySelectorAll('tbody tr')).map(tr => {
            const cells = Array.from(tr.querySelectorAll('td'));
            const get = name => cells[head.indexOf(name)];
            const link = get('evidence').querySelector('a');
            return {claim: get('claim').innerText.trim(), verdict: get('verdict').innerText.trim(),
                    href: link ? link.href : null};
          });
        }""")
    finally:
        page.close()
    assert rows is not None, "no scoreboard table"
    assert [int(r["claim"]) for r in rows] == sorted(CLAIMS)
    allowed = set(VERDICT_WORDS) | {NOT_RUN, NO_CHAPTER}
    assert all(r["verdict"] in allowed for r in rows), [r["verdict"] for r in rows]
    for row in rows:
        if row["verdict"] == NO_CHAPTER:
            continue
        assert row["href"], f"claim {row['claim']} links to no evidence"
        target = urlparse(urljoin(f"{server}/book/scoreboard.html", row["href"]))
        ids = _ids(server, target.path.lstrip("/"))
        assert not target.fragment or target.fragment in ids, f"claim {row['claim']}: no anchor #{target.fragment}"


def test_about_page_states_the_build(server, browser):
    page, _, _ = _open(browser, f"{server}/{ABOUT_PAGE}.html")
    try:
        text = page.evaluate("() => document.querySelector('article').innerText")
    finally:
        page.close()
    import torch

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert commit and commit in text
    assert torch.__version__ in text and "smoke" in text
    assert re.search(r"\b[0-9a-f]{64}\b", text), "no data checksum"
    for chapter in list_chapters():
        assert re.search(rf"{Path(chapter).name}\s+\d+\.\d s", text), f"no execution time for {chapter}"


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
            # a slider that starts at its last value moves only towards the first
            at_end = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
            away, back = ("Home", "End") if at_end else ("End", "Home")
            page.keyboard.press(away)
            page.wait_for_timeout(200)
            after = page.evaluate(VISIBLE_FRAMES, explorer)
            assert after != before, "moving a slider must change the displayed frame"
            page.keyboard.press(back)
            page.wait_for_timeout(200)
