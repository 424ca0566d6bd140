"""Text a pull request controls (a revision's version string, error messages, tracebacks,
log tails, file and branch names, its config's keys), made inert wherever it is shown.

Pure functions. Such text reaches the PR comment, the check run and the HTML report only
through ``code`` (Markdown) or ``html_code`` (HTML): one line, at most ``limit``
characters, inside a code span, where GitHub renders no heading, link, image, @-mention,
issue reference or emoji, and a browser no tag.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable

Span = Callable[..., str]

LIMIT = 200
# Control, format (bidi overrides, zero-width), surrogate and separator characters: shown
# as their escape, so that nothing invisible reorders or hides the text around it.
HIDDEN = ("Cc", "Cf", "Cs", "Zl", "Zp")
SPACES = re.compile(r"\s+")
TICKS = re.compile(r"`+")
PLACE = re.compile(r"\x00(\d+)\x00")


def one_line(text: str, limit: int = LIMIT) -> str:
    """``text`` on one line: runs of white space one space, invisible characters escaped
    (``\\u202e``), cut to ``limit`` characters (the last one "…" when cut)."""
    shown = "".join(
        f"\\u{ord(c):04x}" if unicodedata.category(c) in HIDDEN and not c.isspace() else c
        for c in str(text)
    )
    shown = SPACES.sub(" ", shown).strip()
    return shown if len(shown) <= limit else shown[: max(limit - 1, 0)] + "…"


def code(text: str, limit: int = LIMIT, table: bool = False) -> str:
    """``text`` as one Markdown code span (``one_line``): fenced by more backticks than it
    holds, padded where it starts or ends with one; in a ``table`` cell its pipes escaped
    (GFM splits cells before it reads code spans)."""
    inner = one_line(text, limit) or " "
    fence = "`" * (max((len(run) for run in TICKS.findall(inner)), default=0) + 1)
    if inner.startswith("`") or inner.endswith("`"):
        inner = f" {inner} "
    span = f"{fence}{inner}{fence}"
    return span.replace("|", "\\|") if table else span


def html_code(text: str, limit: int = LIMIT) -> str:
    """``text`` as an HTML ``<code>`` element (``one_line``, escaped)."""
    return f"<code>{html.escape(one_line(text, limit))}</code>"


def html_lines(render: Callable[[Span], list[str]]) -> list[str]:
    """The HTML of the lines ``render(span)`` writes: each line escaped, and each piece of
    text it gave ``span`` (as ``code`` takes it) an ``html_code`` element. So one function
    writes a line for both Markdown (``render(code)``) and HTML."""
    spans: list[str] = []

    def span(text: str, limit: int = LIMIT, table: bool = False) -> str:
        spans.append(html_code(text, limit))
        return f"\x00{len(spans) - 1}\x00"

    def place(match: re.Match) -> str:
        index = int(match.group(1))
        return spans[index] if index < len(spans) else ""

    return [PLACE.sub(place, html.escape(line)) for line in render(span)]


def html_line(render: Callable[[Span], str]) -> str:
    """``html_lines`` of one line."""
    return html_lines(lambda span: [render(span)])[0]
