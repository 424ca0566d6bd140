"""Render a compared run result: the PR comment, the check run's output, an HTML page.

Pure functions from a ``RunResult`` (with its ``comparison``) and the addresses of its
artifacts to text. No numpy, no I/O, no GitHub calls: the bot and the runner's
``--report`` both use them. Everything fits GitHub's limits however large the input:
past them, the least important parts go first, then a pointer to the full report.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from runner.result import BlendChange, BlendResult, Comparison, MetricComparison, RunResult

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
    " both measured, in the unit the metric names; × rows: the median head/base ratio,"
    " timed in the same job; tail rows: head's percentile minus base's. mag error = truth"
    " − model magnitude. Detectable: the smallest change this run could have detected"
    " (95 % level, 80 % power)."
)


@dataclass(frozen=True)
class Links:
    """Where the full report, the trends and the residual images of a run live."""

    report: str | None = None
    trends: str | None = None
    latest: str | None = None
    images: dict[tuple[str, str], str] = field(default_factory=dict)


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


RATIO_METRICS = ("init_time", "runtime_per_source", "iterations")


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
    """One line: verdict and reasons."""
    comparison = _comparison(result)
    reasons = "; ".join(comparison.reasons)
    return f"{comparison.verdict}" + (f": {reasons}" if reasons else "")


def what_changed(result: RunResult) -> str:
    """What changed, blend by blend: "N of M blends changed; K worse beyond tolerance;
    worst: set/id (why)", or that everything measured is identical."""
    comparison = _comparison(result)
    tally = comparison.tally
    skipped = result.provenance.skipped
    if skipped is not None:
        shown = f" on {tally.blends} blends" if tally.blends else ""
        if skipped.reason == "identical build":
            return (
                "Head's build installs exactly base's files (version files aside): its"
                f" results are base's{shown}, so nothing was deblended."
            )
        outcome = f"its results are base's{shown}" if tally.blends else "nothing was deblended"
        return (
            "This PR does not change the installed scarlet: no file it changes goes into"
            f" the package. Head was not built and {outcome}."
        )
    if comparison.identical_models:
        return (
            f"All {tally.blends} blends are bit-identical to base's in everything measured"
            " (models, fluxes, centroids, iterations, logL): the science is unchanged."
        )
    parts = [
        f"{tally.changed} of {tally.blends} blends changed",
        f"{tally.worse} worse beyond tolerance",
    ]
    if tally.better:
        parts.append(f"{tally.better} better")
    changed = [c for c in comparison.blends if not c.identical]
    if changed:
        top = changed[0]
        why = top.worse or top.better or blend_deltas(top)
        word = "worst" if top.worse else "most changed"
        parts.append(f"{word}: {top.dataset}/{top.id} ({'; '.join(why[:3])})")
    return "; ".join(parts) + "."


def notes(result: RunResult) -> list[str]:
    """What a reader should know beside the metrics: the policy and what the head's config
    would change, what was excluded, fits that stopped at their iteration cap."""
    comparison = _comparison(result)
    policy = comparison.policy
    lines = []
    if policy.source in ("base", "head"):
        sha = f" at `{policy.sha[:10]}`" if policy.sha else ""
        lines.append(f"Judged by the {policy.source}'s `{CONFIG_FILE}`{sha} (or its defaults).")
        other = "head" if policy.source == "base" else "base"
        if policy.differences:
            changes = "; ".join(f"`{d}`" for d in policy.differences)
            lines.append(f"The {other}'s config differs and was not used: {changes}.")
        if policy.note:
            lines.append(f"The {other}'s config could not be read: {policy.note}")
    elif policy.source == "file":
        lines.append(f"Judged by the config file {policy.note or ''} given to `compare`.")
    if comparison.excluded:
        shown = ", ".join(f"`{e}`" for e in comparison.excluded[:20])
        more = f" and {len(comparison.excluded) - 20} more" if len(comparison.excluded) > 20 else ""
        lines.append(
            f"Excluded from the statistics (errored or unmeasured on both sides): {shown}{more}."
        )
    lines += requirement_notes(result) + native_note(comparison)
    lines += reuse_notes(result)
    capped = {side: n for side, n in comparison.unconverged.items() if n}
    if capped:
        counts = ", ".join(f"{n} {side}" for side, n in capped.items())
        lines.append(f"Fits that stopped at their iteration cap (not converged): {counts}.")
    return lines


def tool_notice(comparison: Comparison) -> str:
    """The loud block of a tool failure (the adapter, not the PR, failed): its headline
    and the traceback's last frames; empty when there is none."""
    failure = comparison.tool_failure
    if failure is None:
        return ""
    block = (
        f"> [!CAUTION]\n> **Tool failure, not this pull request's regression:**"
        f" {failure.headline} ({failure.blends} blend(s)). The verdict is neutral until the"
        f" adapter is mended."
    )
    if failure.traceback:
        block += f"\n\n```\n{failure.traceback[-3000:]}\n```"
    return block


def requirement_notes(result: RunResult) -> list[str]:
    """The requirements each revision declares that its locked environment does not meet."""
    lines = []
    for side in ("base", "head"):
        conflicts = getattr(result.provenance, side).build.conflicts
        if conflicts:
            shown = "; ".join(f"`{c}`" for c in conflicts)
            lines.append(f"The lock does not meet {side}'s declared requirements: {shown}.")
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


def reuse_notes(result: RunResult) -> list[str]:
    """What was reused from earlier runs, how it was checked, what the timings rest on."""
    reuse = result.provenance.reuse
    if reuse is None:
        return []
    lines = []
    if reuse.mismatched:
        shown = ", ".join(f"`{m}`" for m in reuse.mismatched[:10])
        where = " in their shard" if reuse.blends else ""
        lines.append(
            f"Base's stored outcomes did not match a fresh deblend of {shown}: base was"
            f" deblended afresh{where} and those stored outcomes were not used."
        )
    if reuse.blends:
        more = f" and {len(reuse.runs) - 3} more" if len(reuse.runs) > 3 else ""
        timed = sum(b.timed_in_run for b in result.blends)
        lines += [
            f"Base's outcomes on {reuse.blends} blends were read from the store (measured by"
            f" {'; '.join(reuse.runs[:3])}{more});"
            f" {len(reuse.checked) - len(reuse.mismatched)} blends deblended afresh matched"
            " them bit for bit.",
            f"Timings rest on the {timed} blends deblended by both sides in this run.",
        ]
    return lines


def _comparison(result: RunResult) -> Comparison:
    if result.comparison is None:
        raise ValueError("the run result has no comparison: run `python -m runner compare`")
    return result.comparison


def _provenance_line(result: RunResult) -> str:
    p = result.provenance
    merge = " (merge-base)" if p.merge_base else ""
    sets = ", ".join(f"{d.name} ({d.blends})" for d in p.datasets)
    version = p.head.deblender_version or p.head.build.status
    if p.head.build.status == "skipped":
        version = f"{p.base.deblender_version} (base's; head not built)"
    errored = sum(b.head.status == "errored" or b.base.status == "errored" for b in result.blends)
    revisions = f"head `{p.head.sha[:10]}` vs base `{p.base.sha[:10]}`{merge}"
    if p.drift is not None:
        revisions = (
            f"`{p.drift.rev}` at `{p.drift.sha[:10]}`: newest allowed releases (head)"
            " vs the lock (base)"
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
    rows = [f"| `{p.name}` | {p.locked or '–'} | {p.newest or '–'} |" for p in drift.packages]
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
    names = ", ".join(p.name for p in drift.packages) or "no package"
    title = f"Newer releases of dependencies break the deblender ({names})"
    if comparison.tool_failure is not None:
        title = comparison.tool_failure.headline[:1].upper() + comparison.tool_failure.headline[1:]
    if len(title) > TITLE_LIMIT:
        title = title[: TITLE_LIMIT - 1] + "…"
    changed = [m for m in metric_rows(comparison) if m.status != "unchanged"]
    link_line = _links_line(links)
    parts = [
        f"{DRIFT_MARKER}\n## {VERDICT_ICONS['fail']} Dependency drift: {headline(result)}",
        "No pull request changed this: the same revision deblends differently with the newest"
        " releases its requirements allow than with the lock.\n\n"
        + _provenance_line(result)
        + (f"\n\n{link_line}" if link_line else ""),
        "### Versions that differ from the lock\n\n" + package_table(result),
        metric_table(changed) if changed else "No metric changed beyond its tolerance.",
    ]
    notice = tool_notice(comparison)
    if notice:
        parts.insert(1, notice)
    errors = _errors(result)
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


def metric_cells(metric: MetricComparison, raw_p: bool = False) -> list[str]:
    """A metric's row as text: label, base, head, Δ, interval, tolerance, detectable
    change, (the raw p,) the adjusted p and the status."""
    return [
        label(metric),
        format_value(metric, metric.base),
        format_value(metric, metric.head),
        format_delta(metric),
        format_ci(metric),
        format_tolerance(metric),
        format_mde(metric),
        *([_p(metric.p)] if raw_p else []),
        _p(metric.p_adjusted),
        f"{STATUS_ICONS[metric.status]} {metric.status}",
    ]


def _metric_row(metric: MetricComparison) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in metric_cells(metric)) + " |"


TABLE_HEAD = (
    "| metric | base | head | Δ | 95% CI | tolerance | detectable | p (adj.) | status |\n"
    "|---|---:|---:|---:|---|---:|---:|---:|---|"
)


def metric_table(metrics: list[MetricComparison], budget: int = 20_000) -> str:
    """A Markdown table of metrics, cut short (with a note) past ``budget`` characters."""
    lines, size = [TABLE_HEAD], len(TABLE_HEAD)
    for index, metric in enumerate(metrics):
        row = _metric_row(metric)
        if size + len(row) + 1 > budget:
            lines.append(f"| … {len(metrics) - index} more in the full report |" + " |" * 8)
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


def _errors(result: RunResult, limit: int = 50) -> str:
    rows = []
    for blend in result.blends:
        for side in ("base", "head"):
            run = getattr(blend, side)
            if run.status == "errored":
                reason = (run.error or "").splitlines()[0][:200] if run.error else ""
                rows.append(f"- `{blend.dataset}/{blend.id}` {side}: {reason}")
    if not rows:
        return ""
    shown = rows[:limit]
    if len(rows) > limit:
        shown.append(f"- … and {len(rows) - limit} more (see the full report)")
    summary = f"<details><summary>{len(rows)} errored deblend(s)</summary>"
    return summary + "\n\n" + "\n".join(shown) + "\n\n</details>"


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
    return "\n".join(f"- {reason}" for reason in comparison.reasons)


def worse_list(comparison: Comparison, limit: int = WORSE_LISTED) -> str:
    """The blends clearly worse beyond tolerance, each with why; empty when none."""
    worse = [c for c in comparison.blends if c.worse]
    if not worse:
        return ""
    rows = [f"- `{c.dataset}/{c.id}`: {'; '.join(c.worse[:4])}" for c in worse[:limit]]
    if len(worse) > limit:
        rows.append(f"- … and {len(worse) - limit} more (see the full report)")
    return f"### {len(worse)} blend(s) clearly worse\n\n" + "\n".join(rows)


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
    if result.provenance.drift is not None:
        parts.append("### Versions that differ from the lock\n\n" + package_table(result))
    if changed:
        parts.append(metric_table(changed) + f"\n\n<sub>{DELTA_NOTE}</sub>")
    elif result.blends:
        parts.append("No metric changed beyond its tolerance.")
    worse = worse_list(comparison)
    if worse:
        parts.append(worse)
    if unchanged and result.blends:
        parts.append(
            f"<details><summary>{len(unchanged)} unchanged metric(s)</summary>\n\n"
            + metric_table(unchanged)
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
    errors = _errors(result)
    if errors:
        parts.append(errors)
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
    if len(title) > TITLE_LIMIT:
        title = title[: TITLE_LIMIT - 1] + "…"
    link_line = _links_line(links)
    summary_parts = [what_changed(result), _provenance_line(result)]
    notice = tool_notice(comparison)
    if notice:
        summary_parts.insert(1, notice)
    if link_line:
        summary_parts[-1] += f"\n\n{link_line}"
    if result.provenance.drift is not None:
        summary_parts.append(package_table(result))
    summary_parts.append(metric_table(metric_rows(comparison)) + f"\n\n{DELTA_NOTE}")
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
    errors = _errors(result)
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


def _blend_row(blend: BlendResult, change) -> str:
    cells = [blend.dataset, blend.id, blend.n_sources, blend.base.status, blend.head.status]
    cells += [_number(blend.base.chi2_dof), _number(blend.head.chi2_dof)]
    cells += [_number(change.mag_error_delta, sign=True) if change else "–"]
    cells += ["; ".join(change.worse or change.better) if change else ""]
    error = blend.head.error or blend.base.error or ""
    return "<tr>" + "".join(_cell(c) for c in [*cells, error[:300]]) + "</tr>"


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
    provenance = "".join(
        f"<tr><th>{esc(k)}</th>{_cell(v)}</tr>"
        for k, v in (
            ("repository", p.repository),
            ("head", f"{p.head.rev} {p.head.sha} ({p.head.deblender_version})"),
            ("base", f"{p.base.rev} {p.base.sha} ({p.base.deblender_version})"),
            ("merge-base", p.merge_base or "–"),
            ("adapter", p.adapter),
            ("numpy / Python", f"{p.head.numpy_version} / {p.head.python_version}"),
            ("lock", p.lock),
            *(
                [
                    (
                        "newer than the lock",
                        ", ".join(
                            f"{c.name} {c.locked or '–'} → {c.newest or '–'}"
                            for c in p.drift.packages
                        )
                        or "nothing",
                    )
                ]
                if p.drift is not None
                else []
            ),
            ("datasets", ", ".join(f"{d.name} {d.content_hash[:12]}" for d in p.datasets)),
            ("started / finished", f"{p.started} / {p.finished}"),
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
        "<ul>" + "".join(f"<li>{esc(r)}</li>" for r in comparison.reasons) + "</ul>"
        if comparison.reasons
        else "",
        f"<p>{esc(_provenance_line(result).replace('`', ''))}</p>",
        f"<p>{links_html}</p>" if links_html else "",
    ]
    worse = [c for c in comparison.blends if c.worse]
    worse_html = (
        f"<h2>{len(worse)} blend(s) clearly worse</h2><ul>"
        + "".join(
            f"<li><code>{esc(c.dataset)}/{esc(c.id)}</code>: {esc('; '.join(c.worse))}</li>"
            for c in worse
        )
        + "</ul>"
        if worse
        else ""
    )
    notes_html = "".join(f"<p>{esc(line.replace('`', ''))}</p>" for line in notes(result))
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
<table><tr><th>metric</th><th>base</th><th>head</th><th>Δ</th><th>95% CI</th><th>tolerance</th>
<th>detectable</th><th>p</th><th>p (adj.)</th><th>status</th></tr>{rows}</table>
<p class="note">{esc(DELTA_NOTE)}</p>
{worse_html}{notes_html}
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
