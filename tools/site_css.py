"""The site's stylesheets as one file, less the rules that nothing on the site can match.

The theme and the extensions link 12 stylesheets from every page's head (600 kB, 66 kB
compressed), and a browser paints nothing until it has them all: on Lighthouse's mobile
emulation (slow 4G, a phone's CPU) that was most of a 3.8 s first paint. Most of those bytes
are rules for markup the book never produces: the icon classes of all of Font Awesome's
2,000 icons, Bootstrap components the theme does not use. ``tools/sphinx_site.py`` links one
file instead, built here from the pages' own stylesheets, in their order:

- ``combine``: the stylesheets in cascade order, each ``@import`` inlined where it stands
  (``theme.css`` imports ``basic.css``), every ``url()`` rebased to the bundle's folder,
  licence comments (``/*! ... */``) kept at the top.
- ``used_names``: every word of the built pages and of the scripts they load (classes,
  ids and element names that the theme's JavaScript, MathJax or Plotly create are in those
  scripts' text). A script is counted when a page names its file, so a script that no
  page loads (Font Awesome's, which names every icon) does not keep rules alive.
- ``purge``: a style rule keeps the selectors of its list whose class names, ids and
  element names are all among those words; a rule with none left goes. What a selector
  says inside a functional pseudo-class (``:not(.x)``, ``:is()``, ``:has()``) is not
  required (``.a:not(.b)`` matches whether or not ``.b`` exists), attribute selectors
  (dark mode's ``html[data-theme=dark]``) are not required, at-rules keep their kept
  contents (``@media print`` included), ``@font-face`` and ``@keyframes`` stay whole.
  Classes that a script builds from pieces (``KEEP_PREFIXES``) are kept by prefix.

``tests/test_site.py`` checks the result in a browser: every element's computed style,
pseudo-elements included, is the same under the bundle as under the original stylesheets,
on a phone and a desktop, in light and dark mode, with the theme's menus and dialogs open.
"""

from __future__ import annotations

import posixpath
import re
import zlib
from pathlib import Path

import tinycss2
from tinycss2 import ast
from tinycss2.serializer import serialize_url

# Class names a script assembles at run time, so no page or script holds them whole:
# (prefix, whose script builds them).
KEEP_PREFIXES = [
    ("bs-", "Bootstrap (the theme's tooltips and popovers): `bs-${NAME}-auto` and the placement classes"),
]

WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
LICENCE = re.compile(r"/\*!.*?\*/", re.DOTALL)


def _local(url: str) -> bool:
    return not (url.startswith(("data:", "#", "/")) or re.match(r"^[a-z][a-z0-9+.-]*:", url, re.IGNORECASE))


def _rebase(url: str, source: str, target_dir: str) -> str:
    """``url`` as written in the stylesheet ``source`` (a path in the site), relative to ``target_dir``."""
    if not _local(url):
        return url
    path, _, rest = url.partition("?") if "?" in url else url.partition("#")
    suffix = (("?" if "?" in url else "#") + rest) if rest or url.endswith(("?", "#")) else ""
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
    return posixpath.relpath(resolved, target_dir) + suffix


def _url_of(node) -> str | None:
    """The URL of a ``url(x)`` token or a ``url("x")`` function, else None."""
    if node.type == "url":
        return node.value
    if node.type == "function" and node.lower_name == "url":
        strings = [arg for arg in node.arguments if arg.type == "string"]
        return strings[0].value if strings else None
    return None


def _rebased(nodes: list, source: str, target_dir: str) -> list:
    out = []
    for node in nodes:
        url = _url_of(node)
        if url is not None and _local(url):  # a data: URL or another site's stays as written
            new = _rebase(url, source, target_dir)
            out.append(ast.URLToken(node.source_line, node.source_column, new, f"url({serialize_url(new)})"))
            continue
        if node.type in ("() block", "[] block", "{} block"):
            node.content = _rebased(node.content, source, target_dir)
        elif node.type == "function":
            node.arguments = _rebased(node.arguments, source, target_dir)
        out.append(node)
    return out


def combine(root: Path, members: list[str], bundle: str) -> tuple[list, list[str]]:
    """(the rules of ``members``, in order, with urls relative to ``bundle``; their licence comments).

    ``members`` and ``bundle`` are paths in the site (``_static/pygments.css``), ``root`` its folder.
    """
    rules, licences = [], []

    def read(path: str, seen: tuple[str, ...]) -> None:
        if path in seen:
            raise ValueError(f"stylesheets import each other in a cycle: {' -> '.join(seen + (path,))}")
        text = (root / path).read_text(encoding="utf-8")
        licences.extend(f"{comment} (in {path})" for comment in LICENCE.findall(text)
                        if comment not in "".join(licences))
        for rule in tinycss2.parse_stylesheet(text, skip_comments=True, skip_whitespace=True):
            if rule.type == "error":
                raise ValueError(f"{path}: cannot parse ({rule.message})")
            if rule.type == "at-rule" and rule.lower_at_keyword == "charset":
                continue
            if rule.type == "at-rule" and rule.lower_at_keyword == "import":
                target = next((_url_of(n) or (n.value if n.type == "string" else None)
                               for n in rule.prelude if n.type in ("url", "function", "string")), None)
                media = tinycss2.serialize(n for n in rule.prelude if n.type not in ("url", "function", "string"))
                if target is None or not _local(target) or media.strip():
                    raise ValueError(f"{path}: cannot inline @import {tinycss2.serialize(rule.prelude).strip()}")
                read(posixpath.normpath(posixpath.join(posixpath.dirname(path), target)), seen + (path,))
                continue
            rule.prelude = _rebased(rule.prelude, path, posixpath.dirname(bundle))
            if rule.content is not None:
                rule.content = _rebased(rule.content, path, posixpath.dirname(bundle))
            rules.append(rule)

    for member in members:
        read(member, ())
    return rules, licences


def used_names(texts) -> set[str]:
    """Every word (``[A-Za-z_][A-Za-z0-9_-]*``) of the given page and script texts."""
    names = set()
    for text in texts:
        names.update(WORD.findall(text))
    return names


def _split(prelude: list) -> list[list]:
    """A selector list's selectors (the prelude split at its top-level commas)."""
    selectors = [[]]
    for node in prelude:
        if node.type == "literal" and node.value == ",":
            selectors.append([])
        else:
            selectors[-1].append(node)
    return [s for s in selectors if any(n.type != "whitespace" for n in s)]


def _can_match(selector: list, names: set[str], lowered: set[str]) -> bool:
    """Whether every class name, id and element name that ``selector`` requires is in ``names``.

    Element names compare lower-cased; what a functional pseudo-class (``:not(...)``) or an
    attribute selector (``[...]``) says is not required.
    """
    previous = None
    for node in selector:
        dot = previous is not None and previous.type == "literal" and previous.value == "."
        if node.type == "ident" and dot:
            if node.value not in names and not any(node.value.startswith(p) for p, _ in KEEP_PREFIXES):
                return False
        elif node.type == "ident" and not (previous is not None and previous.type == "literal"
                                            and previous.value in (":", "|")):
            if node.value.lower() not in lowered:
                return False
        elif node.type == "hash" and node.value not in names:
            return False
        previous = node
    return True


def _squeezed(nodes) -> str:
    """Nodes serialized with each run of whitespace as one space (strings and urls untouched)."""
    text = []
    for node in nodes:
        if node.type == "whitespace":
            text.append(" ")
        elif node.type in ("() block", "[] block", "{} block"):
            opening = {"() block": "(", "[] block": "[", "{} block": "{"}[node.type]
            closing = {"(": ")", "[": "]", "{": "}"}[opening]
            text.append(opening + _squeezed(node.content).strip() + closing)
        elif node.type == "function":
            text.append(tinycss2.serialize([ast.IdentToken(0, 0, node.name)]) + "("
                        + _squeezed(node.arguments).strip() + ")")
        else:
            text.append(tinycss2.serialize([node]))
    return re.sub(r" ?([;{}]) ?", r"\1", "".join(text))


def _string_characters(nodes: list) -> set[str]:
    """The characters of every string in a rule's declarations.

    An icon font's glyphs are drawn by ``content: "\\f0eb"``, or by a custom property that a
    ``content: var(--icon)`` reads: every string counts, so no icon is missed (the few letters
    of font names and quotes cost a few glyphs).
    """
    characters = set()
    for node in nodes:
        if node.type == "string":
            characters.update(node.value)
        elif node.type in ("() block", "[] block", "{} block"):
            characters |= _string_characters(node.content)
        elif node.type == "function":
            characters |= _string_characters(node.arguments)
    return characters


def purge(rules: list, names: set[str], fonts: "FontSubsetter | None" = None) -> tuple[str, dict]:
    """(the stylesheet of the rules that can match, counts of selectors and rules kept and dropped).

    With ``fonts``, each ``@font-face`` of a font in the site is served as a subset of it with
    the glyphs the kept rules' strings can draw (``FontSubsetter``).
    """
    lowered = {name.lower() for name in names}
    counts = {"rules kept": 0, "rules dropped": 0, "selectors kept": 0, "selectors dropped": 0}
    characters: set[str] = set()
    font_faces: dict[int, object] = {}

    def emit(rule) -> str:
        if rule.type == "qualified-rule":
            selectors = _split(rule.prelude)
            kept = [s for s in selectors if _can_match(s, names, lowered)]
            counts["selectors kept"] += len(kept)
            counts["selectors dropped"] += len(selectors) - len(kept)
            if not kept:
                counts["rules dropped"] += 1
                return ""
            counts["rules kept"] += 1
            characters.update(_string_characters(rule.content))
            return ",".join(_squeezed(s).strip() for s in kept) + "{" + _squeezed(rule.content).strip() + "}"
        keyword = rule.lower_at_keyword
        head = "@" + tinycss2.serialize([ast.IdentToken(0, 0, rule.at_keyword)])
        prelude = _squeezed(rule.prelude).strip()
        head += (" " + prelude if prelude else "")
        if rule.content is None:
            return head + ";"
        if keyword in ("media", "supports", "layer", "container", "document", "scope", "starting-style"):
            inner = "".join(emit(r) for r in tinycss2.parse_rule_list(rule.content, skip_comments=True,
                                                                      skip_whitespace=True)
                            if r.type != "error")
            return head + "{" + inner + "}" if inner else ""
        if keyword == "font-face" and fonts is not None:  # written once the characters are known
            font_faces[id(rule)] = rule
            return f"\0font-face {id(rule)}\0"
        return head + "{" + _squeezed(rule.content).strip() + "}"  # @keyframes, @page, ...

    css = "".join(emit(rule) for rule in rules)
    for key, rule in font_faces.items():
        css = css.replace(f"\0font-face {key}\0", "@font-face{" + fonts.face(rule.content, characters) + "}")
    return css, counts


class FontSubsetter:
    """Each font of an ``@font-face`` reduced to the glyphs the site's stylesheet draws, as WOFF.

    Font Awesome's three fonts are 400 kB (as WOFF2) for 2,000 icons; the book's pages show a
    dozen, and a browser fetches the fonts before its first paint. Here ``src`` points to a
    subset of the face's TrueType file (fontTools) with only the characters of the kept
    rules' strings (``_string_characters``), written beside the bundle. A face whose ``src`` has no local
    ``.ttf`` is left as it is.
    """

    def __init__(self, root: Path, bundle: str):
        self.root, self.bundle = root, bundle
        self.written: dict[str, tuple[int, int]] = {}  # subset file: (bytes before, after)

    def face(self, content: list, characters: set[str]) -> str:
        declarations = tinycss2.parse_blocks_contents(content, skip_comments=True, skip_whitespace=True)
        out = []
        for declaration in declarations:
            if declaration.type != "declaration":
                continue
            value = _squeezed(declaration.value).strip()
            if declaration.lower_name == "src":
                subset = self._subset([_url_of(n) for n in declaration.value if _url_of(n)], characters)
                value = f'url({serialize_url(subset)}) format("woff")' if subset else value
            out.append(f"{declaration.name}:{value}")
        return ";".join(out)

    def _subset(self, urls: list[str], characters: set[str]) -> str | None:
        from fontTools import subset  # only for the HTML build, where matplotlib brings it
        from fontTools.ttLib import TTFont

        truetype = next((u for u in urls if _local(u) and u.split("?")[0].endswith(".ttf")), None)
        if truetype is None:
            return None
        source = self.root / posixpath.normpath(posixpath.join(posixpath.dirname(self.bundle), truetype.split("?")[0]))
        font = TTFont(source)
        cmap = font.getBestCmap()
        options = subset.Options()
        options.flavor = "woff"
        options.layout_features = ["*"]
        subsetter = subset.Subsetter(options)
        subsetter.populate(unicodes=sorted(ord(c) for c in characters if ord(c) in cmap))
        subsetter.subset(font)
        name = f"{source.stem}.subset.woff"
        target = self.root / posixpath.dirname(self.bundle) / name
        font.flavor = "woff"
        font.save(target)
        woff2 = source.with_suffix(".woff2")
        self.written[name] = ((woff2 if woff2.is_file() else source).stat().st_size, target.stat().st_size)
        return f"{name}?v={zlib.crc32(target.read_bytes()):08x}"
