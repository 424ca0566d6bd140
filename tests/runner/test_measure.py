"""Measuring a deblend against truth, with arrays whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from runner.datasets import BANDS, Blend, Truth
from runner.deblend.measure import (
    MeasurementError,
    chi2_per_dof,
    fluxes_and_centroids,
    magnitude,
    measure,
    model_hash,
)


def blend_with_one_source(flux=100.0):
    shape = (len(BANDS), 20, 20)
    variance = np.full(shape, 0.25, dtype=np.float32)
    footprint = np.ones(shape[1:], dtype=bool)
    footprint[5:15, 5:15] = False
    truth = Truth(index=1, y=10.3, x=9.6, mags=tuple(27 - 2.5 * np.log10([flux] * 5)))
    return Blend(
        images=np.zeros(shape, dtype=np.float32),
        variance=variance,
        footprint=footprint,
        psfs=np.ones((5, 3, 3), dtype=np.float32),
        centers=np.array([[3, 3], [10, 9]]),
        truth=(truth,),
    )


def arrays_for(blend, flux_of_source):
    """Source 0: 50 per band at (3, 3); source 1: ``flux_of_source`` per band, 40 % at
    (10, 10) and 60 % at (11, 10), so its centroid is (10.6, 10.0), 0.5 px from its truth."""
    models = np.zeros((2, *blend.images.shape), dtype=np.float32)
    models[0, :, 3, 3] = 50.0
    models[1, :, 10, 10] = 0.4 * flux_of_source
    models[1, :, 11, 10] = 0.6 * flux_of_source
    return {"model": np.ones(blend.images.shape, dtype=np.float32), "source_models": models}


REPLY = {"iterations": 12, "logL": -5.0, "init_logL": -50.0, "init_time": 0.1, "fit_time": 0.5}


def test_magnitudes_errors_and_centroid_offsets():
    blend = blend_with_one_source(flux=100.0)
    run = measure(blend, arrays_for(blend, 100.0 / 10 ** (0.1 / 2.5)), REPLY, "x.npz")
    (source,) = run.injected
    assert source.index == 1
    assert source.mag_error == pytest.approx([-0.1] * 5, abs=1e-6)
    assert source.mag == pytest.approx([22.1] * 5, abs=1e-6)
    assert source.centroid_offset == pytest.approx(0.5)
    assert run.iterations == 12 and run.status == "ok"
    assert len(run.sources) == 2 and run.sources[0].flux == [50.0] * 5


def test_chi2_per_dof_counts_only_pixels_inside_the_footprint():
    blend = blend_with_one_source()
    model = np.zeros(blend.images.shape)
    model[:, 0, 0] = 1000.0  # outside the footprint: ignored
    model[:, 10, 10] = 1.0  # inside: (1 / 0.25) per band over 100 pixels per band
    assert chi2_per_dof(blend, model) == pytest.approx(4 / 100)


def test_nan_in_the_model_is_refused():
    blend = blend_with_one_source()
    arrays = arrays_for(blend, 100.0)
    arrays["model"][0, 1, 1] = np.nan
    with pytest.raises(MeasurementError, match="1 NaN value\\(s\\) in model"):
        measure(blend, arrays, REPLY, "x.npz")


def test_a_source_the_deblender_skipped_is_measured_as_missing():
    blend = blend_with_one_source()
    arrays = arrays_for(blend, 100.0)
    arrays["source_models"][1] = np.nan
    (source,) = measure(blend, arrays, REPLY, "x.npz").injected
    assert source.mag == [None] * 5 and source.centroid_offset is None


def test_a_partly_nan_source_model_is_refused():
    blend = blend_with_one_source()
    arrays = arrays_for(blend, 100.0)
    arrays["source_models"][1, 2, 0, 0] = np.nan
    with pytest.raises(MeasurementError, match="1 NaN value\\(s\\) in source_models"):
        measure(blend, arrays, REPLY, "x.npz")


def test_wrong_shapes_are_refused():
    blend = blend_with_one_source()
    arrays = arrays_for(blend, 100.0)
    arrays["source_models"] = arrays["source_models"][:1]
    with pytest.raises(MeasurementError, match="source_models has shape \\(1, 5, 20, 20\\)"):
        measure(blend, arrays, REPLY, "x.npz")
    arrays = arrays_for(blend, 100.0)
    arrays["native_flux"] = np.ones((2, 4))
    with pytest.raises(MeasurementError, match="native_flux has shape"):
        measure(blend, arrays, REPLY, "x.npz")


def test_fluxes_and_centroids_are_the_runners_in_float64_not_the_deblenders():
    # float32 models whose float32 sums drift: the runner sums in float64, exactly.
    models = np.zeros((1, 5, 64, 64), dtype=np.float32)
    models[0, :, 10:50, 10:50] = np.float32(0.1)
    flux, centroid = fluxes_and_centroids(models)
    assert flux.dtype == np.float64
    assert flux[0] == pytest.approx([1600 * float(np.float32(0.1))] * 5, rel=1e-15)
    assert models[0].sum(axis=(1, 2), dtype=np.float32)[0] != flux[0, 0]  # float32 round-off
    assert centroid[0] == pytest.approx([29.5, 29.5], rel=1e-15)
    # The deblender's own measurement is kept beside them, not used.
    blend = blend_with_one_source()
    arrays = arrays_for(blend, 100.0)
    arrays["native_flux"] = np.full((2, 5), 49.99)
    arrays["native_centroid"] = np.array([[3.00001, 3.0], [10.6, 10.0]])
    run = measure(blend, arrays, REPLY, "x.npz")
    assert run.sources[0].flux == [50.0] * 5 and run.sources[0].centroid == [3.0, 3.0]
    assert run.native[0].flux == [49.99] * 5 and run.native[0].centroid == [3.00001, 3.0]
    assert measure(blend, arrays_for(blend, 100.0), REPLY, "x.npz").native == []


def test_non_positive_flux_has_no_magnitude():
    assert np.isnan(magnitude(np.array([0.0, -1.0]))).all()


def test_the_model_hash_sees_one_changed_bit():
    model = np.ones((5, 4, 4), dtype=np.float32)
    changed = model.copy()
    changed.view(np.uint32)[0, 0, 0] ^= 1
    assert model_hash(model) == model_hash(model.astype(np.float64))
    assert model_hash(model) != model_hash(changed)
    sources = np.stack([model / 2, model / 2])
    moved = sources.copy()
    moved.view(np.uint32)[1, 0, 0, 0] ^= 1
    # One source's model changed, the rendered sum of them not: not identical.
    assert model_hash(model, sources) != model_hash(model, moved)
