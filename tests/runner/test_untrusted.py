"""Text a revision controls, made inert: one line, capped, in one code span, whatever it
holds (checked with GitHub's own Markdown renderer, cmark-gfm)."""

from __future__ import annotations

import html

import cmarkgfm
from cmarkgfm.cmark import Options
from hypothesis import given
from hypothesis import strategies as st

from runner.publish.untrusted import LIMIT, code, html_code, html_line, one_line

UNSAFE = Options.CMARK_OPT_UNSAFE  # raw HTML passes: GitHub keeps <img>, <details>, ...


def rendered(markdown: str) -> str:
    return cmarkgfm.github_flavored_markdown_to_html(markdown, options=UNSAFE).strip()


@given(st.text(max_size=300))
def test_any_text_is_one_code_span_holding_its_one_line(text):
    page = rendered(f"x {code(text)} y")
    inner = page.removeprefix("<p>x <code>").removesuffix("</code> y</p>")
    assert page != inner and "<code>" not in inner and "</code>" not in inner, page
    assert html.unescape(inner).strip() == one_line(text).strip()


@given(st.text(max_size=100))
def test_any_text_is_one_table_cell(text):
    page = rendered(f"| a | b |\n|---|---|\n| {code(text, table=True)} | z |\n")
    row = page.split("<tbody>")[1]
    cells = row.count("<td>")
    assert cells == 2 and "<td>z</td>" in row, page
    inner = row.split("<td><code>")[1].split("</code></td>")[0]
    assert html.unescape(inner).strip() == one_line(text).strip()


def test_one_line_collapses_space_escapes_what_hides_and_caps():
    assert one_line("a\n\n  b\tc\r\n") == "a b c"
    assert one_line("safe\u202egnp.exe\u200b") == "safe\\u202egnp.exe\\u200b"
    assert one_line("\ud800x") == "\\ud800x"  # a lone surrogate cannot reach UTF-8 otherwise
    capped = one_line("x" * 10_000)
    assert len(capped) == LIMIT and capped.endswith("…")
    assert one_line("abcdef", 4) == "abc…"


def test_backticks_inside_get_a_longer_fence():
    assert code("a`b") == "``a`b``"
    assert code("`x`") == "`` `x` ``"
    assert code("") == "` `"


def test_html_code_and_html_line_escape_everything():
    assert html_code("<img src=x>") == "<code>&lt;img src=x&gt;</code>"
    line = html_line(lambda span: f"version {span('<b>1</b>')} & more")
    assert line == "version <code>&lt;b&gt;1&lt;/b&gt;</code> &amp; more"
