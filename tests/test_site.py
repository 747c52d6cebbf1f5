"""The built site as a reader's browser shows it: headless Chromium over every page.

Debian's ``chromium`` (installed by tools/system_deps.sh), driven by
Playwright's Python package; Playwright never downloads a browser here. The
site is served over HTTP from ``_build/html`` by a local server; every request
to any other host is blocked and counted as a failure, since the site must work
offline (MathJax and Plotly are served by the site itself).

Screenshots of every page, desktop (full page) and phone (first screen), go to
``_build/screenshots/``; page weights to ``_build/screenshots/page-weight.txt``.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from tests.conftest import HTML, ROOT
from tools import bookconfig, linkcheck

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = ROOT / "_build" / "screenshots"
MAX_PAGE_BYTES = 5 * 1024 * 1024
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def site_pages() -> list[str]:
    if not HTML.is_dir():
        return []
    return sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")
                  if "_static" not in p.relative_to(HTML).parts)


def chapter_sources() -> list[Path]:
    return sorted((ROOT / "book").glob("[0-9][0-9]_*.md"))


class _SiteHandler(SimpleHTTPRequestHandler):
    """A static file server that compresses text with gzip, as GitHub Pages does."""

    COMPRESSED = {".html", ".js", ".css", ".json", ".svg", ".txt", ".map", ".ipynb", ".md"}

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.html"
        if (path.suffix not in self.COMPRESSED or not path.is_file()
                or "gzip" not in self.headers.get("Accept-Encoding", "")):
            return super().do_GET()
        body = gzip.compress(path.read_bytes(), compresslevel=6)
        self.send_response(200)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(built_html):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_SiteHandler, directory=str(built_html)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run tools/system_deps.sh (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


class Visit:
    """One page load with everything the browser reported along the way."""

    def __init__(self, browser, server: str, path: str, viewport: dict, javascript: bool = True,
                 init_script: str | None = None):
        self.context = browser.new_context(viewport=viewport, java_script_enabled=javascript)
        if init_script:  # runs in the page before its own scripts (e.g. a reader's saved dark mode)
            self.context.add_init_script(init_script)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.failed: list[str] = []
        self.external: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url} ({r.failure})")
                     if r.url.startswith(server) else None)
        self.page.on("response", lambda r: self.failed.append(f"{r.url} (HTTP {r.status})")
                     if r.status >= 400 and r.url.startswith(server) else None)

        def only_local(route):
            if route.request.url.startswith(server) or route.request.url.startswith("data:"):
                route.continue_()
            else:
                self.external.append(route.request.url)
                route.abort()

        self.page.route("**/*", only_local)
        self.page.goto(server + path, wait_until="load")
        if javascript:
            self.page.wait_for_load_state("networkidle")
            self._wait_for_maths()

    def _wait_for_maths(self) -> None:
        if self.page.locator(".math").count():
            self.page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                        timeout=30_000)
            self.page.evaluate("() => MathJax.startup.promise")

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def desktop_visits(browser, server):
    """Every page once, on a desktop-sized screen; screenshots saved as a side effect."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*-desktop.png"):  # this module's; other tests' screenshots (dark mode) stay
        old.unlink()
    visits = {}
    for path in site_pages():
        visit = Visit(browser, server, path, DESKTOP)
        visit.page.screenshot(path=SCREENSHOTS / (path.replace("/", "__").removesuffix(".html") + "-desktop.png"),
                              full_page=True)
        visits[path] = visit
    yield visits
    for visit in visits.values():
        visit.close()


def test_the_site_has_every_chapter():
    pages = site_pages()
    assert len(pages) >= 14, pages
    for source in chapter_sources():
        assert f"book/{source.stem}.html" in pages


@pytest.mark.parametrize("path", site_pages())
def test_page_loads_clean_offline(desktop_visits, path):
    visit = desktop_visits[path]
    assert not visit.errors, f"console errors: {visit.errors}"
    assert not visit.failed, f"failed requests: {visit.failed}"
    assert not visit.external, f"requests to other hosts (the site must work offline): {visit.external}"


@pytest.mark.parametrize("path", site_pages())
def test_maths_is_typeset_and_images_load(desktop_visits, path):
    page = desktop_visits[path].page
    result = page.evaluate("""async () => {
        for (const img of document.images) img.loading = "eager";
        await Promise.all([...document.images].map(img => img.complete ? null :
            new Promise(done => { img.onload = img.onerror = done; })));
        const broken = [...document.images].filter(img => !(img.complete && img.naturalWidth > 0))
                                           .map(img => img.src.slice(0, 80));
        const maths = [...document.querySelectorAll(".math")];
        const untypeset = maths.filter(m => !m.querySelector("mjx-container") || m.querySelector("mjx-merror"))
                               .map(m => m.textContent.slice(0, 60));
        const article = (document.querySelector("main") || document.body).cloneNode(true);
        article.querySelectorAll("pre, code, script, style, textarea, mjx-container").forEach(n => n.remove());
        return {broken, untypeset, maths: maths.length, text: article.innerText};
    }""")
    assert not result["broken"], f"images that did not load: {result['broken']}"
    assert not result["untypeset"], f"maths MathJax did not typeset: {result['untypeset']}"
    for raw in ("$$", "\\frac", "\\(", "\\[", "\\mathbf", "\\sum"):
        assert raw not in result["text"], f"raw TeX {raw!r} visible on {path}"


@pytest.mark.parametrize("source", chapter_sources(), ids=lambda p: p.stem)
def test_chapter_has_colab_and_download_buttons(desktop_visits, server, source):
    path = f"book/{source.stem}.html"
    page = desktop_visits[path].page
    colab = bookconfig.colab_url(f"book/{source.stem}.ipynb")
    assert page.locator(f'a[href="{colab}"]').count() >= 1, "no Open-in-Colab button"
    for kind, suffix in (("notebook", ".ipynb"), ("source", ".md")):
        link = page.locator(f"a.btn-download-{kind}-button")
        assert link.count() == 1, f"no download-{kind} button"
        href = link.get_attribute("href")
        assert href.endswith(f"_sources/book/{source.stem}{suffix}"), href
        response = page.request.get(server + "book/" + href)
        assert response.ok, href
        if suffix == ".ipynb":
            assert json.loads(response.body())["cells"], "the downloaded notebook is empty"


def test_search_finds_a_chapter_term(browser, server):
    visit = Visit(browser, server, "search.html?q=perplexity", DESKTOP)
    try:
        visit.page.wait_for_selector("#search-results ul.search li", timeout=30_000)
        results = visit.page.locator("#search-results ul.search li a").evaluate_all("as => as.map(a => a.href)")
        assert any("01_language_modelling" in href for href in results), results
        assert not visit.errors, visit.errors
    finally:
        visit.close()


@pytest.mark.parametrize("path", site_pages())
def test_phone_screenshots_and_no_horizontal_scroll(browser, server, path):
    visit = Visit(browser, server, path, PHONE)
    try:
        visit.page.screenshot(path=SCREENSHOTS / (path.replace("/", "__").removesuffix(".html") + "-phone.png"))
        overflow = visit.page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the page scrolls sideways by {overflow}px on a phone"
        # On a phone most code blocks scroll: each must be reachable by keyboard (axe-core's rule).
        visit.page.add_script_tag(path=str(AXE))
        unreachable = visit.page.evaluate("""async () => (await axe.run(document,
            {runOnly: ["scrollable-region-focusable"], resultTypes: ["violations"]}))
            .violations.flatMap(v => v.nodes.map(n => n.target.join(" ")))""")
        assert not unreachable, f"scrolling regions a keyboard cannot reach on a phone: {unreachable[:10]}"
    finally:
        visit.close()


# --------------------------------------------------------------------------- accessibility

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
# What the theme's own head script reads: a reader who chose dark mode on an earlier visit.
MODES = {"light": None, "dark": 'localStorage.setItem("mode", "dark"); localStorage.setItem("theme", "dark");'}
AXE_REPORT = ROOT / "_build" / "axe" / "violations.txt"


@pytest.fixture(scope="module")
def axe_results(browser, server):
    """{mode: {page: {"violations": [...], "images": [...]}}}: axe-core's WCAG 2.1 A/AA rules on every page.

    The page is loaded as a reader sees it (maths typeset, interactive figures drawn,
    lazy images loaded) before axe runs, so it checks what is on the screen.
    """
    if not AXE.is_file():
        pytest.fail("axe-core is not installed: run `make node_modules/.npm-installed` (make test does)")
    results = {}
    for mode, init_script in MODES.items():
        results[mode] = {}
        for path in site_pages():
            visit = Visit(browser, server, path, DESKTOP, init_script=init_script)
            try:
                page = visit.page
                assert page.evaluate("() => document.documentElement.dataset.theme") == mode, (path, mode)
                page.wait_for_function("""() => [...document.querySelectorAll('.tinyllm-interactive')]
                                                .every(f => f.classList.contains('tinyllm-ready'))""", timeout=30_000)
                page.add_script_tag(path=str(AXE))  # inline: no request leaves the site
                results[mode][path] = page.evaluate("""async (tags) => {
                    // "region" (content outside landmarks) is a best-practice rule, run as well.
                    const run = await axe.run(document, {runOnly: {type: "tag", values: tags},
                                                         rules: {region: {enabled: true}},
                                                         resultTypes: ["violations"]});
                    return {
                        violations: run.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                            targets: v.nodes.map(n => n.target.join(" "))})),
                        images: [...document.images].map(img => ({src: img.getAttribute("src") || "",
                            alt: img.getAttribute("alt"), decorative: img.getAttribute("role") === "presentation"
                                || img.getAttribute("aria-hidden") === "true"})),
                    };
                }""", WCAG_TAGS)
            finally:
                visit.close()
    AXE_REPORT.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for mode, pages in results.items():
        for path, result in pages.items():
            for v in result["violations"]:
                lines.append(f"{mode}\t{path}\t{v['id']}\t{v['impact']}\t{len(v['targets'])}\t{v['targets'][0]}")
    AXE_REPORT.write_text("".join(line + "\n" for line in lines))
    return results


@pytest.mark.parametrize("mode", MODES)
def test_axe_finds_no_wcag21_aa_violation(axe_results, mode):
    pages = axe_results[mode]
    assert len(pages) == len(site_pages()) >= 14
    found = [(v["id"], v["impact"], path, v["targets"]) for path, result in pages.items()
             for v in result["violations"]]
    message = "\n".join(f"{rule} ({impact}) on {path}: {len(targets)} element(s), e.g. {targets[0]}"
                        for rule, impact, path, targets in found)
    assert not found, f"axe-core {mode} mode, WCAG 2.1 A/AA: {len(found)} violation(s)\n{message}"


def test_axe_every_figure_has_alt_text_that_says_what_it_shows(axe_results):
    """No image without alt text, with matplotlib's repr ("<Figure size 640x480 with 1 Axes>") or a file name."""
    placeholder = re.compile(r"^\s*$|<Figure size|\.(png|jpe?g|svg|gif)$", re.IGNORECASE)
    bad = [(path, img["src"][:60], img["alt"]) for path, result in axe_results["light"].items()
           for img in result["images"] if not img["decorative"] and placeholder.search(img["alt"] or "")]
    figures = sum(len(result["images"]) for result in axe_results["light"].values())
    assert figures >= 20, "the book's figures were not found"
    assert not bad, "images whose alt text does not say what they show:\n" + "\n".join(map(str, bad))


def test_the_extension_gives_figures_alt_text_and_fixes_pages_as_they_render(tmp_path):
    """tools/sphinx_site.py in a two-image Sphinx project: caption as alt, a warning without one."""
    import base64
    import io

    from sphinx.application import Sphinx

    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    (tmp_path / "plot.png").write_bytes(png)
    (tmp_path / "conf.py").write_text('extensions = ["tools.sphinx_site"]\nhtml_theme = "basic"\n')
    (tmp_path / "index.rst").write_text("Title\n=====\n\n.. figure:: plot.png\n\n   Loss against steps, "
                                        "falling.\n\n.. image:: plot.png\n\n.. code-block:: python\n\n   x = 1\n")
    warnings = io.StringIO()
    Sphinx(str(tmp_path), str(tmp_path), str(tmp_path / "_build"), str(tmp_path / "_doctrees"), "html",
           status=None, warning=warnings, freshenv=True).build()
    html = (tmp_path / "_build" / "index.html").read_text()
    assert '<img alt="Loss against steps, falling." src="_images/plot.png"' in html
    assert "a figure without a caption has no alt text" in warnings.getvalue()
    assert '<pre tabindex="0">' in html and "<pre>" not in html


def test_page_weight(desktop_visits):
    """No page, with everything a first visit downloads (figures, scripts, fonts), is over 5 MB.

    Weight is bytes over the network, served with gzip as GitHub Pages serves the
    site (the usual meaning: DevTools' "transferred", Lighthouse's byte weight).
    The uncompressed size is reported beside it in page-weight.txt.
    """
    weights = {}
    for path, visit in desktop_visits.items():
        weights[path] = visit.page.evaluate("""() => {
            const entries = [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")];
            return [entries.reduce((total, e) => total + (e.encodedBodySize || 0), 0),
                    entries.reduce((total, e) => total + (e.decodedBodySize || 0), 0)];
        }""")
    lines = [f"{sent / 1e6:6.2f} MB transferred  {size / 1e6:6.2f} MB uncompressed  {p}"
             for p, (sent, size) in sorted(weights.items(), key=lambda kv: -kv[1][0])]
    (SCREENSHOTS / "page-weight.txt").write_text("\n".join(lines) + "\n")
    assert all(100_000 < sent < size for sent, size in weights.values()), "page weights look unmeasured"
    heavy = {p: sent for p, (sent, _) in weights.items() if sent > MAX_PAGE_BYTES}
    assert not heavy, f"pages over 5 MB: {heavy}"


# --------------------------------------------------------------------------- interactive figures


def interactive_pages() -> list[str]:
    return [p for p in site_pages() if 'class="tinyllm-interactive"' in (HTML / p).read_text()]


def test_every_kind_of_interactive_figure_is_in_the_book():
    kinds = set()
    for path in interactive_pages():
        kinds |= set(re.findall(r'class="tinyllm-interactive" data-kind="(\w+)"', (HTML / path).read_text()))
    assert kinds == {"heatmap", "sampling", "tokenizer"}, kinds
    assert len(interactive_pages()) >= 4


@pytest.mark.parametrize("path", interactive_pages())
def test_interactive_figures_draw_and_hide_their_fallback(desktop_visits, path):
    page = desktop_visits[path].page
    page.wait_for_function("""() => [...document.querySelectorAll('.tinyllm-interactive')]
                                    .every(f => f.classList.contains('tinyllm-ready'))""", timeout=30_000)
    state = page.evaluate("""() => [...document.querySelectorAll('.tinyllm-interactive')].map(f => ({
        kind: f.dataset.kind,
        fallbackShown: getComputedStyle(f.querySelector('.tinyllm-fallback')).display !== 'none',
        plot: !!f.querySelector('.js-plotly-plot'), tokens: f.querySelectorAll('.tinyllm-token').length}))""")
    for figure in state:
        assert not figure["fallbackShown"], figure
        assert figure["plot"] or figure["tokens"] > 0, figure


@pytest.mark.parametrize("path", interactive_pages())
def test_without_javascript_the_static_fallback_shows(browser, server, path):
    visit = Visit(browser, server, path, DESKTOP, javascript=False)
    try:
        fallbacks = visit.page.locator(".tinyllm-interactive > .tinyllm-fallback")
        assert fallbacks.count() >= 1
        for i in range(fallbacks.count()):
            assert fallbacks.nth(i).is_visible(), f"fallback {i} is hidden without JavaScript"
    finally:
        visit.close()


def _figure_data(page, kind: str) -> dict:
    return json.loads(page.locator(f'.tinyllm-interactive[data-kind="{kind}"] script.tinyllm-data').first
                      .text_content())


def test_tokenizer_explorer_encodes_like_the_library(desktop_visits):
    from tinyllm.bpe import BPETokenizer
    from tinyllm.data import read_corpus, split_corpus

    page = desktop_visits["book/02_tokenization.html"].page
    data = _figure_data(page, "tokenizer")
    merges = [tuple(m) for m in data["merges"]]
    trained = BPETokenizer.train(split_corpus(read_corpus()).train, 256 + len(merges), split=True)
    assert merges == trained.merges, "the page's merges are not the ones the book trains"
    box = page.locator('.tinyllm-interactive[data-kind="tokenizer"] textarea')
    # The page splits with GPT-2's pattern as the library does: contractions, numbers, runs of whitespace,
    # and the two characters whose whitespace class differs between JavaScript and Python (U+0085, U+FEFF).
    for text in ["Q: What is attention?\nA: Attention mixes the tokens.", "naïve 東京 🙂 — ok", "", "x",
                 "IT'S it's 2024 x2y3   spaced\t\ttabs\n\n\nend  ", "a\u0085 b\ufeff c \u00a0d"]:
        box.fill(text)
        ids = page.evaluate("() => document.querySelector('.tinyllm-interactive[data-kind=\"tokenizer\"]')"
                            ".tinyllmState.ids")
        assert ids == trained.encode(text), text
        shown = page.locator('.tinyllm-interactive[data-kind="tokenizer"] > .tinyllm-tokens .tinyllm-token').count()
        assert shown == len(ids)


def test_sampling_explorer_filters_like_the_library(desktop_visits):
    from tinyllm.sampling import top_k_filter, top_p_filter
    from tinyllm.softmax import softmax

    page = desktop_visits["book/09_decoding.html"].page
    data = _figure_data(page, "sampling")
    logits = torch.tensor(data["logits"], dtype=torch.float64)
    assert logits.numel() == 400 and len(data["tokens"]) == 400
    for temperature, k, p in [(1.0, 400, 1.0), (0.5, 10, 1.0), (1.5, 400, 0.6), (0.8, 25, 0.9), (2.0, 3, 0.3)]:
        probs = page.evaluate("""([t, k, p]) => {
            const root = document.querySelector('.tinyllm-interactive[data-kind="sampling"]');
            const [temperature, topK, topP] = root.querySelectorAll('input[type=range]');
            for (const [input, value] of [[temperature, t], [topK, k], [topP, p]]) {
                input.value = value; input.dispatchEvent(new Event('input'));
            }
            return root.tinyllmState.probs;
        }""", [temperature, k, p])
        expected = logits / temperature
        expected = top_k_filter(expected, k)
        if p < 1:
            expected = top_p_filter(expected, p)
        expected = softmax(expected, dim=-1)
        assert torch.allclose(torch.tensor(probs, dtype=torch.float64), expected, atol=1e-6), (temperature, k, p)
        assert math.isclose(sum(probs), 1.0, rel_tol=1e-9)


# --------------------------------------------------------------------------- links


def test_no_broken_internal_link_or_anchor(built_html):
    report = linkcheck.check_site(built_html)
    linkcheck.write_external(report, ROOT / "_build" / "linkcheck" / "external.txt")
    assert report.pages >= 14 and report.internal_links > 500
    assert not report.broken, report.broken[:20]
    assert any("colab.research.google.com" in url for url in report.external)


def test_the_link_checker_catches_broken_pages_and_anchors(tmp_path):
    (tmp_path / "index.html").write_text('<a href="a.html#here">ok</a> <a href="a.html#gone">x</a> '
                                         '<a href="missing.html">y</a> <img src="img/none.png"> '
                                         '<a href="https://example.org/">ext</a> <a href="#top">self</a>')
    (tmp_path / "a.html").write_text('<h1 id="here">A</h1>')
    report = linkcheck.check_site(tmp_path)
    broken = {(page, link) for page, link, _ in report.broken}
    assert broken == {("index.html", "a.html#gone"), ("index.html", "missing.html"),
                      ("index.html", "img/none.png"), ("index.html", "#top")}
    assert set(report.external) == {"https://example.org/"}
