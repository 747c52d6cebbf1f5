"""Shared paths and helpers for the project's own tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
EXECUTED = ROOT / "_build" / "jupyter_execute"

if str(ROOT) not in sys.path:  # `tools` is a folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))


def glued_values(source: Path) -> dict[str, str]:
    """name -> text/plain repr of each value the executed chapter glued ({} before the build)."""
    glue_file = EXECUTED / source.relative_to(ROOT).with_suffix(".glue.json")  # written by MyST-NB
    if not glue_file.exists():
        return {}
    return {name: output["data"]["text/plain"] for name, output in json.loads(glue_file.read_text()).items()}


@pytest.fixture(scope="session")
def built_html() -> Path:
    """The built site; the test suite runs after `make book` (make test depends on it)."""
    if not (HTML / "index.html").exists():
        pytest.fail("_build/html is missing: run `make book` first (make test does)")
    return HTML
