"""A pull request's own text (its version string, its error messages, its config's keys,
a dependency's package name) reaches the PR comment, the check run and the HTML report
inert: no heading, no image, no @-mention, no tag, nothing outside one code span. The
Markdown is rendered with GitHub's own renderer (cmark-gfm) with raw HTML let through, as
GitHub lets ``<img>`` through."""

from __future__ import annotations

from html.parser import HTMLParser

import cmarkgfm
import pytest
from cmarkgfm.cmark import Options

from bot.service import failure_output
from bot.state.jobs import Job
from runner.judge.compare import compare
from runner.judge.policy import CompareConfig
from runner.publish.report import Links, check_run_output, comment, drift_issue, html_report
from runner.result import BlendRun, Drift, PackageChange, Policy
from support import synthetic_result

BEACON = "http://beacon.example/p.png"
HOSTILE = (
    "1.0\n\n## ✅ safe to merge\n\n"
    f"![x]({BEACON}) <img src={BEACON}> @maintainer ``` `x` </code><h1>safe to merge</h1>"
)
LINKS = Links(report="https://example.org/o/r/pr/7")


class Inert(HTMLParser):
    """What a page shows: images, headings' text, and text outside ``<code>``; ``inline``
    the text of code spans (a fenced block, ``<pre>``, holds a log's or a traceback's
    lines)."""

    def __init__(self, page: str):
        super().__init__()
        self.code = 0
        self.pre = 0
        self.inline: list[str] = []
        self.heading = 0
        self.images: list[str] = []
        self.headings: list[str] = []
        self.outside: list[str] = []
        self.inside: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "code":
            self.code += 1
        elif tag == "pre":
            self.pre += 1
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.heading += 1
        elif tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag):
        if tag == "code":
            self.code -= 1
        elif tag == "pre":
            self.pre -= 1
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.heading -= 1

    def handle_data(self, data):
        (self.inside if self.code else self.outside).append(data)
        if self.code and not self.pre:
            self.inline.append(data)
        if self.heading:
            self.headings.append(data)


def assert_inert(page: str) -> None:
    shown = Inert(page)
    assert not [src for src in shown.images if "beacon" in src]
    assert not [h for h in shown.headings if "safe to merge" in h]
    outside = "".join(shown.outside)
    for word in ("safe to merge", "@maintainer", "beacon", "<img"):
        assert word not in outside, word
    assert "safe to merge" in "".join(shown.inside)  # shown, not dropped
    assert not [text for text in shown.inline if "\n" in text.strip()]


def markdown(text: str) -> str:
    return cmarkgfm.github_flavored_markdown_to_html(text, options=Options.CMARK_OPT_UNSAFE)


def hostile_result():
    result = synthetic_result(blends=8)
    result.provenance.head.deblender_version = HOSTILE
    result.provenance.base.deblender_version = HOSTILE
    result.provenance.head.numpy_version = HOSTILE
    result.blends[0].head = BlendRun(status="errored", error=f"ValueError: {HOSTILE}\n" * 50)
    result.comparison = compare(result, CompareConfig())
    result.comparison.policy = Policy("base", "a" * 40, [f"metrics.{HOSTILE}: 1 → 2"], HOSTILE)
    return result


def test_hostile_text_is_inert_in_the_comment_the_check_run_and_the_html_report():
    result = hostile_result()
    assert_inert(markdown(comment(result, LINKS)))
    output = check_run_output(result, LINKS)
    assert "safe to merge" not in output.title
    assert_inert(markdown(output.summary))
    assert_inert(markdown(output.text))
    assert_inert(html_report(result, LINKS))


def test_a_dependencys_hostile_names_are_inert_in_the_drift_report():
    result = hostile_result()
    package = PackageChange(f"evil|{HOSTILE}", "1.0", HOSTILE)
    result.provenance.drift = Drift("main", "b" * 40, [package])
    title, body = drift_issue(result, LINKS)
    assert "\n" not in title
    assert_inert(markdown(body))
    assert_inert(markdown(comment(result, LINKS)))
    assert_inert(html_report(result, LINKS))
    row = next(line for line in body.splitlines() if "evil" in line)
    table = markdown(f"| package | lock | newest |\n|---|---|---|\n{row}\n")
    assert table.count("<td>") == 3, "the pipe in the name splits no cell"


def test_a_tool_failures_hostile_error_is_inert_in_the_drift_issue_and_the_check_run():
    # Every blend fails the same way on both sides: the adapter's failure, its error text
    # the revision's, in the drift issue's heading and the check run's title.
    result = synthetic_result(blends=4)
    error = "ValueError: " + HOSTILE.replace("\n", " ")  # its first line is what is shown
    for blend in result.blends:
        blend.base = BlendRun(status="errored", error=error)
        blend.head = BlendRun(status="errored", error=error)
    result.provenance.drift = Drift("main", "b" * 40, [])
    result.comparison = compare(result, CompareConfig())
    assert result.comparison.tool_failure is not None
    title, body = drift_issue(result, LINKS)
    assert "\n" not in title
    assert_inert(markdown(body))
    output = check_run_output(result, LINKS)
    assert "\n" not in output.title
    assert_inert(markdown(output.summary))


@pytest.mark.parametrize(
    "error",
    [
        f"the runner could not start: cannot clone: {HOSTILE}",
        f"Cloud Run: task failed\n```\n{HOSTILE}",
    ],
)
def test_a_runner_failure_is_inert_in_the_check_run(error):
    job = Job("o/r", 1, "c" * 40, "main", "https://x", pr=7, conclusion="error", error=error)
    output = failure_output(job)
    assert "\n" not in output.title and "safe to merge" not in output.title
    assert_inert(markdown(output.summary))


def test_a_branch_name_labels_the_trends_on_one_capped_line():
    from bot.pages.trends import trend_data
    from runner.publish.summarise import summarise

    result = synthetic_result(blends=4)
    result.comparison = compare(result, CompareConfig())
    merged_at = "2026-11-01T00:00:00+00:00"
    record = summarise(result, "o/r", branch=HOSTILE * 3, merged_at=merged_at)
    (point,) = trend_data([record], "o/r")["merges"]
    assert "\n" not in point["label"] and len(point["label"]) == 60
