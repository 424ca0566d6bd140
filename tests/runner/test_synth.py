"""The synthetic blend generator: deterministic, in the HSC schema, and true to its truth."""

from __future__ import annotations

import numpy as np

from runner.datasets import BANDS, ZERO_POINT, file_sha256, load_blend, open_dataset
from runner.synth import write_synthetic_set


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    first = write_synthetic_set(tmp_path / "a", blends=3, seed=7)
    again = write_synthetic_set(tmp_path / "b", blends=3, seed=7)
    other = write_synthetic_set(tmp_path / "c", blends=3, seed=8)
    assert [file_sha256(p) for p in first] == [file_sha256(p) for p in again]
    assert file_sha256(first[0]) != file_sha256(other[0])
    assert open_dataset(tmp_path / "a").content_hash == open_dataset(tmp_path / "b").content_hash


def test_blends_follow_the_hsc_schema(synthetic_set):
    for blend_file in open_dataset(synthetic_set).blends:
        blend = load_blend(blend_file.path)
        assert blend.images.shape[0] == len(BANDS) and blend.images.dtype == np.float32
        assert blend.psfs.shape[1:] == (43, 43)
        np.testing.assert_allclose(blend.psfs.sum(axis=(1, 2)), 1, rtol=1e-5)
        assert 2 <= len(blend.centers) <= 6
        assert len(blend.truth) == len(blend.centers)
        assert blend.inside.any() and blend.footprint.any()


def test_images_hold_the_flux_of_the_truth(synthetic_set):
    for blend_file in open_dataset(synthetic_set).blends:
        blend = load_blend(blend_file.path)
        truth_flux = sum(10 ** ((ZERO_POINT - np.array(t.mags)) / 2.5) for t in blend.truth)
        image_flux = blend.images.sum(axis=(1, 2))
        noise = np.sqrt(blend.variance.sum(axis=(1, 2)))
        # Within the noise plus the little flux the PSF wings lose at the stamp edges.
        assert np.all(np.abs(image_flux - truth_flux) < 5 * noise + 0.02 * truth_flux)


def test_truth_positions_match_centers(synthetic_set):
    for blend_file in open_dataset(synthetic_set).blends:
        blend = load_blend(blend_file.path)
        for truth in blend.truth:
            assert tuple(blend.centers[truth.index]) == (int(truth.y), int(truth.x))
