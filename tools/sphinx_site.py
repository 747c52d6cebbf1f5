"""Sphinx extension for the book's site: offline assets, loaded only where a page needs them.

- Plotly (vendored in ``book/_vendor``) is copied into ``_static`` and added to
  the pages that contain a Plotly figure (heatmap, sampling), before ``interactive.js``;
  other pages do not pay its 1.5 MB.
- Duplicate script tags (sphinx-thebe's, see ``_page_assets``) are dropped.
- Accessibility (WCAG 2.1 A/AA, checked by axe-core in ``tests/test_site.py``):
  every figure's image gets its caption as alt text (``_figure_alt_text``), and the
  markup that upstream projects write with an accessibility fault is corrected in
  the written pages (``ACCESSIBILITY_FIXES``), each fix naming the project it belongs to.
"""

from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes
from sphinx.util import logging

logger = logging.getLogger(__name__)

VENDOR = Path(__file__).resolve().parent.parent / "book" / "_vendor"
PLOTLY = "plotly-cartesian-4.1.1.min.js"


def _add_vendor_path(app) -> None:
    app.config.html_static_path.append(str(VENDOR))


def _page_assets(app, pagename, templatename, context, doctree) -> None:
    body = context.get("body", "")
    if 'data-kind="heatmap"' in body or 'data-kind="sampling"' in body:  # the tokenizer needs no Plotly
        app.add_js_file(PLOTLY, priority=400)  # before interactive.js (priority 500)
    # sphinx-thebe registers its inline configuration script twice on some builds, and the
    # second `const THEBE_JS_URL` is a console error; keep the first copy of each script.
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", script) or "", getattr(script, "attributes", {}).get("body", ""))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


# An alt text that says nothing: none, the image's own path (what Sphinx writes when alt is
# missing, as for MyST-NB's cell outputs) or matplotlib's repr ("<Figure size 640x480 with 1 Axes>").
_PLACEHOLDER_ALT = re.compile(r"^\s*$|<Figure size|\.(png|jpe?g|svg|gif)$", re.IGNORECASE)


def _figure_alt_text(app, doctree, docname) -> None:
    """Each figure's image says what it shows: its caption (MyST-NB's ``mystnb: figure: caption``).

    An image outside a captioned figure with no alt of its own is a build warning (fatal
    under -W): a screen reader would announce it as a file name.
    """
    for image in doctree.findall(nodes.image):
        if not _PLACEHOLDER_ALT.search(image.get("alt", "")):
            continue  # the author wrote one
        figure = image.parent
        while figure is not None and not isinstance(figure, nodes.figure):
            figure = figure.parent
        caption = next(iter(figure.findall(nodes.caption)), None) if figure is not None else None
        if caption is None:
            logger.warning("a figure without a caption has no alt text: give it a caption "
                           "(mystnb: figure: caption) or an alt", location=image)
            continue
        image["alt"] = " ".join(caption.astext().split())


# Fixes to markup written by the theme and other extensions, applied to every page as it is
# rendered: (what, the upstream project whose output it is, pattern, replacement). Each is
# idempotent (its pattern no longer matches once applied).
ACCESSIBILITY_FIXES = [
    ("MyST-NB's hide-input toggle labels its <summary> 'Toggle hidden content' while showing "
     "'Show code cell source' (label-content-name-mismatch): let the visible text name it",
     "MyST-NB (myst_nb/sphinx_.py, visit_HideCellInput)",
     re.compile(r'<summary aria-label="Toggle hidden content">'), "<summary>"),
    ("a citation list of role=list whose entries have the deprecated DPUB role doc-biblioentry "
     "(aria-required-children, aria-deprecated-role): the entries are list items",
     "docutils' HTML5 writer (visit_citation), which Sphinx uses for sphinxcontrib-bibtex's bibliography",
     re.compile(r'(<div class="citation" id="[^"]*") role="doc-biblioentry"'), r'\1 role="listitem"'),
    ("the search field button is labelled 'Search' while showing 'Search Ctrl+K' "
     "(label-content-name-mismatch): its visible text names it, the shortcut is declared",
     "pydata-sphinx-theme (components/search-button-field.html)",
     re.compile(r'(<button class="btn search-button-field search-button__button[^"]*" title="Search") '
                r'aria-label="Search"'), r'\1 aria-keyshortcuts="Control+K"'),
    ("the colour-mode button's icons carry titles ('Light', 'Dark'), which Font Awesome turns into "
     "SVG <title>s, text that is not in the button's name 'Color mode' (label-content-name-mismatch): "
     "the icons are decoration, the button's own tooltip stays",
     "pydata-sphinx-theme (components/theme-switcher.html)",
     re.compile(r'(<i class="theme-switch [^"]*" data-mode="\w+")\s+title="[^"]*">'), r'\1 aria-hidden="true">'),
    ("the primary sidebar's title link and search button are outside any landmark (region): "
     "the sidebar is a labelled region",
     "pydata-sphinx-theme (sections/sidebar-primary.html) as sphinx-book-theme fills it",
     re.compile(r'(<div id="pst-primary-sidebar" class="bd-sidebar-primary bd-sidebar")>'),
     r'\1 role="region" aria-label="Book navigation">'),
    ("code blocks and cell outputs that scroll sideways must be reachable by keyboard "
     "(scrollable-region-focusable); the theme's script makes exactly the scrolling ones tab "
     "stops, and without JavaScript every code block is one",
     "pydata-sphinx-theme (addTabStopsToScrollableElements runs only with JavaScript)",
     re.compile(r"<pre>"), '<pre tabindex="0">'),
]


def accessible_html(html: str) -> str:
    for _what, _upstream, pattern, replacement in ACCESSIBILITY_FIXES:
        html = pattern.sub(replacement, html)
    return html


def _render_accessibly(app) -> None:
    """Every page the HTML builder renders (chapters, search, index) passes through the fixes.

    At render time, not after the build: a page is never on disk without them, and an
    incremental build fixes exactly the pages it writes.
    """
    if app.builder.format != "html":
        return
    render = app.builder.templates.render
    app.builder.templates.render = lambda template, context: accessible_html(render(template, context))


def setup(app):
    app.connect("builder-inited", _add_vendor_path)
    app.connect("doctree-resolved", _figure_alt_text)
    app.connect("builder-inited", _render_accessibly)
    app.connect("html-page-context", _page_assets, priority=900)  # after the theme and extensions
    return {"parallel_read_safe": True, "parallel_write_safe": True}
