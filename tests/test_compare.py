"""The comparison on synthetic run results whose answers are known: a 0.01 mag bias in
one band fails, the same bias the good way improves, identical code passes."""

from __future__ import annotations

import json

import jsonschema
import pytest

from runner.cli import main
from runner.compare import compare, identical_models, metric_names
from runner.config import CompareConfig, ConfigError, parse_config
from runner.result import SCHEMA_FILE, BlendRun, Build, RunResult
from support import BANDS, shift_head, synthetic_result


def by_name(comparison):
    return {m.name: m for m in comparison.metrics}


def test_identical_code_passes_with_every_science_metric_unchanged():
    comparison = compare(synthetic_result(), CompareConfig())
    assert comparison.verdict == "pass" and comparison.identical_models
    for metric in comparison.metrics:
        if metric.kind == "science":
            assert metric.status == "unchanged" and metric.p is None
    assert by_name(comparison)["runtime_per_source"].status == "unchanged"


def test_a_001_mag_bias_in_one_band_fails():
    comparison = compare(shift_head(synthetic_result(), 1, +0.01), CompareConfig())
    metrics = by_name(comparison)
    assert comparison.verdict == "fail"
    assert metrics["mag_error_r"].status == "regressed"
    assert metrics["mag_error_r"].delta == pytest.approx(0.01)
    assert metrics["mag_error_r"].ci[0] == pytest.approx(0.01) and metrics["mag_error_r"].p < 1e-6
    assert comparison.reasons == ["regressed: mag error r"]
    for band in "gizy":
        assert metrics[f"mag_error_{band}"].status == "unchanged"


def test_the_same_bias_in_the_good_direction_is_an_improvement():
    comparison = compare(shift_head(synthetic_result(), 1, -0.01), CompareConfig())
    assert by_name(comparison)["mag_error_r"].status == "improved"
    assert comparison.verdict == "pass"
    assert comparison.reasons == ["improved: mag error r"]


def test_a_tolerance_from_the_config_lets_the_bias_pass():
    config = parse_config("[metrics.mag_error_r]\ntolerance = 0.02\n", metric_names(BANDS))
    comparison = compare(shift_head(synthetic_result(), 1, +0.01), config)
    assert by_name(comparison)["mag_error_r"].status == "unchanged"
    assert comparison.verdict == "pass"


def test_a_family_tolerance_applies_to_every_band_unless_a_band_has_its_own():
    text = "[metrics.mag_error]\ntolerance = 0.02\n[metrics.mag_error_g]\ntolerance = 0.001\n"
    config = parse_config(text, metric_names(BANDS))
    assert config.tolerance("mag_error_r", "mag_error", 0.005) == 0.02
    assert config.tolerance("mag_error_g", "mag_error", 0.005) == 0.001


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
        ("[compare]\n", "unknown section [compare]"),
        ("[comparison\n", "is not valid TOML"),
    ],
)
def test_an_invalid_config_names_the_key(text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_config(text, metric_names(BANDS))


def test_timing_noise_is_not_a_regression_but_twice_as_slow_is():
    result = synthetic_result(timing_noise=0.1)
    assert by_name(compare(result, CompareConfig()))["runtime_per_source"].status == "unchanged"
    for blend in result.blends:
        blend.head.fit_time *= 2
        blend.head.init_time *= 2
    comparison = compare(result, CompareConfig())
    runtime = by_name(comparison)["runtime_per_source"]
    assert runtime.status == "regressed" and runtime.delta == pytest.approx(2, rel=0.1)
    assert comparison.verdict == "fail"


def test_a_blend_that_errors_only_with_head_fails():
    result = synthetic_result()
    result.blends[3].head = BlendRun(status="errored", error="TypeError: boom")
    comparison = compare(result, CompareConfig())
    assert by_name(comparison)["errored_blends"].status == "regressed"
    assert comparison.verdict == "fail" and not comparison.identical_models


def test_blends_errored_on_both_sides_make_it_neutral():
    result = synthetic_result()
    for side in ("base", "head"):
        setattr(result.blends[3], side, BlendRun(status="errored", error="bad blend file"))
    comparison = compare(result, CompareConfig())
    assert identical_models(result)
    assert comparison.verdict == "neutral"
    assert comparison.reasons == ["1 blend(s) errored with base and head alike"]


def test_a_base_that_does_not_build_is_neutral_and_a_head_that_does_not_is_a_fail():
    result = synthetic_result()
    result.provenance.base.build = Build("failed", error="boom")
    assert compare(result, CompareConfig()).verdict == "neutral"
    result = synthetic_result()
    result.provenance.head.build = Build("failed", error="boom")
    assert compare(result, CompareConfig()).verdict == "fail"


def test_too_few_sources_for_a_change_beyond_tolerance_are_inconclusive():
    # Two pairs can never make a Wilcoxon test significant, whatever the shift.
    result = shift_head(synthetic_result(blends=2, sources=1), 1, +0.05)
    assert by_name(compare(result, CompareConfig()))["mag_error_r"].status == "inconclusive"


def test_blends_are_ranked_by_how_much_they_changed():
    result = synthetic_result(blends=4)
    result.blends[2].head.model_hash = "e" * 64
    result.blends[2].head.chi2_dof += 0.5
    result.blends[1].head.model_hash = "d" * 64
    result.blends[1].head.chi2_dof += 0.1
    ranked = compare(result, CompareConfig()).blends
    assert [b.id for b in ranked[:2]] == ["b2", "b1"]
    assert ranked[2].identical and ranked[2].score == 0


def test_the_statistics_are_deterministic():
    first = compare(shift_head(synthetic_result(), 1, 0.01), CompareConfig())
    again = compare(shift_head(synthetic_result(), 1, 0.01), CompareConfig())
    assert first == again


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
    assert RunResult.read(path).comparison.verdict == "pass"
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
