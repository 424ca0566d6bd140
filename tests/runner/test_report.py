"""Rendering a compared run: the PR comment, the check run's output and the HTML page,
including at GitHub's limits."""

from __future__ import annotations

import dataclasses
import html.parser

from runner.judge.compare import compare
from runner.judge.policy import CompareConfig
from runner.publish.report import (
    CHECK_LIMIT,
    COMMENT_LIMIT,
    MARKER,
    Links,
    check_run_output,
    comment,
    html_report,
)
from runner.result import BlendRun, Policy
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
    assert lines[1] == "## ❌ scarlet regression: fail"
    assert lines[3].startswith("**40 of 40 blends changed; 0 worse beyond tolerance; most changed:")
    assert lines[5] == "- regressed: mag error r"
    table = text.index("| mag error r [mag] |")
    assert table < text.index("unchanged metric(s)</summary>")
    row = next(line for line in lines if line.startswith("| mag error r [mag] |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3] == "+0.0100" and cells[4] == "[+0.0100, +0.0100]"
    assert cells[5] == "±0.005", "the tolerance is stated in the form of Δ"
    assert cells[7:] == ["<0.001", "🔴 regressed"]
    assert "| \\|mag error\\|, mean over bands [mag] |" in text, "pipes in labels are escaped"
    assert "Δ: the median paired difference head − base" in text
    assert text.lower().count("full report") == 1, "the full report is linked once"
    assert text.count("![residuals of") == 5
    assert text.index("![residuals of") < text.index("more residual comparison(s)</summary>")


def test_a_few_worse_blends_lead_the_comment_with_the_worst_and_why():
    result = synthetic_result(blends=20, sources=1)
    for blend in result.blends[:3]:
        blend.head.model_hash = "e" * 64
        blend.head.chi2_dof *= 8
    text = comment(compared(result), LINKS)
    headline = text.splitlines()[3]
    assert headline.startswith("**3 of 20 blends changed; 3 worse beyond tolerance; worst: set/b")
    assert "χ²/pixel" in headline
    assert "### 3 blend(s) clearly worse" in text
    assert "17 blend(s) identical to base's in everything measured: no figure." in text


def test_identical_code_says_so_and_shows_a_short_table():
    result = compared(synthetic_result())
    text = comment(result, LINKS)
    assert "## ✅ scarlet regression: pass" in text
    assert "**All 40 blends are bit-identical to base's in everything measured" in text
    assert "No metric changed beyond its tolerance." in text
    page = html_report(result, LINKS)
    assert "bit-identical to base&#x27;s in everything measured" in page
    assert "<p></p>" not in page


def test_timings_carry_units_and_ratios_their_factor():
    result = synthetic_result()
    for blend in result.blends:
        blend.head.fit_time *= 2
        blend.head.init_time *= 2
    text = comment(compared(result), LINKS)
    row = next(line for line in text.splitlines() if line.startswith("| runtime per source [s] |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3].startswith("×2.")
    assert cells[5] == "×1.25"


def test_the_policy_and_what_the_head_would_change_are_stated():
    result = compared(synthetic_result())
    result.comparison.policy = Policy(
        "base", "a" * 40, ["metrics.mag_error.tolerance: default → 1.0"]
    )
    text = comment(result, LINKS)
    assert "Judged by the base's `.github/scarlet-regression.toml` at `aaaaaaaaaa`" in text
    assert "The head's config differs and was not used: `metrics.mag_error.tolerance:" in text


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
    assert "[Full report](https://example.org/o/r/pr/7)" in text
    output = check_run_output(result, LINKS)
    assert len(output.summary) <= CHECK_LIMIT and len(output.text) <= CHECK_LIMIT
    assert len(output.title) <= 250
    assert output.text.endswith("Full report: https://example.org/o/r/pr/7")


def test_check_run_limits_count_utf8_bytes():
    # 57,000 characters of notes, mostly two-byte Δs: within the limit in characters, not bytes.
    result = compared(synthetic_result())
    differences = [f"metrics.m{i}.tolerance: default → {'Δ' * 60}" for i in range(600)]
    result.comparison.policy = Policy("base", "a" * 40, differences)
    output = check_run_output(result, LINKS)
    assert len(output.summary.encode()) <= CHECK_LIMIT
    assert "| mag error r [mag] |" in output.summary
    assert "metrics.m1.tolerance" not in output.summary


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
