"""Sphinx extension for the book's site: offline assets, loaded only where a page needs them.

- Plotly (vendored in ``book/_vendor``) is copied into ``_static``; the pages that contain
  a Plotly figure (heatmap, sampling) name it for ``interactive.js``, which loads it after
  the page (other pages do not pay its 1.5 MB, and none waits for it).
- Duplicate script tags (sphinx-thebe's, see ``_page_assets``) are dropped.
- Speed and search engines (Lighthouse, ``tests/test_lighthouse.py``): no script blocks
  the first paint (``_page_assets`` defers them; ``PERFORMANCE_FIXES`` drops the search
  index that every page loaded for nothing); each page has a meta description (its first
  paragraph, ``_meta_description``); the favicon is also at the site's root, where browsers
  ask for it on pages without a link to it (``_favicon_at_root``).
- Accessibility (WCAG 2.1 A/AA, checked by axe-core in ``tests/test_site.py``):
  every figure's image gets its caption as alt text (``_figure_alt_text``), and the
  markup that upstream projects write with an accessibility fault is corrected in
  the written pages (``ACCESSIBILITY_FIXES``), each fix naming the project it belongs to.
"""

from __future__ import annotations

import json
import re
import shutil
from html import escape
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
        url = context["pathto"](f"_static/{PLOTLY}", 1)
        app.add_js_file(None, body=f"window.tinyllmPlotly = {json.dumps(url)};")
    # sphinx-thebe registers its inline configuration script twice on some builds, and the
    # second `const THEBE_JS_URL` is a console error; keep the first copy of each script.
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", script) or "", getattr(script, "attributes", {}).get("body", ""))
        if key not in seen:
            seen.add(key)
            unique.append(_deferred(script) if _may_defer(context, pagename) else script)
    context["script_files"] = unique
    _meta_description(app, context, doctree)


def _may_defer(context, pagename) -> bool:
    """Whether the page's scripts can wait for the document to be parsed.

    Not where the theme writes searchtools.js into the page, undeferred, after them (the
    search page; every page when search-as-you-type is on): it calls doctools.js at once.
    """
    return pagename != "search" and str(context.get("theme_search_as_you_type", "")).lower() != "true"


def _deferred(script):
    """A script file loaded with ``defer``: fetched alongside the page, run in order after it is parsed.

    Inline scripts run where they stand, and the theme's read DOCUMENTATION_OPTIONS
    (``DOCUMENTATION_OPTIONS.pagename = ...``), so documentation_options.js stays as it is.
    """
    filename = getattr(script, "filename", None)
    attributes = getattr(script, "attributes", None)
    if (not filename or attributes is None or "async" in attributes or "defer" in attributes
            or filename.endswith("documentation_options.js")):
        return script
    return type(script)(filename, priority=script.priority, **attributes, defer="defer")


def _first_paragraph(doctree) -> str:
    """The page's first paragraph of running text (not a learning-objectives box or a caption)."""
    for paragraph in doctree.findall(nodes.paragraph):
        if not isinstance(paragraph.parent, (nodes.section, nodes.document)):
            continue
        text = " ".join("".join(_plain(child) for child in paragraph.children).split())
        if len(text) >= 40:
            return text
    return ""


def _plain(node) -> str:
    """A node's text as a search result shows it: TeX reduced to its letters ($d_{\\text{model}}$: d_model)."""
    if isinstance(node, nodes.math):
        tex = re.sub(r"\\(?:text|mathrm|mathbf|mathit|operatorname|boldsymbol)\b", "", node.astext())
        return re.sub(r"[\\{}]", "", tex)
    if isinstance(node, nodes.Text):
        return node.astext()
    if isinstance(node, nodes.raw):
        return ""
    return "".join(_plain(child) for child in node.children)


def _meta_description(app, context, doctree, limit: int = 160) -> None:
    """<meta name="description">: what a search engine shows under the page's title.

    The page's first paragraph, cut after its last sentence within ``limit`` characters
    (or at a word); on pages without one (the general index, search), the config's
    ``site_description``. A description the page sets itself (MyST's ``html_meta``) is kept.
    """
    if 'name="description"' in context.get("metatags", ""):
        return
    text = _first_paragraph(doctree) if doctree is not None else ""
    if len(text) > limit:  # whole sentences if they say enough, else cut at a word
        sentences = text[:limit].rsplit(". ", 1)[0] + "." if ". " in text[:limit] else ""
        text = sentences if len(sentences) >= limit // 2 else text[:limit - 1].rsplit(" ", 1)[0].rstrip(",;:") + "\u2026"
    text = text or app.config.site_description
    if text:
        context["metatags"] = (context.get("metatags", "")
                               + f'\n<meta name="description" content="{escape(text, quote=True)}" />')


def _favicon_at_root(app, exception) -> None:
    """A copy of html_favicon at /favicon.ico: a browser asks for it there on pages that link none
    (Jupyter Book's root index.html, a redirect), and its 404 is a console error."""
    favicon = app.config.html_favicon
    if exception is not None or app.builder.format != "html" or not favicon or "://" in favicon:
        return
    source = Path(app.confdir) / favicon
    if source.suffix == ".ico" and source.is_file():
        shutil.copyfile(source, Path(app.outdir) / "favicon.ico")


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


# Scripts the theme writes into every page that the page does not need: (what, whose, pattern,
# replacement), applied where the page may defer its scripts (``_may_defer``; search.html keeps all).
PERFORMANCE_FIXES = [
    ("Sphinx's search tools and the whole search index (searchindex.js), loaded undeferred on every "
     "page for search-as-you-type, which is off here (the search button opens search.html, which "
     "loads them itself)",
     "pydata-sphinx-theme (layout.html, block extrahead)",
     re.compile(r'\s*<script src="[^"]*(?:_static/searchtools\.js|_static/language_data\.js|searchindex\.js)">'
                r'</script>'), ""),
    ("Font Awesome's script (1.5 MB) that redraws every icon as SVG: the theme's CSS already draws "
     "each icon the book uses from Font Awesome's web fonts, and the script is there for custom "
     "icons, which the book has none of",
     "pydata-sphinx-theme (static/webpack-macros.html, head_js_preload)",
     re.compile(r'\s*<script defer src="[^"]*_static/scripts/fontawesome\.js[^"]*"></script>'), ""),
]


def accessible_html(html: str) -> str:
    for _what, _upstream, pattern, replacement in ACCESSIBILITY_FIXES:
        html = pattern.sub(replacement, html)
    return html


def fast_html(html: str) -> str:
    for _what, _upstream, pattern, replacement in PERFORMANCE_FIXES:
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

    def fixed(template, context):
        page = accessible_html(render(template, context))
        return fast_html(page) if _may_defer(context, context.get("pagename")) else page

    app.builder.templates.render = fixed


def setup(app):
    app.connect("builder-inited", _add_vendor_path)
    app.connect("doctree-resolved", _figure_alt_text)
    app.connect("builder-inited", _render_accessibly)
    app.connect("html-page-context", _page_assets, priority=900)  # after the theme and extensions
    app.connect("build-finished", _favicon_at_root)
    app.add_config_value("site_description", "", "html", types=[str])
    return {"parallel_read_safe": True, "parallel_write_safe": True}
