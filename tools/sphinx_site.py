"""Sphinx extension for the book's site: offline assets, loaded only where a page needs them.

- Plotly (vendored in ``book/_vendor``) is copied into ``_static`` and added to
  the pages that contain a Plotly figure (heatmap, sampling), before ``interactive.js``;
  other pages do not pay its 1.5 MB.
- Duplicate script tags (sphinx-thebe's, see ``_page_assets``) are dropped.
"""

from __future__ import annotations

from pathlib import Path

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


def setup(app):
    app.connect("builder-inited", _add_vendor_path)
    app.connect("html-page-context", _page_assets, priority=900)  # after the theme and extensions
    return {"parallel_read_safe": True, "parallel_write_safe": True}
