"""The comparison on synthetic paired results whose answers are known: biases judged by
their paired change and base's own interval, a few wrecked blends caught blend by blend,
lost sources counted, identical meaning identical, inconclusive never passing."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from runner.commands import main
from runner.judge.compare import compare, identical_measurements
from runner.judge.metrics import metric_names
from runner.judge.paired import signed_rank_p
from runner.judge.policy import CompareConfig, ConfigError, differences, parse_config
from runner.result import SCHEMA_FILE, BlendRun, Build, RunResult
from support import BANDS, shift_head, synthetic_result


def by_name(comparison):
    return {m.name: m for m in comparison.metrics}


def wreck(result, indices, chi2=10.0, mag=0.3):
    """The blends at ``indices`` made clearly worse: χ² per pixel × ``chi2``, every
    injected source ``mag`` further from its truth in every band."""
    for index in indices:
        head = result.blends[index].head
        head.model_hash = "e" * 64
        head.chi2_dof *= chi2
        for source in head.injected:
            source.mag_error = [e + mag * np.sign(e) for e in source.mag_error]
    return result


def test_identical_code_passes_with_every_science_metric_unchanged():
    comparison = compare(synthetic_result(), CompareConfig())
    assert comparison.verdict == "pass" and comparison.identical_models
    for metric in comparison.metrics:
        if metric.kind == "science":
            assert metric.status == "unchanged" and metric.p is None
    assert by_name(comparison)["runtime_per_source"].status == "unchanged"
    assert comparison.tally.changed == comparison.tally.worse == 0


def test_identical_models_with_different_fluxes_are_not_identical():
    # The measurement code changed (scarlet.measure): models bit-identical, fluxes 2 % off.
    result = shift_head(synthetic_result(), 1, 2.5 * np.log10(1.02), model=False)
    assert not identical_measurements(result)
    comparison = compare(result, CompareConfig())
    assert not comparison.identical_models
    assert comparison.verdict == "fail"
    assert by_name(comparison)["mag_error_r"].status == "regressed"


def test_identical_means_identical_in_iterations_and_logl_too():
    result = synthetic_result()
    result.blends[0].head.iterations += 1
    assert not identical_measurements(result)
    result = synthetic_result()
    result.blends[0].head.fit_time *= 3  # timings aside
    assert identical_measurements(result)


def test_a_001_mag_bias_away_from_base_error_fails():
    # Base's errors lean positive (mean 0.03): +0.01 moves every source away from zero.
    comparison = compare(shift_head(synthetic_result(), 1, +0.01), CompareConfig())
    metrics = by_name(comparison)
    assert comparison.verdict == "fail"
    r = metrics["mag_error_r"]
    assert r.status == "regressed"
    assert r.delta == pytest.approx(0.01) and r.ci[0] == pytest.approx(0.01)
    assert r.p < 1e-6 and r.base_ci[0] > 0
    assert comparison.reasons == ["regressed: mag error r"]
    for band in "gizy":
        assert metrics[f"mag_error_{band}"].status == "unchanged"


def test_the_same_bias_towards_zero_is_an_improvement():
    comparison = compare(shift_head(synthetic_result(), 1, -0.01), CompareConfig())
    assert by_name(comparison)["mag_error_r"].status == "improved"
    assert comparison.verdict == "pass"
    assert comparison.reasons[0].startswith("improved: mag error r")


def test_a_bias_whose_direction_base_cannot_tell_is_changed_and_neutral():
    # Base's median error is about zero: whether +0.01 is worse depends on noise.
    result = shift_head(synthetic_result(error=(0.0, 0.08)), 1, +0.01)
    comparison = compare(result, CompareConfig())
    r = by_name(comparison)["mag_error_r"]
    assert r.base_ci[0] < -0.005 < r.base_ci[1]
    assert r.status == "changed"
    assert comparison.verdict == "neutral"
    assert "changed with no clear direction: mag error r" in comparison.reasons


def test_removing_a_real_bias_is_never_a_fail():
    result = synthetic_result(error=(0.0, 0.02))
    for blend in result.blends:  # base 0.03 mag off in every band, head fixes it
        for source in blend.base.injected:
            source.mag_error = [e + 0.03 for e in source.mag_error]
        blend.base.model_hash = "b" * 64
    comparison = compare(result, CompareConfig())
    assert comparison.verdict == "pass"
    for band in BANDS:
        assert by_name(comparison)[f"mag_error_{band}"].status == "improved"


def test_a_few_wrecked_blends_fail_blend_by_blend():
    # 7 of 100 blends much worse, the other 93 bit-identical: every median is unchanged.
    result = wreck(synthetic_result(blends=100, sources=1), range(0, 100, 15))
    comparison = compare(result, CompareConfig())
    assert by_name(comparison)["mag_error_r"].status == "unchanged"
    assert comparison.tally.worse == 7 and comparison.tally.changed == 7
    assert comparison.tally.status == "regressed"
    assert comparison.verdict == "fail"
    assert "7 of 100 blends clearly worse (0 better, 2 allowed)" in comparison.reasons
    worst = comparison.blends[0]
    assert worst.worse and worst.worse[0].startswith("χ²/pixel")


def test_five_percent_of_blends_clearly_worse_fail_every_time():
    for seed in range(10):
        rng = np.random.default_rng(seed)
        chosen = rng.choice(100, 5, replace=False)
        result = wreck(synthetic_result(blends=100, sources=1, seed=seed), chosen, 1.0, 0.2)
        assert compare(result, CompareConfig()).verdict == "fail", seed


def test_two_worse_blends_of_a_hundred_are_allowed():
    result = wreck(synthetic_result(blends=100, sources=1), [3, 40])
    comparison = compare(result, CompareConfig())
    assert comparison.tally.worse == 2 and comparison.tally.status == "unchanged"
    assert comparison.verdict == "pass"


def test_as_many_blends_better_as_worse_is_a_change_to_look_at():
    result = wreck(synthetic_result(blends=100, sources=1), range(0, 10), chi2=1.0)
    for blend in result.blends[50:60]:  # base was that much worse on ten others
        blend.base, blend.head = blend.head, blend.base
    wreck(result, range(50, 60), chi2=1.0)
    for blend in result.blends[50:60]:
        blend.base, blend.head = blend.head, blend.base
    comparison = compare(result, CompareConfig())
    assert (comparison.tally.worse, comparison.tally.better) == (10, 10)
    assert comparison.tally.status == "changed"
    assert comparison.verdict == "neutral"


def test_a_source_head_no_longer_measures_is_an_error_not_dropped():
    result = synthetic_result()
    source = result.blends[4].head.injected[1]
    source.mag[2], source.mag_error[2] = None, None
    result.blends[4].head.model_hash = "d" * 64
    comparison = compare(result, CompareConfig())
    lost = by_name(comparison)["unmeasured_sources"]
    assert (lost.base, lost.head, lost.status) == (0, 1, "regressed")
    assert comparison.verdict == "fail"
    assert "source 1 no longer measured" in comparison.blends[0].worse


def test_sources_neither_side_measures_are_excluded_and_listed():
    result = synthetic_result()
    for side in ("base", "head"):
        getattr(result.blends[4], side).injected[1].mag[0] = None
    comparison = compare(result, CompareConfig())
    assert by_name(comparison)["unmeasured_sources"].status == "unchanged"
    assert comparison.excluded == ["set/b4 source 1"]
    assert comparison.verdict == "pass"


def test_timing_noise_is_not_a_regression_but_twice_as_slow_is():
    result = synthetic_result(timing_noise=0.1)
    assert by_name(compare(result, CompareConfig()))["runtime_per_source"].status == "unchanged"
    for blend in result.blends:
        blend.head.fit_time *= 2
        blend.head.init_time *= 2
    comparison = compare(result, CompareConfig())
    runtime = by_name(comparison)["runtime_per_source"]
    assert runtime.status == "regressed" and runtime.delta == pytest.approx(2, rel=0.1)
    assert runtime.unit == "s"
    assert comparison.verdict == "fail"


def test_a_blend_that_errors_only_with_head_fails():
    result = synthetic_result()
    result.blends[3].head = BlendRun(status="errored", error="TypeError: boom")
    comparison = compare(result, CompareConfig())
    assert by_name(comparison)["errored_blends"].status == "regressed"
    assert comparison.verdict == "fail" and not comparison.identical_models


def test_blends_errored_on_both_sides_are_excluded_and_listed_not_neutral():
    result = synthetic_result()
    for side in ("base", "head"):
        setattr(result.blends[3], side, BlendRun(status="errored", error="bad blend file"))
    comparison = compare(result, CompareConfig())
    assert identical_measurements(result)
    assert comparison.verdict == "pass"
    assert comparison.excluded == ["set/b3"]


def test_a_base_that_does_not_build_is_neutral_and_a_head_that_does_not_is_a_fail():
    result = synthetic_result()
    result.provenance.base.build = Build("failed", error="boom")
    assert compare(result, CompareConfig()).verdict == "neutral"
    result = synthetic_result()
    result.provenance.head.build = Build("failed", error="boom")
    assert compare(result, CompareConfig()).verdict == "fail"


def test_an_inconclusive_science_metric_is_neutral_and_states_what_it_could_detect():
    # Ten sources whose errors move by 0.02 mag cannot tell a 0.005 mag change.
    result = synthetic_result(blends=10, sources=1, error=(0.03, 0.2))
    rng = np.random.default_rng(3)
    for blend in result.blends:
        blend.head.model_hash = "c" * 64
        for source in blend.head.injected:
            source.mag_error = [e + rng.normal(0, 0.02) for e in source.mag_error]
    comparison = compare(result, CompareConfig())
    r = by_name(comparison)["mag_error_r"]
    assert r.status == "inconclusive"
    assert r.mde > 2 * r.tolerance
    assert comparison.verdict == "neutral"
    assert any(reason.startswith("inconclusive: ") for reason in comparison.reasons)


def test_too_few_pairs_for_any_significance_have_no_detectable_effect():
    result = shift_head(synthetic_result(blends=5, sources=1), 1, +0.05)
    r = by_name(compare(result, CompareConfig()))["mag_error_r"]
    assert r.status == "inconclusive" and r.mde is None


def test_small_samples_get_exact_signed_rank_p_values():
    assert signed_rank_p(np.array([0.5, 0.4, 0.3, 0.2, 0.1, 0.6])) == pytest.approx(2 / 64)
    # ties in |d| and zeros: the zeros are dropped and the sign flips enumerated
    tied = np.r_[np.zeros(93), np.full(7, 0.3)]
    assert signed_rank_p(tied) == pytest.approx(2 / 128)


def test_blends_are_ranked_worse_first_then_by_how_much_they_changed():
    result = synthetic_result(blends=4)
    result.blends[2].head.model_hash = "e" * 64
    result.blends[2].head.chi2_dof *= 1.05
    result.blends[1].head.model_hash = "d" * 64
    result.blends[1].head.chi2_dof *= 1.01
    wreck(result, [3])
    ranked = compare(result, CompareConfig()).blends
    assert [b.id for b in ranked[:3]] == ["b3", "b2", "b1"]
    assert ranked[3].identical and ranked[3].score == 0


def test_the_statistics_are_deterministic():
    first = compare(shift_head(synthetic_result(), 1, 0.01), CompareConfig())
    again = compare(shift_head(synthetic_result(), 1, 0.01), CompareConfig())
    assert first == again


def test_a_tolerance_from_the_config_lets_the_bias_pass():
    text = "[metrics.mag_error_r]\ntolerance = 0.02\n"
    config = parse_config(text, metric_names(BANDS))
    comparison = compare(shift_head(synthetic_result(), 1, +0.01), config)
    assert by_name(comparison)["mag_error_r"].status == "unchanged"
    assert comparison.verdict == "pass"


def test_a_family_tolerance_applies_to_every_band_unless_a_band_has_its_own():
    text = "[metrics.mag_error]\ntolerance = 0.02\n[metrics.mag_error_g]\ntolerance = 0.001\n"
    config = parse_config(text, metric_names(BANDS))
    assert config.tolerance("mag_error_r", "mag_error", 0.005) == 0.02
    assert config.tolerance("mag_error_g", "mag_error", 0.005) == 0.001


def test_blend_tolerances_come_from_the_config_and_differences_are_stated():
    text = "[blends]\nmag_tolerance = 0.5\nmax_worse_fraction = 0.1\n"
    config = parse_config(text, metric_names(BANDS))
    assert config.blends.mag_tolerance == 0.5
    result = wreck(synthetic_result(blends=100, sources=1), range(0, 100, 15), 1.0, 0.3)
    assert compare(result, config).tally.worse == 0
    assert differences(CompareConfig(), config) == [
        "blends.mag_tolerance: 0.1 → 0.5",
        "blends.max_worse_fraction: 0.02 → 0.1",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[metrics.mag_eror_r]\ntolerance = 1\n", "unknown metric metrics.mag_eror_r"),
        (
            "[metrics.chi2_dof]\ntolerance = -1\n",
            "metrics.chi2_dof.tolerance must be a number >= 0",
        ),
        ("[metrics.chi2_dof]\ndirection = 'up'\n", "metrics.chi2_dof takes only a tolerance"),
        ("[comparison]\nalpha = 2\n", "comparison.alpha must be a number between 0 and 1"),
        ("[comparison]\nalfa = 0.1\n", "unknown key comparison.alfa"),
        ("[blends]\nchi2 = 0.1\n", "unknown key blends.chi2"),
        ("[compare]\n", "unknown section [compare]"),
        ("[comparison\n", "is not valid TOML"),
    ],
)
def test_an_invalid_config_names_the_key(text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_config(text, metric_names(BANDS))


def test_compare_command_rewrites_the_result_with_its_comparison(tmp_path, capsys):
    path = tmp_path / "result.json"
    shift_head(synthetic_result(), 1, +0.01).write(path)
    assert main(["compare", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "verdict: fail (regressed: mag error r)"
    document = json.loads(path.read_text())
    jsonschema.validate(document, json.loads(SCHEMA_FILE.read_text()))
    config = tmp_path / "config.toml"
    config.write_text("[metrics.mag_error_r]\ntolerance = 0.05\n")
    assert main(["compare", str(path), "--config", str(config)]) == 0
    comparison = RunResult.read(path).comparison
    assert comparison.verdict == "pass" and comparison.policy.source == "file"
    # Without --config, the settings recorded in the result are used again.
    assert main(["compare", str(path)]) == 0
    assert RunResult.read(path).comparison.config["tolerances"] == {"mag_error_r": 0.05}


def test_compare_command_names_a_bad_config_key(tmp_path, capsys):
    path = tmp_path / "result.json"
    synthetic_result().write(path)
    config = tmp_path / "config.toml"
    config.write_text("[metrics.nope]\ntolerance = 1\n")
    assert main(["compare", str(path), "--config", str(config)]) == 2
    assert "unknown metric metrics.nope" in capsys.readouterr().err
