"""Read the few settings that are set once in _config.yml and used elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "llm-foundations"  # the name in pyproject.toml


def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def repository() -> tuple[str, str]:
    """(https URL, branch) of the repository the Colab links point at."""
    repo = config()["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def colab_url(path_in_repo: str) -> str:
    """The Colab address that opens ``path_in_repo`` (an .ipynb) from GitHub."""
    url, branch = repository()
    owner_repo = url.split("github.com/", 1)[1]
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/{path_in_repo}"


def version() -> str:
    """The distribution's version, from pyproject.toml (read as text: Python 3.10 has no tomllib)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r'^version\s*=\s*"([^"]+)"', text, flags=re.M).group(1)


# What the student package is built from (pyproject's packages, hidden checks excluded).
PACKAGE_PATHS = ["pyproject.toml", "tinyllm", "autograder", ":(exclude)autograder/hidden"]


def package_ref() -> str:
    """The git commit (or tag) the notebooks install the student package from.

    ``repository.package_ref`` in _config.yml: written by ``make pin`` as the last
    commit that changed the student package, or set by an instructor to a tag of
    their own for a term. Never a branch, so the checks cannot change under
    students mid-term; a commit, so it exists on GitHub as soon as it is pushed.
    Without a setting, the release tag ``v<version>``.
    """
    return str(config()["repository"].get("package_ref") or f"v{version()}")


def last_package_commit() -> str | None:
    """The newest commit that changed the student package; None without git history (or a shallow clone)."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    if git("rev-parse", "--is-shallow-repository") != "false":
        return None
    return git("log", "-1", "--format=%H", "--", *PACKAGE_PATHS) or None


def pin() -> str:
    """Write the last package commit into _config.yml as repository.package_ref (``make pin``)."""
    commit = last_package_commit()
    if commit is None:
        raise SystemExit("make pin needs the repository's git history (not a shallow clone)")
    path = ROOT / "_config.yml"
    text = path.read_text(encoding="utf-8")
    line = f"  package_ref: {commit}  # make pin: the last commit that changed the student package\n"
    if re.search(r"^  package_ref:.*\n", text, flags=re.M):
        text = re.sub(r"^  package_ref:.*\n", line, text, count=1, flags=re.M)
    else:
        text = re.sub(r"^(repository:\n(?:  .*\n)*)", lambda m: m.group(1) + line, text, count=1, flags=re.M)
    path.write_text(text, encoding="utf-8")
    return commit


def package_install_spec() -> str:
    """What pip installs in Colab: this repository's student package, pinned."""
    url, _ = repository()
    return f"{DISTRIBUTION} @ git+{url}@{package_ref()}"


def toc_files() -> list[str]:
    """Docnames listed in _toc.yml, in order (e.g. 'book/01_language_modelling')."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    found = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                found.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    return found


def numbered_chapters() -> list[str]:
    """Docnames of the numbered parts of _toc.yml, in order: chapter n is the n-th.

    The numbering runs on across parts (Part II's first chapter follows Part I's
    last), as the book's multi-toc numbering shows it.
    """
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    return [chapter["file"] for part in toc.get("parts", []) if part.get("numbered")
            for chapter in part.get("chapters", [])]


def generator_main(argv: list[str], doc: str, commands: dict, stale) -> int:
    """The shared command line of the generators: named commands that write files, and `check`.

    ``commands`` maps a name to a function returning the paths it wrote;
    ``stale`` returns one message per out-of-date file.
    """
    import sys

    command = argv[0] if argv else "check"
    if command in commands:
        for path in commands[command]():
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    if command == "check":
        problems = stale()
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    print(doc, file=sys.stderr)
    return 2


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["pin"]:
        print(f"repository.package_ref = {pin()}")
    else:
        raise SystemExit("usage: python -m tools.bookconfig pin")
