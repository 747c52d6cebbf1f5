"""Helpers used by the book's chapters, that also work outside the book build.

In the build, MyST-NB's ``glue`` stores a value so that the prose can quote it
(``{glue:text}`ppl:.2f```); in Colab or a plain Jupyter session myst_nb may be
missing, and then gluing simply does nothing.
"""

from __future__ import annotations

from typing import Any


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Store ``value`` under ``name`` for the prose to quote; return the value."""
    try:
        from myst_nb import glue as _myst_glue
    except ImportError:  # Colab: no book build, nothing to quote into.
        return value
    _myst_glue(name, value, display=display)
    return value


def setup_plots() -> None:
    """One look for every figure in the book: readable sizes, no clutter."""
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.figsize": (6.4, 3.6),
            "figure.dpi": 110,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "font.size": 10,
        }
    )
