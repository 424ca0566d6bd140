"""scarlet2, the real release from PyPI, through ``python -m runner run``.

A local git repository is built at test time from the scarlet2 sdist: the release is
the base, and the head commits a deliberate flux bias (the observation renders its
model 10 % brighter, so the fit makes every source 10 % fainter). Nothing of scarlet2's
code lives in this repository.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from runner.cli import main
from runner.release import commit, release_repository
from runner.result import RunResult
from support import HSC

pytestmark = pytest.mark.scarlet2

RELEASE = "scarlet2==0.5.1"
BIAS = 1.1
RENDER = "        return self.renderer(model_)\n"


@pytest.fixture(scope="module")
def scarlet2(tmp_path_factory):
    """(work folder, repository, base tag, biased head SHA); one cache for the module."""
    root = tmp_path_factory.mktemp("scarlet2")
    repo = root / "scarlet2"
    tag = release_repository(RELEASE, repo)
    observation = repo / "src" / "scarlet2" / "observation.py"
    source = observation.read_text()
    assert source.count(RENDER) == 1, "the release no longer renders as this test expects"
    observation.write_text(
        source.replace(RENDER, f"        return {BIAS} * self.renderer(model_)\n")
    )
    head = commit(repo, "Render every model 10% brighter")
    return root, repo, tag, head


def run(root, repo, head, base, dataset, name, *extra):
    out = root / name
    argv = ["run", "--repo", str(repo), "--head", head, "--base", base, "--dataset", str(dataset)]
    assert main([*argv, "--out", str(out), "--cache", str(root / "cache"), *extra]) == 0
    return RunResult.read(out / "result.json")


def test_a_flux_bias_in_the_head_shows_in_its_measurements(scarlet2, synthetic_set):
    root, repo, tag, head = scarlet2
    dataset = root / "synth"
    dataset.mkdir()
    for path in sorted(synthetic_set.glob("*.npz"))[:3]:
        shutil.copy(path, dataset)
    result = run(root, repo, head, tag, dataset, "bias", "--max-iter", "300")
    assert result.provenance.adapter == "scarlet2"
    assert result.provenance.base.deblender_version == "0.5.1"
    assert result.provenance.head.deblender_version.startswith("0.5.2.dev1+g")
    shifts, base_errors = [], []
    for blend in result.blends:
        assert blend.base.status == blend.head.status == "ok", blend
        assert blend.base.model_hash != blend.head.model_hash
        for base, head_source in zip(blend.base.injected, blend.head.injected, strict=True):
            shifts += list(np.subtract(head_source.mag, base.mag))
            base_errors += base.mag_error
    expected = 2.5 * np.log10(BIAS)
    assert np.median(shifts) == pytest.approx(expected, abs=0.02)
    assert abs(np.median(base_errors)) < 0.2
    # Every source is 0.1 mag fainter; the verdict follows from the bands where the
    # base's median error already leaned that way (its sign varies on three blends).
    assert result.comparison.verdict == "fail"
    regressed = {m.name for m in result.comparison.metrics if m.status == "regressed"}
    assert regressed & {f"mag_error_{band}" for band in "grizy"}


@pytest.mark.hsc
def test_real_hsc_blends_are_measured_within_sane_bounds(scarlet2, tmp_path):
    root, repo, tag, _ = scarlet2
    if not (HSC / "set1").is_dir():
        pytest.skip(f"real HSC blends not found at {HSC}")
    dataset = tmp_path / "hsc-set1"
    dataset.mkdir()
    for path in sorted((HSC / "set1").glob("*.npz"))[:3]:
        shutil.copy(path, dataset)
    result = run(root, repo, tag, tag, dataset, "hsc")
    errors = []
    for blend in result.blends:
        assert blend.base.status == blend.head.status == "ok", blend
        assert blend.base.model_hash == blend.head.model_hash, "scarlet2 is deterministic"
        assert 0.5 < blend.head.chi2_dof < 3
        errors += [e for source in blend.head.injected for e in source.mag_error]
        assert all(s.centroid_offset < 3 for s in blend.head.injected)
    assert abs(np.median(errors)) < 0.2
    assert np.max(np.abs(errors)) < 1.0
    assert result.comparison.identical_models and result.comparison.verdict == "pass"
