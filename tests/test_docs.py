"""The README and docs/ stay navigable: every relative link resolves, the README stays short and
keeps its system diagram."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 150

# [text](target) and ![alt](target); the target stops at whitespace or ")", so an optional
# title ("...") after it is ignored. Fenced code blocks are skipped before matching.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^\s)>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
EXTERNAL = ("http:", "https:", "mailto:")


def _prose(text: str) -> str:
    """The text outside fenced code blocks, with inline code spans blanked."""
    lines, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append(re.sub(r"`[^`]*`", "``", line))
    return "\n".join(lines)


def _relative_links(path: Path) -> list[str]:
    targets = []
    for target in LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        targets.append(target)
    return targets


def _cases() -> list[tuple[Path, str]]:
    return [(path, target) for path in [README, *DOCS] for target in _relative_links(path)]


def test_docs_exist() -> None:
    assert README.is_file()
    assert DOCS, "docs/*.md holds the README's topic pages"


@pytest.mark.parametrize(
    ("path", "target"),
    _cases(),
    ids=[f"{path.relative_to(ROOT)}->{target}" for path, target in _cases()],
)
def test_relative_link_resolves(path: Path, target: str) -> None:
    file_part = target.split("#", 1)[0]
    resolved = (path.parent / file_part).resolve()
    assert resolved.exists(), (
        f"{path.relative_to(ROOT)} links to {target!r}, but {resolved} does not exist"
    )


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines; keep it at most {MAX_README_LINES} and move detail "
        "to docs/"
    )


def test_readme_has_mermaid_diagram() -> None:
    text = README.read_text(encoding="utf-8")
    assert re.search(r"^```mermaid\s*$", text, flags=re.MULTILINE), (
        "README.md should keep its ```mermaid system diagram"
    )
