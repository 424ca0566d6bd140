"""Rendering a compared run: the PR comment, the check run's output and the HTML page,
including at GitHub's limits."""

from __future__ import annotations

import dataclasses
import html.parser

from runner.judge.compare import compare
from runner.judge.policy import CompareConfig
from runner.report import (
    CHECK_LIMIT,
    COMMENT_LIMIT,
    MARKER,
    Links,
    check_run_output,
    comment,
    html_report,
)
from runner.result import BlendRun
from support import shift_head, synthetic_result

LINKS = Links(
    report="https://example.org/o/r/pr/7",
    trends="https://example.org/o/r/trends",
    latest="https://example.org/o/r/pr/7",
)


def compared(result):
    result.comparison = compare(result, CompareConfig())
    return result


def test_the_comment_leads_with_marker_verdict_and_the_changed_metrics():
    result = compared(shift_head(synthetic_result(), 1, +0.01))
    images = {("set", b.id): f"https://img.example/{b.id}.png" for b in result.blends[:5]}
    text = comment(result, dataclasses.replace(LINKS, images=images))
    lines = text.splitlines()
    assert lines[0] == MARKER
    assert lines[1] == "## ❌ scarlet regression: fail: regressed: mag error r"
    table = text.index("| mag error r |")
    assert table < text.index("unchanged metric(s)</summary>")
    row = next(line for line in lines if line.startswith("| mag error r |"))
    assert row.endswith("| +0.0100 | [+0.0100, +0.0100] | <0.001 | 🔴 regressed |")
    assert "| \\|mag error\\| |" in text, "pipes in labels are escaped"
    assert (
        "[Full report](https://example.org/o/r/pr/7) · [Trends](https://example.org/o/r/trends)"
        in text
    )
    assert text.count("![residuals of") == 5
    assert text.index("![residuals of") < text.index("more residual comparison(s)</summary>")


def test_identical_code_says_so_and_shows_a_short_table():
    result = compared(synthetic_result())
    text = comment(result, LINKS)
    assert "## ✅ scarlet regression: pass" in text
    assert "Every model is bit-identical to base's" in text
    assert "No metric changed beyond its tolerance." in text


def test_the_comment_stays_under_githubs_limit_for_huge_inputs():
    result = compared(shift_head(synthetic_result(blends=3000, sources=1), 1, +0.01))
    comparison = result.comparison
    comparison.metrics = [
        dataclasses.replace(m, name=f"{m.name}{i}", label=f"{m.label} {i}")
        for i in range(40)
        for m in comparison.metrics
    ]
    for blend in result.blends[::2]:
        blend.head = BlendRun(status="errored", error="RuntimeError: " + "x" * 500)
    images = {("set", b.id): f"https://img.example/{'a' * 64}.png" for b in result.blends}
    text = comment(result, dataclasses.replace(LINKS, images=images))
    assert len(text) <= COMMENT_LIMIT
    assert text.startswith(MARKER)
    assert "more in the full report" in text
    assert text.rstrip().endswith("[full report](https://example.org/o/r/pr/7)</sub>")
    output = check_run_output(result, LINKS)
    assert len(output.summary) <= CHECK_LIMIT and len(output.text) <= CHECK_LIMIT
    assert len(output.title) <= 250
    assert output.text.endswith("Full report: https://example.org/o/r/pr/7")


def test_the_check_run_output_names_the_verdict_and_lists_errors():
    result = synthetic_result()
    result.blends[0].head = BlendRun(status="errored", error="TypeError: boom\ntraceback…")
    output = check_run_output(compared(result), LINKS)
    assert output.title == "fail: regressed: errored blends"
    assert "| errored blends | 0 | 1 | +1 |" in output.summary
    assert "- `set/b0` head: TypeError: boom" in output.text


class _Parser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_the_html_report_has_every_blend_and_image_and_escapes_what_it_shows():
    result = shift_head(synthetic_result(blends=6), 1, +0.01)
    result.blends[0].id = "<script>alert(1)</script>"
    result = compared(result)
    images = {("set", b.id): f"images/{i}.png" for i, b in enumerate(result.blends)}
    page = html_report(result, dataclasses.replace(LINKS, images=images))
    parser = _Parser()
    parser.feed(page)
    assert "script" not in parser.tags
    assert sorted(parser.images) == sorted(images.values())
    assert page.count("<tr>") >= 6 + len(result.comparison.metrics)
    assert "&lt;script&gt;" in page
