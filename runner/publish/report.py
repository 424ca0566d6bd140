"""Render a compared run result: the PR comment, the check run's output, an HTML page.

Pure functions from a ``RunResult`` (with its ``comparison``) and the addresses of its
artifacts to text. No numpy, no I/O, no GitHub calls: the bot and the runner's
``--report`` both use them. Everything fits GitHub's limits however large the input:
past them, the least important parts go first, then a pointer to the full report. Text a
revision controls (its version strings, error messages, its config's keys, package names)
is shown only through ``runner.publish.untrusted``: one line, capped, in a code span. Functions
that write such text take the ``span`` to write it with (``code``; ``html_line`` passes
its own for the HTML page).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

from runner.publish.untrusted import code, html_code, html_line, html_lines, one_line
from runner.result import (
    BlendChange,
    BlendResult,
    Comparison,
    Failure,
    MetricComparison,
    RunResult,
    ToolFailure,
)

CONFIG_FILE = ".github/scarlet-regression.toml"

MARKER = "<!-- scarlet-regression:report -->"
DRIFT_MARKER = "<!-- scarlet-regression:drift -->"
COMMENT_LIMIT = 65_536
CHECK_LIMIT = 65_535
TITLE_LIMIT = 250
INLINE_IMAGES = 3
DETAIL_IMAGES = 12
VERDICT_ICONS = {"pass": "✅", "fail": "❌", "neutral": "⚠️"}
STATUS_ICONS = {
    "improved": "🟢",
    "unchanged": "⚪",
    "regressed": "🔴",
    "changed": "🟠",
    "inconclusive": "🟡",
}
STATUS_ORDER = {"regressed": 0, "changed": 1, "inconclusive": 2, "improved": 3, "unchanged": 4}
WORSE_LISTED = 10
# Units named after a metric's label; χ² and -2 logL per pixel say so in their labels.
UNITS = ("mag", "px", "s")
DELTA_NOTE = (
    "Δ: the median paired difference head − base over the blends (or injected sources)"
    " both measured, in the unit the metric names, with its {level} interval; × rows: the"
    " median head/base ratio, timed in the same job on the same slot; tail rows: head's"
    " percentile minus base's. A metric regressed only where its whole interval lies"
    " beyond the tolerance. The base and head columns are each side's own median (tail"
    " rows: percentile), not paired: Δ need not equal their difference. mag error = truth"
    " − model magnitude. Detectable: the smallest change this run could have detected"
    " (5 % level, 80 % power)."
)


def level(comparison: Comparison) -> str:
    """The confidence level of the comparison's intervals, e.g. "90%"."""
    return f"{100 * comparison.config.get('confidence', 0.95):g}%"


def delta_note(comparison: Comparison) -> str:
    """What the metric table's columns mean."""
    return DELTA_NOTE.format(level=level(comparison).replace("%", " %"))


@dataclass(frozen=True)
class Links:
    """Where the full report, the trends and the residual images of a run live."""

    report: str | None = None
    trends: str | None = None
    latest: str | None = None
    images: dict[tuple[str, str], str] = field(default_factory=dict)


def code_block(text: str, limit: int = 8000) -> str:
    """Untrusted lines (a log's tail, a traceback) as a fenced code block: fenced by more
    backticks than any run inside (three at least), cut to its last ``limit`` characters."""
    text = text[-limit:]
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _number(value: float | None, sign: bool = False) -> str:
    """Four significant digits (signed differences: four decimals, so that round-off
    reads as ±0.0000); thousands grouped."""
    if value is None:
        return "–"
    plus = "+" if sign else ""
    if abs(value) >= 1000:
        return f"{value:{plus},.0f}"
    if sign:
        return f"{value:+.4f}"
    return f"{value:.4g}"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def label(metric: MetricComparison) -> str:
    """The metric's label with the unit of its values, e.g. "mag error r [mag]"."""
    return f"{metric.label} [{metric.unit}]" if metric.unit in UNITS else metric.label


def format_value(metric: MetricComparison, value: float | None) -> str:
    """A base or head value of ``metric`` (in the unit its label names)."""
    if value is None:
        return "–"
    if metric.unit == "count":
        return f"{value:.0f}"
    return _number(value)


def _change(metric: MetricComparison, value: float | None) -> str:
    """A change (Δ, an interval's end, a detectable effect) in the form of Δ."""
    if value is None:
        return "–"
    if metric.statistic == "count":
        return f"{value:+.0f}"
    if metric.name in RATIO_METRICS:
        return f"×{value:.3f}"
    return _number(value, sign=True)


RATIO_METRICS = ("init_time", "cpu_time_per_source", "iterations")


def format_delta(metric: MetricComparison) -> str:
    """The change of a metric as people read it: ×ratio, a signed difference with its
    unit, or a count."""
    return _change(metric, metric.delta)


def format_ci(metric: MetricComparison) -> str:
    """The confidence interval in the form of ``format_delta``."""
    low, high = metric.ci
    if low is None or high is None:
        return "–"
    return f"[{_change(metric, low)}, {_change(metric, high)}]"


def format_tolerance(metric: MetricComparison) -> str:
    """The tolerance in the form of Δ: ±difference with its unit, a factor, or a count."""
    if metric.statistic == "count":
        return f"{metric.tolerance:.0f}"
    if metric.name in RATIO_METRICS:
        return f"×{1 + metric.tolerance:.3g}"
    return f"±{metric.tolerance:.4g}"


def format_mde(metric: MetricComparison) -> str:
    """The smallest change the run could have detected, unsigned, in the form of Δ."""
    if metric.statistic == "count":
        return "any"
    if metric.mde is None:
        return "none" if metric.delta is not None and metric.p is not None else "–"
    if metric.name in RATIO_METRICS:
        return f"×{metric.mde:.3f}"
    return f"{metric.mde:.2g}"


def headline(result: RunResult) -> str:
    """One line of plain text (the check run's title): verdict and reasons."""
    comparison = _comparison(result)
    reasons = "; ".join(comparison.reasons)
    return one_line(f"{comparison.verdict}" + (f": {reasons}" if reasons else ""), TITLE_LIMIT)


def markdown_reasons(comparison: Comparison) -> str:
    """The verdict's reasons as one line of Markdown, a failure's error text in a code span."""
    return "; ".join(_rendered_reasons(comparison)) or "no reason given"


def failure_line(failure: Failure) -> str:
    """A failure in words, its error as code: "head does not build: `SyntaxError: ...`",
    "head errors on 100 of 100 blends: `ValueError in Box.contains`"."""
    if failure.stage == "build":
        return f"{failure.side} does not build: {code(failure.summary)}"
    return (
        f"{failure.side} errors on {failure.blends} of {failure.of} blends: {code(failure.summary)}"
    )


def _rendered_reasons(comparison: Comparison) -> list[str]:
    """The verdict's reasons as Markdown: a failure's error text in a code span."""
    rendered = []
    for reason in comparison.reasons:
        for failure in comparison.failures:
            reason = reason.replace(failure.reason, failure_line(failure))
        tool = comparison.tool_failure
        rendered.append(tool_failure_line(tool) if tool and reason == tool.headline else reason)
    return rendered


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _tally_line(comparison: Comparison) -> str:
    """What changed blend by blend, in one sentence."""
    tally = comparison.tally
    if comparison.identical_models:
        return (
            f"All {tally.blends} blends are bit-identical to base's in everything measured"
            " (models, fluxes, centroids, iterations, logL): the science is unchanged."
        )
    if comparison.measurement_change:
        return (
            f"Models bit-identical on all {tally.blends} blends; measurement changed:"
            f" {comparison.measurement_change}."
        )
    parts = [
        f"{tally.changed} of {tally.blends} blends changed",
        f"{tally.worse} worse beyond tolerance",
    ]
    if tally.better:
        parts.append(f"{tally.better} better")
    if tally.mixed:
        parts.append(f"{tally.mixed} mixed (one band better, another worse)")
    changed = [c for c in comparison.blends if not c.identical]
    if changed:
        top = changed[0]
        why = top.worse or top.better or blend_deltas(top)
        word = "worst" if top.worse else "most changed"
        parts.append(f"{word}: {top.dataset}/{top.id} ({'; '.join(why[:3])})")
    return "; ".join(parts) + "."


def what_changed(result: RunResult) -> str:
    """What changed: what broke on either side first (said once, its error as code),
    fixes, then blend by blend ("N of M blends changed; K worse beyond tolerance; worst:
    set/id (why)"), that everything measured is identical, or that only measurements
    moved."""
    comparison = _comparison(result)
    tally = comparison.tally
    skipped = result.provenance.skipped
    if skipped is not None:
        shown = f" on {tally.blends} blends" if tally.blends else ""
        if skipped.reason == "identical build":
            return (
                "Head's build installs exactly base's files (version files and comments"
                f" aside): its results are base's{shown}, so nothing was deblended."
            )
        outcome = f"its results are base's{shown}" if tally.blends else "nothing was deblended"
        return (
            "This PR does not change the installed scarlet: no file it changes goes into"
            f" the package. Head was not built and {outcome}."
        )
    sentences = [_sentence(failure_line(f)) for f in comparison.failures]
    if result.provenance.head.build.status == "failed":
        return " ".join([*sentences, "Nothing was deblended."])
    if comparison.fixed:
        sentences.append(
            f"Fixed: {len(comparison.fixed)} of {len(result.blends)} blends that errored on"
            " base deblend on head."
        )
    ancestor, found = comparison.ancestor, result.provenance.ancestor
    if ancestor is not None and found is not None:
        commits = f"{found.distance} commit{'s' if found.distance != 1 else ''} back"
        reasons = "; ".join(ancestor.reasons) or "nothing changed beyond tolerance"
        sentences.append(
            f"Against base's nearest good ancestor `{ancestor.sha[:10]}` ({commits}, its"
            f" stored run) on {ancestor.tally.blends} blends: {ancestor.verdict} ({reasons})."
        )
    elif result.provenance.base.build.status == "failed" or (comparison.fixed and not tally.blends):
        sentences.append("No stored run of an ancestor of base was found to compare with.")
    if tally.blends:
        sentences.append(_tally_line(comparison))
    elif ancestor is None:
        sentences.append("No blend was deblended by both base and head.")
    return " ".join(sentences)


def notes(result: RunResult, span=code) -> list[str]:
    """What a reader should know beside the metrics: the policy and what the head's config
    would change, what was excluded, fits that stopped at their iteration cap."""
    comparison = _comparison(result)
    policy = comparison.policy
    lines = []
    if policy.source in ("base", "head"):
        sha = f" at {span(policy.sha[:10])}" if policy.sha else ""
        lines.append(f"Judged by the {policy.source}'s {span(CONFIG_FILE)}{sha} (or its defaults).")
        other = "head" if policy.source == "base" else "base"
        if policy.differences:
            changes = "; ".join(span(d, 120) for d in policy.differences)
            lines.append(f"The {other}'s config differs and was not used: {changes}.")
        if policy.note:
            lines.append(f"The {other}'s config could not be read: {span(policy.note)}.")
    elif policy.source == "file":
        lines.append(
            f"Judged by the config file {span(policy.note or '')} given to {span('compare')}."
        )
    if comparison.excluded:
        shown = ", ".join(span(e, 80) for e in comparison.excluded[:20])
        more = f" and {len(comparison.excluded) - 20} more" if len(comparison.excluded) > 20 else ""
        lines.append(
            f"Excluded from the statistics (errored or unmeasured on both sides): {shown}{more}."
        )
    if not result.provenance.sandboxed:
        lines.append(
            "The revisions' code ran **unsandboxed** (`--unsandboxed`): it could read and"
            " write what the runner can."
        )
    lines += requirement_notes(result, span) + native_note(comparison)
    lines += reuse_notes(result, span)
    capped = {side: n for side, n in comparison.unconverged.items() if n}
    if capped:
        counts = ", ".join(f"{n} {side}" for side, n in capped.items())
        lines.append(f"Fits that stopped at their iteration cap (not converged): {counts}.")
    return lines


def tool_failure_line(failure: ToolFailure, span=code) -> str:
    """A tool failure's headline, its error (the untrusted part) as code."""
    headline, error = failure.headline, failure.error or ""
    tail = error if error and headline.endswith(error) else error.strip().split("\n")[0]
    if not tail or not headline.endswith(tail):
        return span(headline, 300)
    return f"{headline[: -len(tail)]}{span(tail, 300)}"


def tool_notice(comparison: Comparison) -> str:
    """The loud block of a tool failure (the adapter, not the PR, failed): its headline
    and the traceback's last frames; empty when there is none."""
    failure = comparison.tool_failure
    if failure is None:
        return ""
    block = (
        f"> [!CAUTION]\n> **Tool failure, not this pull request's regression:**"
        f" {tool_failure_line(failure)} ({failure.blends} blend(s)). The verdict is neutral"
        " until the adapter is mended."
    )
    if failure.traceback:
        block += "\n\n" + code_block(failure.traceback, 3000)
    return block


def requirement_notes(result: RunResult, span=code) -> list[str]:
    """The requirements each revision declares that its locked environment does not meet."""
    lines = []
    for side in ("base", "head"):
        conflicts = getattr(result.provenance, side).build.conflicts
        if conflicts:
            shown = "; ".join(span(c) for c in conflicts[:10])
            more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
            lines.append(f"The lock does not meet {side}'s declared requirements: {shown}{more}.")
    return lines


def native_note(comparison: Comparison) -> list[str]:
    """The revision's own measurement changed where nothing judged did (reported only)."""
    native = comparison.native
    if native is None:
        return []
    return [
        f"The deblender's own measurement code gives other values than base's on"
        f" {len(native.blends)} blend(s) whose models are identical (largest flux change"
        f" {_number(native.flux)}, centroid shift {_number(native.centroid)} px): not judged,"
        " the runner measures fluxes and centroids from the models itself."
    ]


def reuse_notes(result: RunResult, span=code) -> list[str]:
    """What was reused from earlier runs, how it was checked, what the timings rest on."""
    reuses = [r for r in (result.provenance.reuse, result.provenance.head_reuse) if r]
    lines = []
    for reuse in reuses:
        side = reuse.side.capitalize()
        if reuse.mismatched:
            shown = ", ".join(span(m, 80) for m in reuse.mismatched[:10])
            where = " in their shard" if reuse.blends else ""
            lines.append(
                f"{side}'s stored outcomes did not match a fresh deblend of {shown}:"
                f" {reuse.side} was deblended afresh{where} and those stored outcomes were"
                " not used."
            )
        if reuse.blends:
            more = f" and {len(reuse.runs) - 3} more" if len(reuse.runs) > 3 else ""
            lines.append(
                f"{side}'s outcomes on {reuse.blends} blends were read from the store"
                f" (measured by {'; '.join(one_line(r) for r in reuse.runs[:3])}{more});"
                f" {len(reuse.checked) - len(reuse.mismatched)} blends deblended afresh"
                " matched them bit for bit."
            )
    if any(reuse.blends for reuse in reuses):
        timed = sum(b.timed_in_run for b in result.blends)
        lines.append(f"Timings rest on the {timed} blends deblended by both sides in this run.")
    return lines


def _comparison(result: RunResult) -> Comparison:
    if result.comparison is None:
        raise ValueError("the run result has no comparison: run `python -m runner compare`")
    return result.comparison


VERSION_LIMIT = 60


def _provenance_line(result: RunResult, span=code) -> str:
    p = result.provenance
    merge = " (merge-base)" if p.merge_base else ""
    sets = ", ".join(f"{one_line(d.name, 80)} ({d.blends})" for d in p.datasets)
    version = (
        span(p.head.deblender_version, VERSION_LIMIT)
        if p.head.deblender_version
        else p.head.build.status
    )
    if p.head.build.status == "skipped":
        version = f"{span(p.base.deblender_version or '', VERSION_LIMIT)} (base's; head not built)"
    errored = sum(b.head.status == "errored" or b.base.status == "errored" for b in result.blends)
    revisions = f"head {span(p.head.sha[:10])} vs base {span(p.base.sha[:10])}{merge}"
    if p.drift is not None:
        revisions = (
            f"{span(p.drift.rev, 80)} at {span(p.drift.sha[:10])}: newest allowed releases"
            " (head) vs the lock (base)"
        )
    measured = f"{len(result.blends)} blends" if result.blends else "nothing deblended"
    return f"{revisions} · {p.adapter} {version} · {measured}: {sets}" + (
        f" · {errored} errored" if errored else ""
    )


def package_table(result: RunResult) -> str:
    """The packages a drift run found newer (or otherwise different) than the lock, as a
    Markdown table; empty for a run that is not a drift run."""
    drift = result.provenance.drift
    if drift is None:
        return ""
    if not drift.packages:
        return "Every package is at its locked version."
    rows = [
        "| " + " | ".join(code(v, VERSION_LIMIT, table=True) if v else "–" for v in row) + " |"
        for row in ((p.name, p.locked, p.newest) for p in drift.packages)
    ]
    return "| package | lock | newest |\n|---|---|---|\n" + "\n".join(rows)


def drift_failed(result: RunResult) -> bool:
    """Whether a drift run shows a break: a regression, blends that errored, or an adapter
    that cannot drive the revision (main broke the tool: the same issue says so)."""
    errored = any("errored" in (b.base.status, b.head.status) for b in result.blends)
    comparison = _comparison(result)
    return comparison.verdict == "fail" or errored or comparison.tool_failure is not None


def drift_issue(result: RunResult, links: Links) -> tuple[str, str]:
    """Title and body of the issue a failing drift run opens (or updates): marker, the
    packages that moved, the metrics that changed and the errors."""
    comparison = _comparison(result)
    drift = result.provenance.drift
    if drift is None:
        raise ValueError("not the result of a drift run")
    names = ", ".join(one_line(p.name, 60) for p in drift.packages) or "no package"
    title = f"Newer releases of dependencies break the deblender ({names})"
    if comparison.tool_failure is not None:
        title = one_line(comparison.tool_failure.headline, TITLE_LIMIT + 1)
        title = title[:1].upper() + title[1:]
    if len(title) > TITLE_LIMIT:
        title = title[: TITLE_LIMIT - 1] + "…"
    changed = [m for m in metric_rows(comparison) if m.status != "unchanged"]
    link_line = _links_line(links)
    parts = [
        f"{DRIFT_MARKER}\n## {VERDICT_ICONS[comparison.verdict]} Dependency drift:"
        f" {comparison.verdict}\n\n{markdown_reasons(comparison)}",
        "No pull request changed this: the same revision deblends differently with the newest"
        " releases its requirements allow than with the lock.\n\n"
        + _provenance_line(result)
        + (f"\n\n{link_line}" if link_line else ""),
        "### Versions that differ from the lock\n\n" + package_table(result),
        metric_table(changed, level(comparison))
        if changed
        else "No metric changed beyond its tolerance.",
    ]
    notice = tool_notice(comparison)
    if notice:
        parts.insert(1, notice)
    errors = failures_section(result)
    if errors:
        parts.append(errors)
    parts.append(
        "To adopt the newer versions once the deblender works with them: "
        "`python -m runner lock adopt result.json --out NEW_LOCK`, then review the lock."
    )
    tail = f"<sub>scarlet-regression {result.provenance.runner_version} · updated by every"
    tail += " failing drift run; closed when drift is clean again</sub>"
    return title, _fit(parts, COMMENT_LIMIT, tail)


def drift_cleared(result: RunResult, links: Links) -> str:
    """The comment that closes the drift issue once a drift run is clean again."""
    report = f" ([report]({links.report}))" if links.report else ""
    return (
        f"{VERDICT_ICONS['pass']} Drift is clean again{report}: {_provenance_line(result)}."
        "\n\n" + package_table(result)
    )


def _links_line(links: Links) -> str:
    parts = [
        f"[{name}]({url})"
        for name, url in (
            ("Full report", links.report),
            ("Trends", links.trends),
            ("Latest report", links.latest),
        )
        if url
    ]
    return " · ".join(parts)


def metric_rows(comparison: Comparison) -> list[MetricComparison]:
    """Metrics in reading order: regressed, changed, inconclusive, improved, unchanged."""
    return sorted(comparison.metrics, key=lambda m: STATUS_ORDER[m.status])


def format_status(metric: MetricComparison) -> str:
    """The status with its icon, and why it does not move the verdict where it does not;
    a re-timing's result beside a timing's."""
    text = f"{STATUS_ICONS[metric.status]} {metric.status}"
    if metric.retimed is not None:
        retimed = metric.retimed
        low, high = retimed.ci
        interval = f"[{_change(metric, low)}, {_change(metric, high)}]"
        verb = "confirmed" if retimed.confirmed else "not confirmed"
        text += f" ({verb} by a re-timing of {retimed.pairs} pairs:"
        text += f" {_change(metric, retimed.delta)} {interval})"
    if not metric.gating:
        text += f" — {metric.note or 'reported only'}"
    return text


def metric_cells(metric: MetricComparison, raw_p: bool = False) -> list[str]:
    """A metric's row as text: label, Δ with its interval, tolerance, status, detectable
    change, (the raw p,) the adjusted p, and each side's own median."""
    return [
        label(metric),
        " ".join(part for part in (format_delta(metric), format_ci(metric)) if part != "–") or "–",
        format_tolerance(metric),
        format_status(metric),
        format_mde(metric),
        *([_p(metric.p)] if raw_p else []),
        _p(metric.p_adjusted),
        format_value(metric, metric.base),
        format_value(metric, metric.head),
    ]


def _metric_row(metric: MetricComparison) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in metric_cells(metric)) + " |"


TABLE_HEAD = (
    "| metric | Δ [{level} CI] | tolerance | status | detectable | p (adj.) |"
    " base's own median | head's own median |\n"
    "|---|---|---:|---|---:|---:|---:|---:|"
)


def metric_table(
    metrics: list[MetricComparison], interval: str = "95%", budget: int = 20_000
) -> str:
    """A Markdown table of metrics, cut short (with a note) past ``budget`` characters."""
    head = TABLE_HEAD.format(level=interval)
    lines, size = [head], len(head)
    for index, metric in enumerate(metrics):
        row = _metric_row(metric)
        if size + len(row) + 1 > budget:
            lines.append(f"| … {len(metrics) - index} more in the full report |" + " |" * 7)
            break
        lines.append(row)
        size += len(row) + 1
    return "\n".join(lines)


def blend_deltas(change: BlendChange) -> list[str]:
    """How a blend changed, in words: identical, χ² per pixel, largest Δ|mag error|."""
    if change.identical:
        return ["identical"]
    parts = []
    base, head = change.chi2_dof
    if base is not None and head is not None:
        parts.append(f"χ²/pixel {base:.3g} → {head:.3g}")
    if change.mag_error_delta is not None:
        parts.append(f"largest Δ|mag error| {change.mag_error_delta:+.3f} mag")
    return parts


def caption(change: BlendChange) -> str:
    """The plain caption of a blend's residual comparison: set/id and its deltas."""
    return " · ".join([f"{change.dataset}/{change.id}", *blend_deltas(change)])


def _caption(change: BlendChange) -> str:
    return " · ".join([f"**{change.id}** ({change.dataset})", *blend_deltas(change)])


def _image(change, links: Links) -> str | None:
    url = links.images.get((change.dataset, change.id))
    if url is None:
        return None
    return f"{_caption(change)}\n\n![residuals of {change.id}]({url})"


def failures_section(result: RunResult) -> str:
    """What broke, once per distinct error, each in its own details: a build's error and
    its log's tail, a deblender's error with the blends it hit and one traceback."""
    failures = _comparison(result).failures
    if not failures:
        return ""
    errored = sum(f.blends for f in failures if f.stage == "deblend")
    parts = []
    for failure in failures:
        if failure.stage == "build":
            what = "the build log's last lines"
        else:
            shown = ", ".join(code(e, 80) for e in failure.examples)
            more = " …" if failure.blends > len(failure.examples) else ""
            what = f"e.g. {shown}{more}; the last lines of one traceback"
        detail = code_block(failure.detail) if failure.detail else "(no output)"
        parts.append(
            f"<details><summary>{failure_line(failure)}</summary>\n\n{what}:\n\n"
            f"{detail}\n\n</details>"
        )
    if errored:
        parts.insert(0, f"{errored} errored deblend(s), by kind:")
    return "\n\n".join(parts)


def utf8_size(text: str) -> int:
    """The size GitHub's check-run limits count: UTF-8 bytes."""
    return len(text.encode())


def _fit(parts: list[str], limit: int, tail: str, size=len) -> str:
    """Join ``parts`` (most important first) and ``tail``; drop parts from the end until
    the ``size`` of the whole is within ``limit``."""
    kept = list(parts)
    while kept:
        text = "\n\n".join([*kept, tail])
        if size(text) <= limit:
            return text
        kept.pop()
    return tail[:limit]


def _reasons(comparison: Comparison) -> str:
    return "\n".join(f"- {reason}" for reason in _rendered_reasons(comparison))


def _why(change: BlendChange) -> str:
    """Why a blend is clearly worse; a mixed blend's better side too."""
    why = "; ".join(change.worse[:4])
    return f"{why} — but {'; '.join(change.better[:2])}" if change.mixed else why


def worse_list(comparison: Comparison, limit: int = WORSE_LISTED) -> str:
    """The blends clearly worse beyond tolerance, then the mixed ones (clearly worse in
    one respect, clearly better in another), each with why; empty when none."""
    parts = []
    for mixed, title in (
        (False, "clearly worse"),
        (True, "mixed (one respect better, another worse)"),
    ):
        found = [c for c in comparison.blends if c.worse and c.mixed == mixed]
        if not found:
            continue
        rows = [f"- `{c.dataset}/{c.id}`: {_why(c)}" for c in found[:limit]]
        if len(found) > limit:
            rows.append(f"- … and {len(found) - limit} more (see the full report)")
        parts.append(f"### {len(found)} blend(s) {title}\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


def _identical_line(comparison: Comparison) -> str:
    same = sum(c.identical for c in comparison.blends)
    if not same or comparison.identical_models:
        return ""
    return f"{same} blend(s) identical to base's in everything measured: no figure."


def comment(result: RunResult, links: Links) -> str:
    """The PR comment: marker and verdict, what changed, the verdict's reasons, the metric
    table, the worse blends, residual images, notes."""
    comparison = _comparison(result)
    icon = VERDICT_ICONS[comparison.verdict]
    title = f"{MARKER}\n## {icon} scarlet regression: {comparison.verdict}"
    opening = f"**{what_changed(result)}**"
    if comparison.reasons:
        opening += "\n\n" + _reasons(comparison)
    link_line = _links_line(links)
    intro = _provenance_line(result) + (f"\n\n{link_line}" if link_line else "")
    rows = metric_rows(comparison)
    changed = [m for m in rows if m.status != "unchanged"]
    unchanged = [m for m in rows if m.status == "unchanged"]
    parts = [title, opening]
    notice = tool_notice(comparison)
    if notice:
        parts.append(notice)
    parts.append(intro)
    errors = failures_section(result)
    if errors:
        parts.append(errors)
    if result.provenance.drift is not None:
        parts.append("### Versions that differ from the lock\n\n" + package_table(result))
    if changed:
        parts.append(
            metric_table(changed, level(comparison)) + f"\n\n<sub>{delta_note(comparison)}</sub>"
        )
    elif result.blends:
        parts.append("No metric changed beyond its tolerance.")
    worse = worse_list(comparison)
    if worse:
        parts.append(worse)
    if unchanged and result.blends:
        parts.append(
            f"<details><summary>{len(unchanged)} unchanged metric(s)</summary>\n\n"
            + metric_table(unchanged, level(comparison))
            + "\n\n</details>"
        )
    images = [i for i in (_image(c, links) for c in comparison.blends) if i]
    if images:
        parts.append(
            "### Residuals, most changed first\n"
            "observed · base · head · base residual · head residual · head − base\n\n"
            + "\n\n".join(images[:INLINE_IMAGES])
        )
    if len(images) > INLINE_IMAGES:
        more = images[INLINE_IMAGES:DETAIL_IMAGES]
        parts.append(
            f"<details><summary>{len(more)} more residual comparison(s)</summary>\n\n"
            + "\n\n".join(more)
            + "\n\n</details>"
        )
    identical = _identical_line(comparison)
    if identical:
        parts.append(identical)
    extra = notes(result)
    if extra:
        parts.append("\n".join(f"- {line}" for line in extra))
    tail = f"<sub>scarlet-regression {result.provenance.runner_version}</sub>"
    return _fit(parts, COMMENT_LIMIT, tail)


@dataclass(frozen=True)
class CheckRunOutput:
    """The ``output`` of a check run."""

    title: str
    summary: str
    text: str


def check_run_output(result: RunResult, links: Links) -> CheckRunOutput:
    """Title, summary and text of the check run, each within GitHub's limits (which
    count UTF-8 bytes)."""
    comparison = _comparison(result)
    title = headline(result)
    link_line = _links_line(links)
    summary_parts = [what_changed(result), _provenance_line(result)]
    notice = tool_notice(comparison)
    if notice:
        summary_parts.insert(1, notice)
    if link_line:
        summary_parts[-1] += f"\n\n{link_line}"
    if result.provenance.drift is not None:
        summary_parts.append(package_table(result))
    summary_parts.append(
        metric_table(metric_rows(comparison), level(comparison)) + f"\n\n{delta_note(comparison)}"
    )
    worse = worse_list(comparison)
    if worse:
        summary_parts.append(worse)
    extra = notes(result)
    if extra:
        summary_parts.append("\n".join(f"- {line}" for line in extra))
    pointer = f"Full report: {links.report}" if links.report else "See the run result."
    summary = _fit(summary_parts, CHECK_LIMIT, pointer, utf8_size)
    blend_lines = [
        f"| {c.dataset} | {c.id} | {'yes' if c.identical else 'no'} | "
        f"{' → '.join(_number(v) for v in c.chi2_dof)} | {_number(c.mag_error_delta, sign=True)} | "
        f"{'worse' if c.worse else 'better' if c.better else '–'} |"
        for c in comparison.blends
    ]
    text_parts = []
    errors = failures_section(result)
    if errors:
        text_parts.append(errors)
    if blend_lines:
        text_parts.append(
            "| set | blend | identical | χ²/pixel base → head | largest Δ\\|mag error\\| |"
            " beyond tolerance |\n|---|---|---|---:|---:|---|\n" + "\n".join(blend_lines)
        )
    text = _fit(text_parts, CHECK_LIMIT, pointer, utf8_size)
    return CheckRunOutput(title, summary, text)


def _cell(value: object) -> str:
    return f"<td>{html.escape(str(value))}</td>"


def _code_cell(text: str | None, limit: int = 300) -> str:
    return f"<td>{html_code(text, limit)}</td>" if text else "<td></td>"


def _blend_row(blend: BlendResult, change) -> str:
    cells = [blend.dataset, blend.id, blend.n_sources, blend.base.status, blend.head.status]
    cells += [_number(blend.base.chi2_dof), _number(blend.head.chi2_dof)]
    cells += [_number(change.mag_error_delta, sign=True) if change else "–"]
    cells += ["; ".join(change.worse or change.better) if change else ""]
    error = blend.head.error or blend.base.error
    return "<tr>" + "".join(_cell(c) for c in cells) + _code_cell(error) + "</tr>"


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1f2328; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #d0d7de; padding: 3px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } img { max-width: 100%; }
.pass { color: #1a7f37; } .fail { color: #cf222e; } .neutral { color: #9a6700; }
code { background: #f6f8fa; padding: 1px 4px; }
.note { color: #59636e; font-size: 12px; }
"""


def failures_html(result: RunResult) -> str:
    """What broke, once per distinct error, for the HTML page: the error, the blends it
    hit, and the build log's tail or one traceback."""
    failures = _comparison(result).failures
    if not failures:
        return ""
    esc = html.escape
    items = []
    for failure in failures:
        title = failure_line(failure).replace("`", "")
        examples = ", ".join(failure.examples)
        hit = f"<p>e.g. {esc(examples)}</p>" if examples else ""
        items.append(
            f"<details open><summary>{esc(title)}</summary>{hit}"
            f"<pre><code>{esc(failure.detail or '(no output)')}</code></pre></details>"
        )
    return "<h2>What broke</h2>" + "".join(items)


def html_report(result: RunResult, links: Links) -> str:
    """A standalone HTML page with every comparison, every blend and every image."""
    comparison = _comparison(result)
    esc = html.escape
    rows = "".join(
        "<tr>" + "".join(_cell(v) for v in metric_cells(m, raw_p=True)) + "</tr>"
        for m in metric_rows(comparison)
    )
    changes = {(c.dataset, c.id): c for c in comparison.blends}
    blends = "".join(_blend_row(b, changes.get((b.dataset, b.id))) for b in result.blends)
    figures = "".join(
        # The image carries its caption; the alternative text repeats it for screen readers.
        f'<figure><img src="{esc(links.images[(c.dataset, c.id)])}" alt="residuals: '
        f'{esc(caption(c))}"></figure>'
        for c in comparison.blends
        if (c.dataset, c.id) in links.images
    )
    p = result.provenance

    def revision(info) -> str:
        return html_line(
            lambda span: (
                f"{span(info.rev, 120)} {span(info.sha)}"
                f" ({span(info.deblender_version or '–', VERSION_LIMIT)})"
            )
        )

    drifted = [
        html_line(
            lambda span, c=c: (
                f"{span(c.name, 60)} {span(c.locked or '–', VERSION_LIMIT)}"
                f" → {span(c.newest or '–', VERSION_LIMIT)}"
            )
        )
        for c in (p.drift.packages if p.drift is not None else [])
    ]
    versions = html_line(
        lambda span: (
            f"{span(p.head.numpy_version or '–', VERSION_LIMIT)}"
            f" / {span(p.head.python_version or '–', VERSION_LIMIT)}"
        )
    )
    provenance = "".join(
        f"<tr><th>{esc(k)}</th><td>{v}</td></tr>"
        for k, v in (
            ("repository", esc(p.repository)),
            ("head", revision(p.head)),
            ("base", revision(p.base)),
            ("merge-base", esc(p.merge_base or "–")),
            ("adapter", esc(p.adapter)),
            ("numpy / Python", versions),
            ("lock", esc(p.lock)),
            *([("newer than the lock", ", ".join(drifted) or "nothing")] if p.drift else []),
            ("datasets", esc(", ".join(f"{d.name} {d.content_hash[:12]}" for d in p.datasets))),
            *((esc(f"isolation: {stage}"), esc(way)) for stage, way in p.isolation.items()),
            ("trusted ref", esc(p.trusted_ref or "– (writes no shared cache)")),
            ("started / finished", esc(f"{p.started} / {p.finished}")),
        )
    )
    title = f"scarlet regression: {comparison.verdict}"
    links_html = " · ".join(
        f'<a href="{esc(url)}">{name}</a>'
        for name, url in (("Trends", links.trends), ("Latest report", links.latest))
        if url
    )
    paragraphs = [
        f"<p><strong>{esc(what_changed(result))}</strong></p>",
        "<ul>"
        + "".join(f"<li>{esc(r.replace('`', ''))}</li>" for r in _rendered_reasons(comparison))
        + "</ul>"
        if comparison.reasons
        else "",
        f"<p>{html_line(lambda span: _provenance_line(result, span))}</p>",
        f"<p>{links_html}</p>" if links_html else "",
    ]
    worse_html = ""
    for mixed, heading in ((False, "clearly worse"), (True, "mixed")):
        found = [c for c in comparison.blends if c.worse and c.mixed == mixed]
        if found:
            worse_html += (
                f"<h2>{len(found)} blend(s) {heading}</h2><ul>"
                + "".join(
                    f"<li><code>{esc(c.dataset)}/{esc(c.id)}</code>: {esc(_why(c))}</li>"
                    for c in found
                )
                + "</ul>"
            )
    notes_html = "".join(f"<p>{line}</p>" for line in html_lines(lambda span: notes(result, span)))
    identical = _identical_line(comparison)
    if identical:
        figures += f"<p>{esc(identical)}</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>{esc(title)}</title>
<style>{STYLE}</style></head><body>
<h1 class="{comparison.verdict}">{VERDICT_ICONS[comparison.verdict]} {esc(title)}</h1>
{"".join(paragraphs)}
<h2>Metrics</h2>
<table><tr><th>metric</th><th>Δ [{level(comparison)} CI]</th><th>tolerance</th><th>status</th>
<th>detectable</th><th>p</th><th>p (adj.)</th><th>base's own median</th>
<th>head's own median</th></tr>{rows}</table>
<p class="note">{esc(delta_note(comparison))}</p>
{failures_html(result)}{worse_html}{notes_html}
<h2>Residuals, most changed first</h2>
<p>observed · base model · head model · base residual · head residual · head − base</p>
{figures or "<p>No residual comparisons.</p>"}
<h2>Blends</h2>
<table><tr><th>set</th><th>blend</th><th>sources</th><th>base</th><th>head</th>
<th>χ²/pixel base</th><th>χ²/pixel head</th><th>largest Δ|mag error|</th><th>beyond tolerance</th>
<th>error</th></tr>{blends}</table>
<h2>Provenance</h2><table>{provenance}</table>
</body></html>
"""
