"""Check every internal link of the built site; list the external ones without fetching them.

    python -m tools.linkcheck [_build/html]

An internal link (``href``/``src`` of a, link, img, script, iframe, source)
must name a file of the site, and its ``#fragment``, if any, an element ``id``
(or ``<a name>``) of the page it points to. External links are written, with
the pages that use them, to ``_build/linkcheck/external.txt``: the build
machine may have no network, and a link check must not depend on other
people's servers. Exit status 1 if any internal link is broken.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

LINK_ATTRIBUTES = {"a": "href", "link": "href", "img": "src", "script": "src", "iframe": "src", "source": "src"}
IGNORED_SCHEMES = {"mailto", "data", "javascript", "tel"}


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "a" and values.get("name"):
            self.ids.add(values["name"])
        attribute = LINK_ATTRIBUTES.get(tag)
        if attribute and values.get(attribute):
            self.links.append(values[attribute].strip())


@dataclass
class Report:
    pages: int = 0
    internal_links: int = 0
    broken: list[tuple[str, str, str]] = field(default_factory=list)  # (page, link, why)
    external: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # url -> pages


def _parse(path: Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def check_site(site: Path) -> Report:
    site = site.resolve()
    pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)
    parsed = {page: _parse(page) for page in pages}
    report = Report(pages=len(pages))
    for page, parser in parsed.items():
        name = page.relative_to(site).as_posix()
        for link in parser.links:
            parts = urlsplit(link)
            if parts.scheme in IGNORED_SCHEMES:
                continue
            if parts.scheme or link.startswith("//"):
                report.external[link].add(name)
                continue
            url, fragment = urldefrag(link)
            if not url and not fragment:
                continue  # href="" or "#": a theme button, not a link
            report.internal_links += 1
            target = page if not url else (page.parent / unquote(urlsplit(url).path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_relative_to(site):
                report.broken.append((name, link, "points outside the site"))
            elif not target.is_file():
                report.broken.append((name, link, "no such file"))
            elif fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if unquote(fragment) not in ids:
                    report.broken.append((name, link, f"no element with id {unquote(fragment)!r}"))
    return report


def write_external(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{url}\t{', '.join(sorted(pages))}" for url, pages in sorted(report.external.items())]
    path.write_text("# External links of the built site (not fetched): URL<TAB>pages\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    site = Path(args[0]) if args else Path("_build/html")
    if not (site / "index.html").is_file():
        print(f"linkcheck: {site} is not a built site (no index.html); run `make book`", file=sys.stderr)
        return 2
    report = check_site(site)
    external = site.parent / "linkcheck" / "external.txt"
    write_external(report, external)
    for page, link, why in report.broken:
        print(f"{page}: {link}: {why}")
    print(f"{report.pages} pages, {report.internal_links} internal links, {len(report.broken)} broken; "
          f"{len(report.external)} external links listed in {external}")
    return 1 if report.broken else 0


if __name__ == "__main__":
    sys.exit(main())
