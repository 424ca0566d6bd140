"""Measure one deblended blend against its truth, as the original regression tests did.

Each injected source is the row of ``centers`` at its truth position; its magnitude
is ``27 - 2.5 log10(flux)`` per band and its error is truth minus model. The
residual chi² per degree of freedom is taken over the pixels inside the footprint in
every band: sum((image - model)² / variance) / number of those pixels. A source's true
S/N per band is that of its true flux seen through the band's PSF (a matched filter:
flux × sqrt(Σ psf²) / σ, the PSF normalised to unit sum) against the blend's noise σ,
the square root of the median variance inside the footprint.
"""

from __future__ import annotations

import hashlib

import numpy as np

from runner.datasets import ZERO_POINT, Blend
from runner.result import BlendRun, InjectedSource, SourceModel, finite


class MeasurementError(ValueError):
    """Deblender output that cannot be measured (wrong shapes, NaNs)."""


def magnitude(flux: np.ndarray) -> np.ndarray:
    """AB magnitude at the zero point of the HSC blends; NaN for flux <= 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, ZERO_POINT - 2.5 * np.log10(flux), np.nan)


def model_hash(model: np.ndarray) -> str:
    """sha256 of the model image as little-endian float32."""
    return hashlib.sha256(np.ascontiguousarray(model, dtype="<f4").tobytes()).hexdigest()


def check_arrays(blend: Blend, arrays: dict[str, np.ndarray]) -> None:
    """Raise MeasurementError unless the deblender's arrays fit the blend and are finite."""
    n_sources, n_bands = len(blend.centers), blend.images.shape[0]
    expected = {
        "flux": (n_sources, n_bands),
        "centroid": (n_sources, 2),
        "model": blend.images.shape,
    }
    for key, shape in expected.items():
        if key not in arrays:
            raise MeasurementError(f"the deblender returned no {key}")
        if arrays[key].shape != shape:
            raise MeasurementError(f"{key} has shape {arrays[key].shape}, expected {shape}")
    for key in expected:
        bad = ~np.isfinite(arrays[key])
        if key != "model":
            # A source the deblender could not initialise is all NaN: not measured.
            bad &= ~np.all(~np.isfinite(arrays[key]), axis=1, keepdims=True)
        if bad.any():
            raise MeasurementError(f"the deblender returned {int(bad.sum())} NaN value(s) in {key}")


def truth_snr(blend: Blend, mags: tuple[float, ...]) -> list[float | None]:
    """Per band, the S/N of a source of true magnitudes ``mags`` in ``blend``."""
    inside = np.broadcast_to(blend.inside, blend.variance.shape)
    snr = []
    for band, mag in enumerate(mags):
        psf = blend.psfs[band].astype(float)
        noise = np.sqrt(np.median(blend.variance[band][inside[band]]))
        flux = 10 ** (-0.4 * (mag - ZERO_POINT))
        snr.append(finite(flux * np.sqrt((psf**2).sum()) / psf.sum() / noise))
    return snr


def chi2_per_dof(blend: Blend, model: np.ndarray) -> float:
    """Residual chi² per pixel inside the footprint, over all bands."""
    inside = np.broadcast_to(blend.inside, blend.images.shape)
    residual = (blend.images.astype(float) - model) ** 2 / blend.variance
    return float(residual[inside].sum() / inside.sum())


def measure(
    blend: Blend,
    arrays: dict[str, np.ndarray],
    reply: dict,
    arrays_path: str,
    wall: float | None = None,
    cpu: float | None = None,
) -> BlendRun:
    """The measurements of one revision on one blend; ``wall`` and ``cpu`` the seconds the
    runner measured while it deblended."""
    check_arrays(blend, arrays)
    flux, centroid, model = arrays["flux"], arrays["centroid"], arrays["model"]
    mags = magnitude(flux)
    injected = []
    for truth in blend.truth:
        error = np.asarray(truth.mags) - mags[truth.index]
        offset = np.hypot(*(centroid[truth.index] - (truth.y, truth.x)))
        injected.append(
            InjectedSource(
                index=truth.index,
                y=truth.y,
                x=truth.x,
                mag_true=list(truth.mags),
                mag=[finite(v) for v in mags[truth.index]],
                mag_error=[finite(v) for v in error],
                centroid_offset=finite(offset),
                snr=truth_snr(blend, truth.mags),
            )
        )
    return BlendRun(
        status="ok",
        wall_time=finite(wall),
        cpu_time=finite(cpu),
        init_time=finite(reply["init_time"]),
        fit_time=finite(reply["fit_time"]),
        iterations=int(reply["iterations"]),
        logL=finite(reply["logL"]),
        init_logL=finite(reply["init_logL"]),
        chi2_dof=finite(chi2_per_dof(blend, model)),
        converged=bool(reply["converged"]) if "converged" in reply else None,
        model_hash=model_hash(model),
        arrays=arrays_path,
        sources=[
            SourceModel([finite(v) for v in f], [finite(v) for v in c])
            for f, c in zip(flux, centroid, strict=True)
        ],
        injected=injected,
    )
