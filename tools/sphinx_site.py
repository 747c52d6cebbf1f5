"""Sphinx extension for the book's site: offline assets, loaded only where a page needs them.

- Plotly (vendored in ``book/_vendor``) is copied into ``_static``; the pages that contain
  a Plotly figure (heatmap, sampling) name it for ``interactive.js``, which loads it after
  the page (other pages do not pay its 1.5 MB, and none waits for it).
- Duplicate script tags (sphinx-thebe's, see ``_page_assets``) are dropped.
- Speed and search engines (Lighthouse, ``tests/test_lighthouse.py``, desktop and mobile
  presets): no script blocks the first paint (``_page_assets`` defers them;
  ``PERFORMANCE_FIXES`` drops the search index that every page loaded for nothing,
  ``SITE_WIDE_FIXES`` Font Awesome's script; ``_inline_documentation_options``); the
  page's 13 stylesheets are one file, less the rules nothing on the site can match, with
  the icon fonts cut to the icons drawn (``one_stylesheet`` as each page renders,
  ``_write_bundle`` once all are written; ``tools/site_css.py``); the maths is typeset when
  the book is built (``tools/site_maths.py``), so no page runs MathJax; each page has a
  meta description (its first paragraph, ``_meta_description``); the favicon is also at
  the site's root, where browsers ask for it on pages without a link to it
  (``_favicon_at_root``).
- Accessibility (WCAG 2.1 A/AA, checked by axe-core in ``tests/test_site.py``):
  every figure's image gets its caption as alt text (``_figure_alt_text``), and the
  markup that upstream projects write with an accessibility fault is corrected in
  the written pages (``ACCESSIBILITY_FIXES``), each fix naming the project it belongs to.
"""

from __future__ import annotations

import json
import re
import shutil
import zlib
from html import escape
from pathlib import Path

from docutils import nodes
from sphinx.util import logging

if __package__:  # imported as tools.sphinx_site (the tests)
    from . import site_css, site_maths
else:  # loaded by Sphinx as a local extension: tools/ itself is on sys.path
    import site_css
    import site_maths

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
]

# Scripts the theme writes into every page, the search page included, that no page needs.
SITE_WIDE_FIXES = [
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


def fast_html(html: str, deferrable: bool = True) -> str:
    for _what, _upstream, pattern, replacement in SITE_WIDE_FIXES + (PERFORMANCE_FIXES if deferrable else []):
        html = pattern.sub(replacement, html)
    return _without_unused_mathjax(html)


# MathJax's script and its configuration, which the site's extensions write into every page
# (MyST-NB asks for its assets on all pages: a notebook's output may hold maths).
_MATHJAX = re.compile(r'\s*<script(?: defer="defer")? src="[^"]*_static/mathjax/[^"]*"></script>'
                      r'|\s*<script>window\.MathJax = .*?</script>')
_SCRIPT = re.compile(r"<script\b.*?</script>", re.DOTALL)


def _without_unused_mathjax(html: str) -> str:
    """A page with no maths for MathJax (none of its delimiters outside scripts) loads no MathJax.

    It is 264 kB of script that runs for 0.1-0.5 s on a phone's CPU before the reader can
    scroll smoothly, on pages (the introduction, the notation's neighbours) that show none.
    """
    text = _SCRIPT.sub("", html)
    if any(delimiter in text for delimiter in ("\\(", "\\[", "$$", "\\begin{")):
        return html
    return _MATHJAX.sub("", html)


_DOCUMENTATION_OPTIONS = re.compile(r'<script src="[^"]*_static/documentation_options\.js(?:\?v=[0-9a-f]+)?"></script>')


def _inline_documentation_options(html: str, outdir: Path) -> str:
    """Sphinx's ``documentation_options.js`` (400 bytes, one object) written into the page.

    It is the one script the page cannot defer (the inline scripts after it set its fields),
    so the browser would wait for a round trip to fetch it before painting anything.
    """
    source = outdir / "_static" / "documentation_options.js"
    if not source.is_file():
        return html
    script = source.read_text(encoding="utf-8").strip()
    return _DOCUMENTATION_OPTIONS.sub(lambda _: f"<script>{script}</script>", html, count=1)


# --------------------------------------------------------------------------- one stylesheet

BUNDLE = "_static/styles/site.css"
_STYLESHEET = re.compile(r'[ \t]*<link\b(?=[^>]*\brel="stylesheet")[^>]*\bhref="([^"]+)"[^>]*>\n?')
_MEMBERS = re.compile(r"<!-- the stylesheets of this page, bundled into site\.css: ([^<>]*?) -->")
_BUNDLE_LINK = re.compile(r'(_static/styles/site\.css)(\?v=[0-9a-f]+)?"')


def one_stylesheet(html: str, root: str) -> str:
    """The page's stylesheets (those of the site's ``_static``) replaced by one link to the bundle.

    ``root`` is the page's path to the site's root (``../`` for a chapter). The link stands
    where the first of them stood; a comment before it lists them, in order, for
    ``_write_bundle``, which builds the bundle from all pages once they are written.
    """
    head, end, rest = html.partition("</head>")
    members = []

    def replace(match):
        href = match.group(1).split("?")[0].split("#")[0]
        if not href.startswith(root + "_static/") or not href.endswith(".css"):
            return match.group(0)  # another site's stylesheet, or not a plain file: left as it is
        members.append(href[len(root):])
        if len(members) > 1:
            return ""
        indent = match.group(0)[:len(match.group(0)) - len(match.group(0).lstrip(" \t"))]
        return f'{indent}<link rel="stylesheet" href="{root}{BUNDLE}" />\n'

    head = _STYLESHEET.sub(replace, head)
    if not members:
        return html
    head = head.replace(f'<link rel="stylesheet" href="{root}{BUNDLE}" />',
                        f"<!-- the stylesheets of this page, bundled into site.css: {' '.join(members)} -->\n"
                        f'<link rel="stylesheet" href="{root}{BUNDLE}" />', 1)
    return head + end + rest


def _ordered_union(lists: list[list[str]]) -> list[str]:
    """One order of every stylesheet that keeps each page's order (its cascade); ValueError if none does."""
    merged: list[str] = []
    for members in lists:
        position = 0
        for member in members:
            if member in merged:
                if merged.index(member) < position:
                    raise ValueError(f"pages link their stylesheets in different orders: {members} against {merged}")
                position = merged.index(member) + 1
            else:
                merged.insert(position, member)
                position += 1
    return merged


def _write_bundle(app, exception) -> None:
    """``_static/styles/site.css`` from the stylesheets the pages list, less what no page or script uses.

    After every page and static file is written (the quiz's stylesheet is written at the end
    of the build too), from all pages on disk, so an incremental build bundles for every
    page, not only those it wrote. Each page's link is stamped with the bundle's checksum
    (``?v=``), as Sphinx stamps the files it links, so a browser never keeps an old bundle.
    """
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    pages = {path: path.read_text(encoding="utf-8") for path in sorted(outdir.rglob("*.html"))
             if not path.relative_to(outdir).parts[0].startswith("_")}
    lists = [match.group(1).split() for text in pages.values() for match in _MEMBERS.finditer(text)]
    if not lists:
        return
    members = _ordered_union(lists)
    scripts = {"_static/" + name for text in pages.values()
               for name in re.findall(r'["\'](?:[^"\'\s]*/)?_static/([^"\'?#\s]+\.js)', text)}
    texts = list(pages.values()) + [(outdir / script).read_text(encoding="utf-8") for script in sorted(scripts)
                                    if (outdir / script).is_file()]
    rules, licences = site_css.combine(outdir, members, BUNDLE)
    (outdir / BUNDLE).parent.mkdir(parents=True, exist_ok=True)
    fonts = site_css.FontSubsetter(outdir, BUNDLE)
    css, counts = site_css.purge(rules, site_css.used_names(texts), fonts)
    text = '@charset "UTF-8";\n' + "".join(licence + "\n" for licence in licences) + css + "\n"
    (outdir / BUNDLE).write_text(text, encoding="utf-8")
    version = f"{zlib.crc32(text.encode()):08x}"
    for path, page in pages.items():
        stamped = _BUNDLE_LINK.sub(rf'\1?v={version}"', page)
        if stamped != page:
            path.write_text(stamped, encoding="utf-8")
    before = sum((outdir / member).stat().st_size for member in members)
    logger.info(f"site.css: {len(members)} stylesheets, {before // 1024} kB, bundled into {len(text) // 1024} kB "
                f"({counts['rules kept']} rules kept, {counts['rules dropped']} that nothing on the site matches dropped); "
                + ", ".join(f"{name} {after // 1024} kB (of {full // 1024} kB)" for name, (full, after) in fonts.written.items()))


def _render_accessibly(app) -> None:
    """Every page the HTML builder renders (chapters, search, index) passes through the fixes.

    At render time, not after the build: a page is never on disk without them, and an
    incremental build fixes exactly the pages it writes.
    """
    if app.builder.format != "html":
        return
    render = app.builder.templates.render
    typesetter = app.site_maths = site_maths.Typesetter()
    if typesetter.unavailable:
        logger.info("node is not on PATH: the maths is left for MathJax to typeset in the reader's browser")
    else:
        app.add_css_file(MATHS_CSS.removeprefix("_static/"))

    def fixed(template, context):
        pagename = context.get("pagename")

        def report(tex, message):
            logger.warning(f"MathJax cannot typeset {tex!r}: {message}", location=pagename)

        page = site_maths.typeset_page(render(template, context), typesetter, report)
        page = _inline_documentation_options(fast_html(accessible_html(page), _may_defer(context, pagename)),
                                             Path(app.outdir))
        if "pathto" not in context:
            return page
        # The path to the site's root ("../" in book/; pathto("") is "#" on a page at the root).
        return one_stylesheet(page, context["pathto"]("_static/", 1).removesuffix("_static/"))

    app.builder.templates.render = fixed


MATHS_CSS = "_static/mathjax-svg.css"


def _write_maths_css(app, exception) -> None:
    """The stylesheet MathJax's SVG output needs (from the same MathJax), for the bundle; Node stops."""
    typesetter = getattr(app, "site_maths", None)
    if typesetter is None:
        return
    try:
        if exception is None and not typesetter.unavailable:
            (Path(app.outdir) / MATHS_CSS).write_text(typesetter.stylesheet(), encoding="utf-8")
    finally:
        typesetter.close()


def setup(app):
    app.connect("builder-inited", _add_vendor_path)
    app.connect("doctree-resolved", _figure_alt_text)
    app.connect("builder-inited", _render_accessibly)
    app.connect("html-page-context", _page_assets, priority=900)  # after the theme and extensions
    app.connect("build-finished", _favicon_at_root)
    app.connect("build-finished", _write_maths_css, priority=800)
    app.connect("build-finished", _write_bundle, priority=900)  # after the quiz and MathJax write theirs
    app.add_config_value("site_description", "", "html", types=[str])
    return {"parallel_read_safe": True, "parallel_write_safe": True}
