"""The README stays a newcomer's page; the reference lives in docs/, every page of it
reachable from the README's index."""

from __future__ import annotations

import re

from deploy.template import ROOT

README = ROOT / "README.md"


def test_the_readme_fits_in_ten_kilobytes() -> None:
    assert len(README.read_bytes()) <= 10 * 1024


def test_every_page_in_docs_is_linked_from_the_readme() -> None:
    linked = set(re.findall(r"\]\(docs/([a-z_-]+\.md)\)", README.read_text()))
    pages = {path.name for path in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set()


def test_every_relative_link_in_the_readme_and_docs_points_at_a_file() -> None:
    for page in [README, *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\((?!https?:|#)([^)#\s]+)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: {target}"
