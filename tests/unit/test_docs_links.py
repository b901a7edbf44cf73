"""The README's and docs/'s relative links lead somewhere, and every page of docs/ is reachable from the
README or docs/architecture.md."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_resolves_to_a_file_and_heading():
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme_or_the_architecture_page():
    linked = {
        (hub.parent / target.partition("#")[0]).resolve()
        for hub in (REPO / "README.md", REPO / "docs" / "architecture.md")
        for target in links(hub)
    }
    orphans = [page.name for page in PAGES[1:] if page.resolve() not in linked and page.name != "architecture.md"]
    assert orphans == []
    assert (REPO / "docs" / "architecture.md").resolve() in linked
