"""Every figure readable in the reader's colour mode, measured in the browser.

Each page is loaded in light and in dark mode (as the theme's head script restores a
reader's earlier choice, ``test_site.MODES``); full-page screenshots of both go to
``_build/screenshots/`` (``PAGE-light.png``, ``PAGE-dark.png``).

Figures are of two kinds, and each is checked where it is drawn:

- **Pictures** (matplotlib's PNGs). Text in them is part of the pixels, so it is measured
  in pixels, in a screenshot of the figure as the page shows it (card, padding, filters).
  The book's figures are drawn for white with black text and axes, so the darkest 2 % of
  a figure's ink (pixels visibly off its dominant colour) are the cores of its glyphs and
  axes; their colour must contrast at least 4.5:1 (WCAG 2.1, 1.4.3) with the dominant
  colour, what the text sits on. A transparent figure over the dark page, or one the page
  darkened, fails; a white figure on a card passes.
- **Interactive figures** (Plotly, SVG). Text is text: its computed fill is compared
  with the colour behind it (the figure's paper, composited over the page where the paper
  is transparent), in both modes, on load and after the reader switches the mode with the
  theme's button.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from tests.test_site import (  # noqa: F401 (browser and server are fixtures used here)
    DESKTOP, MODES, SCREENSHOTS, Visit, browser, server, site_pages)

MIN_CONTRAST = 4.5


# --------------------------------------------------------------------------- colour arithmetic

def luminance(rgb) -> np.ndarray:
    """WCAG relative luminance of sRGB colours (..., 3) in 0..255."""
    c = np.asarray(rgb, dtype=float) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return c @ np.array([0.2126, 0.7152, 0.0722])


def contrast(a, b) -> float:
    """WCAG contrast ratio of two sRGB colours, 1 to 21."""
    la, lb = float(luminance(a)), float(luminance(b))
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def parse_colour(text: str) -> tuple[np.ndarray, float]:
    """A CSS colour as Plotly and getComputedStyle write it: (rgb, alpha)."""
    text = text.strip()
    if text.startswith("#"):
        digits = text[1:]
        if len(digits) in (3, 4):
            digits = "".join(d * 2 for d in digits)
        values = [int(digits[i:i + 2], 16) for i in range(0, len(digits), 2)]
        return np.array(values[:3], dtype=float), (values[3] / 255 if len(values) == 4 else 1.0)
    if text == "transparent":
        return np.zeros(3), 0.0
    numbers = [float(n) for n in re.findall(r"[\d.]+", text)]
    assert text.startswith("rgb") and len(numbers) in (3, 4), f"unexpected colour {text!r}"
    return np.array(numbers[:3]), (numbers[3] if len(numbers) == 4 else 1.0)


def over(top: str, backdrop: np.ndarray) -> np.ndarray:
    """The colour ``top`` composited over an opaque ``backdrop``."""
    rgb, alpha = parse_colour(top)
    return alpha * rgb + (1 - alpha) * backdrop


# --------------------------------------------------------------------------- pictures

def dominant_colour(pixels: np.ndarray) -> np.ndarray:
    """The most common colour (to 8 levels of each channel): what most of the figure sits on."""
    flat = pixels.reshape(-1, 3).astype(int)
    keys = (flat // 8) @ np.array([1024, 32, 1])
    values, counts = np.unique(keys, return_counts=True)
    return flat[keys == values[counts.argmax()]].mean(axis=0)


def picture_text_contrast(pixels: np.ndarray) -> float:
    """Contrast of a figure's text (its darkest ink) against what most of it sits on.

    ``pixels`` (H, W, 3): the figure as the page shows it, card and filters included. Ink
    is every pixel visibly off the dominant colour; the figures are drawn for white with
    black text and axes, so the darkest 2 % of the ink are the cores of their glyphs.
    """
    pixels = pixels.astype(float)
    background = dominant_colour(pixels)
    ink = np.abs(pixels - background).sum(axis=2) > 40
    if ink.sum() < 20:
        return 21.0  # nothing drawn on it to read
    lum = luminance(pixels)
    cores = ink & (lum <= np.percentile(lum[ink], 2))
    return contrast(np.median(pixels[cores], axis=0), background)


def test_the_picture_check_tells_readable_from_unreadable():
    """A synthetic figure, black text and a blue bar on white, seen the ways dark mode can show it."""
    light = np.full((60, 120, 3), 255.0)
    light[20:30, 10:60] = 0  # "text"
    light[40:50, 10:110] = (31, 119, 180)  # a tab:blue bar
    on_a_card = light * 0.88  # on a white card, dimmed evenly
    transparent = np.where(light == 255, 20, light)  # a transparent figure over the dark page
    assert picture_text_contrast(light) > 20
    assert picture_text_contrast(on_a_card) > 15
    assert picture_text_contrast(transparent) < MIN_CONTRAST


# --------------------------------------------------------------------------- in the browser

# For each Plotly figure: the fill of every piece of text, and what is behind it: the paper
# over the nearest ancestor with a background of its own (the page, in the end).
PLOTLY_TEXT = """() => [...document.querySelectorAll('.tinyllm-interactive .js-plotly-plot')].map(plot => {
    let node = plot, page = 'rgb(255, 255, 255)';
    while (node && node.nodeType === 1) {
        const c = getComputedStyle(node).backgroundColor;
        if (c && c !== 'transparent' && !/^rgba\\(.*,\\s*0\\)$/.test(c)) { page = c; break; }
        node = node.parentElement;
    }
    const texts = [...plot.querySelectorAll('.main-svg text')].filter(t => t.textContent.trim())
        .map(t => ({text: t.textContent.trim().slice(0, 30), fill: getComputedStyle(t).fill}));
    return {paper: plot._fullLayout.paper_bgcolor, page: page, texts: texts,
            body: getComputedStyle(document.body).backgroundColor};
})"""


def plotly_text_failures(figures: list[dict]) -> list[str]:
    failures = []
    for i, figure in enumerate(figures):
        behind = over(figure["paper"], parse_colour(figure["page"])[0])
        for text in figure["texts"]:
            fill = over(text["fill"], behind)
            ratio = contrast(fill, behind)
            if ratio < MIN_CONTRAST:
                failures.append(f"figure {i}: {text['text']!r} {text['fill']} on {behind.round()} ({ratio:.2f}:1)")
    return failures


def _pixels(locator) -> np.ndarray:
    """The figure as the page shows it: its card, padding and any filter included."""
    return np.asarray(Image.open(io.BytesIO(locator.screenshot(animations="disabled"))).convert("RGB"))


def _figures(visit):
    page = visit.page
    page.wait_for_function("""() => [...document.querySelectorAll('.tinyllm-interactive')]
                                    .every(f => f.classList.contains('tinyllm-ready'))""", timeout=30_000)
    images = page.locator(".bd-content img")
    shown = []
    for i in range(images.count()):
        image = images.nth(i)
        if not image.is_visible():
            continue  # an interactive figure's fallback, hidden once the figure draws
        image.scroll_into_view_if_needed()
        image.evaluate("e => e.complete ? null : new Promise(done => e.addEventListener('load', done))")
        if image.evaluate("e => e.naturalWidth") < 100:
            continue
        shown.append((image.get_attribute("alt") or image.get_attribute("src") or "")[:70])
    return images, shown


@pytest.fixture(scope="module")
def figure_contrast(browser, server):
    """{page: {"pictures": [(alt, light ratio, dark ratio)], "plotly": {mode: [failures]}}}.

    Screenshots of every page in both modes are saved along the way.
    """
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for mode in MODES:  # no screenshot of a page the site no longer has
        for old in SCREENSHOTS.glob(f"*-{mode}.png"):
            old.unlink()
    results = {}
    for path in site_pages():
        visits = {mode: Visit(browser, server, path, DESKTOP, init_script=script) for mode, script in MODES.items()}
        try:
            for mode, visit in visits.items():
                assert visit.page.evaluate("() => document.documentElement.dataset.theme") == mode, (path, mode)
            (light_images, light_shown), (dark_images, dark_shown) = (_figures(visits[m]) for m in MODES)
            assert light_shown == dark_shown, path
            pictures = []
            for i in range(light_images.count()):
                if not light_images.nth(i).is_visible() or light_images.nth(i).evaluate("e => e.naturalWidth") < 100:
                    continue
                alt = (light_images.nth(i).get_attribute("alt") or "")[:70]
                pictures.append((alt, picture_text_contrast(_pixels(light_images.nth(i))),
                                 picture_text_contrast(_pixels(dark_images.nth(i)))))
            results[path] = {"pictures": pictures,
                             "plotly": {m: plotly_text_failures(v.page.evaluate(PLOTLY_TEXT)) for m, v in visits.items()},
                             "paper": {m: v.page.evaluate(PLOTLY_TEXT) for m, v in visits.items()}}
            for mode, visit in visits.items():
                visit.page.screenshot(path=SCREENSHOTS / (path.replace("/", "__").removesuffix(".html") + f"-{mode}.png"),
                                      full_page=True)
        finally:
            for visit in visits.values():
                visit.close()
    return results


@pytest.mark.slow
def test_screenshots_in_both_modes(figure_contrast):
    for path in site_pages():
        for mode in MODES:
            assert (SCREENSHOTS / (path.replace("/", "__").removesuffix(".html") + f"-{mode}.png")).is_file()


@pytest.mark.slow
def test_picture_text_contrast_in_dark_mode(figure_contrast):
    pictures = [(path, *picture) for path, result in figure_contrast.items() for picture in result["pictures"]]
    assert len(pictures) >= 30, "the book's matplotlib figures were not found"
    failing = [f"{path}: {alt!r}: {dark:.2f}:1 in dark mode (light {light:.2f}:1)"
               for path, alt, light, dark in pictures if dark < MIN_CONTRAST]
    assert not failing, "figure text below 4.5:1 against its background:\n" + "\n".join(failing)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_interactive_figure_text_contrast(figure_contrast, mode):
    assert sum(len(r["paper"][mode]) for r in figure_contrast.values()) >= 2, "no Plotly figure was found"
    failing = [f"{path}: {failure}" for path, result in figure_contrast.items() for failure in result["plotly"][mode]]
    assert not failing, f"Plotly text below 4.5:1 in {mode} mode:\n" + "\n".join(failing)


@pytest.mark.slow
def test_interactive_figures_take_the_page_background_in_each_mode(figure_contrast):
    """A figure that kept Plotly's white paper would be a glaring box in dark mode."""
    for path, result in figure_contrast.items():
        for mode in MODES:
            for figure in result["paper"][mode]:
                page = parse_colour(figure["body"])[0]
                behind = over(figure["paper"], parse_colour(figure["page"])[0])
                assert contrast(behind, page) < 1.2, (path, mode, figure["paper"], figure["body"])


def _switch_to(page, mode: str) -> None:
    """Click the theme's colour-mode button (it cycles light, dark, auto) until ``mode`` shows."""
    for _ in range(3):
        if page.evaluate("() => document.documentElement.dataset.theme") == mode:
            return
        page.locator(".theme-switch-button").first.click()
    assert page.evaluate("() => document.documentElement.dataset.theme") == mode


@pytest.mark.slow
def test_interactive_figures_follow_the_mode_when_the_reader_switches(browser, server):
    path = "book/09_decoding.html"
    visit = Visit(browser, server, path, DESKTOP, init_script=MODES["light"])
    try:
        page = visit.page
        page.wait_for_function("() => document.querySelector('.tinyllm-interactive.tinyllm-ready .js-plotly-plot')",
                               timeout=30_000)
        for mode in ("dark", "light"):
            _switch_to(page, mode)
            page.wait_for_timeout(300)  # the observer's relayout
            figures = page.evaluate(PLOTLY_TEXT)
            assert figures, path
            assert not plotly_text_failures(figures), (mode, plotly_text_failures(figures))
            for figure in figures:
                behind = over(figure["paper"], parse_colour(figure["page"])[0])
                assert contrast(behind, parse_colour(figure["body"])[0]) < 1.2, (mode, figure["paper"])
    finally:
        visit.close()
