"""The README is a landing page, and the documentation's relative links resolve on a fresh
clone: every file a link names exists, and every ``#anchor`` is a heading of its page as
GitHub makes anchors of headings."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_WORDS = 1200

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without code blocks and code spans, where links are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (github-slugger): the rendered text in lower
    case, punctuation but ``-`` and ``_`` dropped, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub gives the page's headings (repeats numbered -1, -2, ...)."""
    seen: Counter[str] = Counter()
    found = set()
    for _, text in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(text)
        found.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return found


def links(page: Path) -> list[str]:
    """The relative link targets of a page (not web addresses, not mail)."""
    targets = LINK.findall(prose(page.read_text()))
    return [t for t in targets if t and not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no {file.relative_to(ROOT)}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_is_a_landing_page():
    words = len(README.read_text().split())
    assert words <= MAX_README_WORDS, f"README.md has {words} words (at most {MAX_README_WORDS})"


def test_the_readme_names_the_command_ci_runs():
    """CI runs the README's test command: `.ci/run` ends in it, the README shows it."""
    assert "\nexec bash scripts/test.sh\n" in (ROOT / ".ci" / "run").read_text()
    assert "```sh\nbash scripts/test.sh\n```" in README.read_text()
    assert "```sh\nbash scripts/demo.sh\n```" in README.read_text()


def test_the_slugs_follow_github():
    assert slug("The comparison and the verdict") == "the-comparison-and-the-verdict"
    assert slug("`end_to_end.py`") == "end_to_endpy"
    assert slug("The GitHub App (`bot/`)") == "the-github-app-bot"
    assert slug("GitHub's limits and logs") == "githubs-limits-and-logs"
    assert slug("Why plotly.js, in the browser") == "why-plotlyjs-in-the-browser"
