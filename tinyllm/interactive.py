"""Interactive figures for the book's web pages: the build computes the data, the browser draws it.

A cell that returns one of these objects puts a single HTML block in the
page: the data as JSON, and a static PNG of the same figure. On the website
``_static/interactive.js`` (drawing with Plotly) replaces the picture with an
interactive figure; where JavaScript is off, or in Jupyter and Colab, where
that script is not loaded, the picture is what the reader sees.

Every number an interactive figure shows comes from the executed cell that made
it: nothing is recomputed in the browser except what the reader changes (a
temperature, a text to tokenize), and the browser tests check that those
computations agree with this library.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

KINDS = ("heatmap", "sampling", "tokenizer")


class InteractiveFigure:
    """One interactive figure: its kind, its data and a matplotlib fallback, rendered as HTML."""

    def __init__(self, kind: str, data: dict[str, Any], fallback=None, alt: str = ""):
        """``fallback``: a matplotlib figure (shown as a PNG) or a string of static HTML."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not alt:
            raise ValueError("describe the figure in alt: it is what a screen reader says")
        self.kind, self.data, self.alt = kind, data, alt
        self.fallback_html = fallback if isinstance(fallback, str) else None
        self.png = _png(fallback) if fallback is not None and self.fallback_html is None else None

    def _repr_html_(self) -> str:
        # "</" cannot appear inside a <script> element; JSON allows "<\/" for it.
        payload = json.dumps(self.data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
        image = ""
        if self.png is not None:
            image = (f'<img class="tinyllm-fallback" alt="{html.escape(self.alt)}" '
                     f'src="data:image/png;base64,{base64.b64encode(self.png).decode()}">')
        elif self.fallback_html is not None:
            image = (f'<div class="tinyllm-fallback" role="img" aria-label="{html.escape(self.alt)}">'
                     f'{self.fallback_html}</div>')
        return (f'<div class="tinyllm-interactive" data-kind="{self.kind}">'
                f'<script type="application/json" class="tinyllm-data">{payload}</script>{image}</div>')


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _rounded(rows, digits: int = 4) -> list:
    """Nested lists of floats with a few digits: enough for a heatmap, a fraction of the bytes."""
    return [[round(float(v), digits) for v in row] for row in rows]


def heatmap(panels: dict[str, Any], x_labels: list[str], y_labels: list[str], *, x_title: str, y_title: str,
            value_title: str, fallback=None, alt: str = "", zmin: float | None = None, zmax: float | None = None,
            colorscale: str = "Viridis", reverse_scale: bool = False) -> InteractiveFigure:
    """Heatmaps with hover values; with several ``panels`` (name -> 2-D values) a menu picks one.

    Labels may repeat (a token can occur twice in a sentence): the browser
    places cells by index and shows the label on hover and on the axes.
    Plotly's named scales run the other way from matplotlib's for some names
    ("Blues" is dark at 0): ``reverse_scale`` flips one to match a static figure.
    """
    data = {
        "panels": [{"name": name, "z": _rounded(values.tolist() if hasattr(values, "tolist") else values)}
                   for name, values in panels.items()],
        "x": list(map(str, x_labels)), "y": list(map(str, y_labels)),
        "xTitle": x_title, "yTitle": y_title, "valueTitle": value_title,
        "zmin": zmin, "zmax": zmax, "colorscale": colorscale, "reverseScale": reverse_scale,
    }
    for panel in data["panels"]:
        if len(panel["z"]) != len(y_labels) or any(len(row) != len(x_labels) for row in panel["z"]):
            raise ValueError(f"panel {panel['name']!r} is not {len(y_labels)} x {len(x_labels)}")
    return InteractiveFigure("heatmap", data, fallback, alt)


def sampling_explorer(logits, token_labels: list[str], context: str, *, show: int = 30, fallback=None,
                      alt: str = "") -> InteractiveFigure:
    """Sliders for temperature, top-k and top-p over one real next-token distribution.

    ``logits`` (V,) are the model's; the page applies chapter 9's filters to
    them in the browser, with the same rules as :mod:`tinyllm.sampling`
    (ties at the k-th logit are kept; top-p keeps the token that crosses p).
    """
    values = [float(v) for v in logits]
    if len(values) != len(token_labels):
        raise ValueError(f"{len(values)} logits but {len(token_labels)} labels")
    return InteractiveFigure("sampling", {"logits": [round(v, 5) for v in values],
                                          "tokens": list(token_labels), "context": context, "show": show},
                             fallback, alt)


def tokenizer_explorer(merges: list[tuple[int, int]], token_labels: list[str], example: str, example_ids: list[int],
                       *, split: bool = False, alt: str = "") -> InteractiveFigure:
    """A text box whose contents the page tokenizes with ``merges``, exactly as ``BPETokenizer.encode``.

    With ``split`` the page first cuts the text with GPT-2's pattern (``tinyllm.bpe.pre_split``),
    given to JavaScript as :func:`javascript_split_pattern` writes it. Without JavaScript the
    reader sees ``example`` cut into ``example_ids``, as static HTML.
    """
    if len(token_labels) != 256 + len(merges):
        raise ValueError(f"need one label per id: {256 + len(merges)}, got {len(token_labels)}")
    spans = "".join(f'<span class="tinyllm-token tinyllm-token-{i % 4}" title="id {t}">'
                    f"{html.escape(token_labels[t])}</span>" for i, t in enumerate(example_ids))
    static = (f'<div class="tinyllm-tokens">{spans}</div>'
              f'<pre class="tinyllm-ids">[{", ".join(map(str, example_ids))}]</pre>')
    return InteractiveFigure("tokenizer", {"merges": [list(m) for m in merges], "tokens": list(token_labels),
                                           "example": example, "pattern": javascript_split_pattern() if split else None},
                             static, alt)


def javascript_split_pattern() -> str:
    """``tinyllm.bpe.split_pattern()`` for a JavaScript ``RegExp`` with the ``u`` flag, matching what ``regex`` does.

    JavaScript reads ``\\p{L}``, ``\\p{N}`` and the look-ahead the same way, but its ``\\s`` is
    another set (it has U+FEFF and lacks U+0085), so ``\\s`` and ``\\S`` are written out as the
    characters the regex package calls whitespace (all in the Basic Multilingual Plane).
    """
    import regex

    from tinyllm.bpe import split_pattern

    spaces = "".join(f"\\u{{{ord(ch):x}}}" for ch in regex.findall(r"\s", "".join(map(chr, range(0xD800)))
                                                                  + "".join(map(chr, range(0xE000, 0x10000)))))
    pattern = split_pattern().replace(r"[^\s", "[^" + spaces)  # inside a class: its members
    return pattern.replace(r"\S", f"[^{spaces}]").replace(r"\s", f"[{spaces}]")
