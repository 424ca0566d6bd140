"""The verdict's rules on paired results whose answers are known (issue 26): a metric
regressed only when its whole interval lies beyond tolerance, inconclusive metrics
judged by whether the run can resolve them, measurement-only changes named, mixed
blends and undetected bands, fixes credited, a broken base compared with its nearest
good ancestor, one-side failures said once with their error."""

from __future__ import annotations

import copy
import math

import numpy as np

from runner.judge.compare import compare
from runner.judge.failures import build_error
from runner.judge.policy import CompareConfig
from runner.publish.report import Links, comment, html_report, what_changed
from runner.result import Ancestor, BlendRun, Build
from support import synthetic_result

R = 1


def by_name(comparison):
    return {m.name: m for m in comparison.metrics}


def compared(result):
    result.comparison = compare(result, CompareConfig())
    return result


def moved(result, shifts):
    """Head's r magnitude errors moved source by source by ``shifts`` (its models changed)."""
    sources = [s for b in result.blends for s in b.head.injected]
    for source, shift in zip(sources, shifts, strict=False):
        source.mag_error[R] += shift
        source.mag[R] -= shift
    for blend in result.blends:
        blend.head.model_hash = "f" * 64
    return result


def test_a_change_is_a_regression_only_where_its_whole_interval_lies_beyond_tolerance():
    # 405434a → d1bda26: Δ beyond the tolerance, its interval reaching well inside it.
    result = synthetic_result(blends=40, sources=3, error=(0.03, 0.02))
    moved(result, np.random.default_rng(1).normal(0.0065, 0.02, 120))
    comparison = compare(result, CompareConfig())
    r = by_name(comparison)["mag_error_r"]
    assert r.delta > r.tolerance and r.ci[0] < r.tolerance < r.ci[1]
    assert r.p_adjusted < 0.05  # significant, yet not clearly beyond tolerance
    assert r.status == "inconclusive" and comparison.verdict != "fail"
    clear = synthetic_result(blends=40, sources=3, error=(0.03, 0.02))
    moved(clear, np.random.default_rng(1).normal(0.02, 0.004, 120))
    comparison = compare(clear, CompareConfig())
    r = by_name(comparison)["mag_error_r"]
    assert r.ci[0] > r.tolerance and r.status == "regressed"
    assert comparison.verdict == "fail"


def test_an_inconclusive_metric_likely_worse_is_neutral_one_within_tolerance_only_reported():
    # Base's r errors lean positive: a positive Δ moves them away from zero.
    likely = synthetic_result(blends=40, sources=3, error=(0.03, 0.02))
    moved(likely, np.random.default_rng(2).normal(0.0075, 0.03, 120))
    comparison = compare(likely, CompareConfig())
    r = by_name(comparison)["mag_error_r"]
    assert r.status == "inconclusive" and r.ci[0] < r.tolerance < r.delta and r.gating
    assert comparison.verdict == "neutral" and "inconclusive: mag error r" in comparison.reasons
    within = synthetic_result(blends=40, sources=3, error=(0.03, 0.02))
    moved(within, np.random.default_rng(2).normal(0.002, 0.03, 120))
    comparison = compare(within, CompareConfig())
    r = by_name(comparison)["mag_error_r"]
    assert r.status == "inconclusive" and r.delta < r.tolerance < r.ci[1] and not r.gating
    assert "within the tolerance" in r.note
    assert comparison.verdict == "pass"


def test_a_measurement_only_rescaling_towards_base_s_bias_is_named_and_never_passes():
    result = synthetic_result(blends=35, sources=3)
    for blend in result.blends:  # every r flux ×1.02: magnitudes 0.0215 brighter
        for source in blend.head.injected:
            source.mag[R] -= 2.5 * math.log10(1.02)
            source.mag_error[R] += 2.5 * math.log10(1.02)
    comparison = compare(result, CompareConfig())
    assert comparison.models_bit_identical and not comparison.identical_models
    assert comparison.measurement_change == "r fluxes ×1.020 on all 105 sources"
    assert comparison.verdict != "pass"
    assert (
        "models bit-identical; measurement changed: r fluxes ×1.020 on all 105 sources"
        in comparison.reasons
    )
    result.comparison = comparison
    assert "measurement changed: r fluxes ×1.020 on all 105 sources" in what_changed(result)


def test_a_blend_better_in_one_band_and_worse_in_another_is_mixed_not_worse():
    result = synthetic_result(blends=20, sources=1)
    for blend in result.blends[:6]:
        base, head = blend.base.injected[0], blend.head.injected[0]
        base.mag_error[1], head.mag_error[1] = 0.05, 0.35  # r: clearly worse
        base.mag_error[2], head.mag_error[2] = 0.25, 0.01  # i: clearly better
        blend.head.model_hash = "e" * 64
    comparison = compare(result, CompareConfig())
    mixed = [c for c in comparison.blends if c.mixed]
    assert len(mixed) == 6 and all(c.worse and c.better for c in mixed)
    assert comparison.tally.mixed == 6 and comparison.tally.worse == 0
    assert comparison.tally.status != "regressed"
    result.comparison = comparison
    assert "6 mixed (one band better, another worse)" in what_changed(result)
    text = comment(result, Links())
    assert "### 6 blend(s) mixed" in text and "clearly worse\n" not in text
    assert "r: |mag error| +0.300 mag — but source 0 i: |mag error| -0.240 mag" in text


def test_a_band_where_the_source_is_undetected_does_not_count_blend_by_blend():
    result = synthetic_result(blends=20, sources=1)
    for blend in result.blends:
        for side in (blend.base, blend.head):
            side.injected[0].snr = [2.0, 40.0, 60.0, 50.0, 20.0]  # g undetected
    for blend in result.blends[:5]:
        blend.head.injected[0].mag_error[0] += 0.4  # g ≈ 29 mag: noise
        blend.head.model_hash = "e" * 64
    comparison = compare(result, CompareConfig())
    assert comparison.tally.worse == 0
    detected = copy.deepcopy(result)
    for blend in detected.blends:
        for side in (blend.base, blend.head):
            side.injected[0].snr[0] = 8.0
    assert compare(detected, CompareConfig()).tally.worse == 5


def errored(kind="ValueError", where="Box.contains"):
    return BlendRun(
        status="errored",
        error=f"{kind}: box (1, 2) has no centre",
        traceback=(
            "Traceback (most recent call last):\n"
            '  File "scarlet/bbox.py", line 71, in contains\n'
            f"{kind}: box (1, 2) has no centre"
        ),
        raised_in=where,
    )


def test_blends_that_errored_on_base_and_deblend_on_head_are_fixed_and_credited():
    result = synthetic_result(blends=20, sources=1)
    for blend in result.blends[:4]:
        blend.base = errored()
    comparison = compare(result, CompareConfig())
    assert comparison.fixed == [f"set/b{i}" for i in range(4)]
    assert comparison.verdict == "pass"
    assert any(
        r.startswith("fixed: 4 of 20 blends that errored on base") for r in comparison.reasons
    )


def test_a_base_that_errors_on_every_blend_says_fixed_not_zero_of_zero():
    # 85928d6 → 06d63fe with no stored run of an ancestor to compare with.
    result = synthetic_result(blends=10, sources=1)
    for blend in result.blends:
        blend.base = errored()
    compared(result)
    comparison = result.comparison
    assert comparison.verdict == "neutral" and len(comparison.fixed) == 10
    text = what_changed(result)
    assert "0 of 0" not in text
    assert "Base errors on 10 of 10 blends: `ValueError in Box.contains`." in text
    assert "Fixed: 10 of 10 blends that errored on base deblend on head." in text
    page = comment(result, Links())
    assert page.count("scarlet/bbox.py") == 1, "one traceback, not one per blend"


def with_ancestor(result, head_shift=0.0):
    """Base's outcomes gone (it errors), the ancestor's (base's old ones) beside them."""
    for blend in result.blends:
        blend.ancestor = copy.deepcopy(blend.base)
        blend.ancestor.reused_from = "the run of aaaa against bbbb"
        blend.base = errored()
        for source in blend.head.injected:
            source.mag_error[R] += head_shift
        if head_shift:
            blend.head.model_hash = "f" * 64
    result.provenance.ancestor = Ancestor("c" * 40, "base errors on 40 blends", 3, "k", ["r"])
    return result


def test_a_base_that_errors_is_compared_with_its_nearest_good_ancestor():
    result = compared(with_ancestor(synthetic_result()))
    comparison = result.comparison
    assert comparison.ancestor.sha == "c" * 40 and comparison.ancestor.verdict == "pass"
    assert comparison.verdict == "pass"
    assert any("nearest good ancestor cccccccccccc: pass" in r for r in comparison.reasons)
    assert "Against base's nearest good ancestor `cccccccccc` (3 commits back" in what_changed(
        result
    )
    worse = compare(with_ancestor(synthetic_result(), head_shift=0.05), CompareConfig())
    assert worse.ancestor.verdict == "fail" and worse.verdict == "fail"


def test_a_base_that_does_not_build_is_judged_against_its_ancestor_when_one_is_stored():
    result = with_ancestor(synthetic_result())
    result.provenance.base.build = Build("failed", error="'uv pip install' exited 1")
    comparison = compare(result, CompareConfig())
    assert comparison.verdict == "pass"
    assert comparison.reasons[0] == "base does not build: 'uv pip install' exited 1"
    assert "nearest good ancestor" in comparison.reasons[1]
    alone = synthetic_result()
    alone.provenance.base.build = Build("failed", error="boom")
    assert compare(alone, CompareConfig()).verdict == "neutral"


BUILD_LOG = """\
  cause: Call to `setuptools.build_meta:__legacy__.prepare_metadata_for_build_wheel` failed

         [stderr]
         Traceback (most recent call last):
           File "<string>", line 10, in <module>
           File "/cache/envs/577b2c88/.source/version.py", line 27
             "This should never happen unless your version of git is out of date." + "
                                                                                     ^
         SyntaxError: unterminated string literal (detected at line 27)"""


def test_a_head_that_does_not_build_says_why_in_the_headline_details_and_page():
    result = synthetic_result()
    result.blends = []
    result.provenance.head.build = Build(
        "failed", error="'uv pip install' exited 1", log_tail=BUILD_LOG
    )
    assert build_error(result.provenance.head.build) == (
        "SyntaxError: unterminated string literal (version.py, line 27)"
    )
    compared(result)
    assert result.comparison.verdict == "fail"
    assert result.comparison.reasons == [
        "head does not build: SyntaxError: unterminated string literal (version.py, line 27)"
    ]
    text = comment(result, Links())
    assert (
        "head does not build: `SyntaxError: unterminated string literal (version.py, line 27)`"
        in text
    )
    assert "0 of 0" not in text
    assert "<details><summary>head does not build:" in text
    assert "(detected at line 27)" in text, "the log's tail is in the details"
    assert "unterminated string literal (detected at line 27)" in html_report(result, Links())


def test_a_hundred_identical_deblend_errors_are_said_once_with_one_traceback():
    result = synthetic_result(blends=100, sources=1)
    for blend in result.blends:
        blend.head = errored()
    compared(result)
    (failure,) = result.comparison.failures
    assert (failure.side, failure.blends, failure.of) == ("head", 100, 100)
    assert failure.summary == "ValueError in Box.contains"
    assert result.comparison.verdict == "fail"
    assert result.comparison.reasons[0] == (
        "head errors on 100 of 100 blends: ValueError in Box.contains"
    )
    text = comment(result, Links())
    assert text.count("scarlet/bbox.py") == 1 and "100 errored deblend(s)" in text
    assert "head errors on 100 of 100 blends: `ValueError in Box.contains`" in text
