"""Measure one deblended blend against its truth, as the original regression tests did.

Fluxes and centroids are the runner's, measured from each source's deconvolved model
(``source_models``, as the deblender made them) in float64 by the same code for every
adapter: the flux per band is the model's sum, the centroid the flux-weighted mean (y, x)
of its sum over bands. So a change in a deblender's own measurement code (or its float32
round-off) cannot pass for a change of its models; its own measurement (``native_flux``,
``native_centroid``), where it has one, is kept beside them and compared apart.

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

# What is read of a worker's arrays: the model, each source's, and the deblender's own
# measurement where it has one.
ARRAY_KEYS = ("model", "source_models", "native_flux", "native_centroid")


class MeasurementError(ValueError):
    """Deblender output that cannot be measured (wrong shapes, NaNs)."""


def magnitude(flux: np.ndarray) -> np.ndarray:
    """AB magnitude at the zero point of the HSC blends; NaN for flux <= 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, ZERO_POINT - 2.5 * np.log10(flux), np.nan)


def model_hash(*models: np.ndarray) -> str:
    """sha256 of ``models`` (the rendered model, every source's) as little-endian float32,
    each with its shape: equal only where every one is bit-identical."""
    digest = hashlib.sha256()
    for array in models:
        digest.update(repr(np.shape(array)).encode())
        digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return digest.hexdigest()


def check_arrays(blend: Blend, arrays: dict[str, np.ndarray]) -> None:
    """Raise MeasurementError unless the deblender's arrays fit the blend and are finite
    (a source it could not model is NaN throughout)."""
    n_sources, shape = len(blend.centers), blend.images.shape
    expected = {
        "model": shape,
        "source_models": (n_sources, *shape),
        "native_flux": (n_sources, shape[0]),
        "native_centroid": (n_sources, 2),
    }
    for key, want in expected.items():
        if key not in arrays:
            if key.startswith("native_"):
                continue
            raise MeasurementError(f"the deblender returned no {key}")
        if arrays[key].shape != want:
            raise MeasurementError(f"{key} has shape {arrays[key].shape}, expected {want}")
        bad = ~np.isfinite(arrays[key])
        if key != "model":
            # A source the deblender could not initialise is all NaN: not measured.
            axes = tuple(range(1, bad.ndim))
            bad &= ~np.all(bad, axis=axes, keepdims=True)
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


def fluxes_and_centroids(source_models: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flux (N, B) and flux-weighted centroid (N, 2) as (y, x) of (N, B, H, W) source
    models, in float64; NaN rows for sources not modelled, a NaN centroid where a model's
    total flux is not positive."""
    models = np.asarray(source_models, dtype=np.float64)
    flux = models.sum(axis=(2, 3))
    image = models.sum(axis=1)
    total = image.sum(axis=(1, 2))
    ys, xs = np.arange(image.shape[1]), np.arange(image.shape[2])
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.einsum("nyx,y->n", image, ys) / total
        x = np.einsum("nyx,x->n", image, xs) / total
    centroid = np.stack([y, x], axis=1)
    centroid[~(total > 0)] = np.nan
    return flux, centroid


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
    model = arrays["model"]
    flux, centroid = fluxes_and_centroids(arrays["source_models"])
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
        model_hash=model_hash(model, arrays["source_models"]),
        arrays=arrays_path,
        sources=[
            SourceModel([finite(v) for v in f], [finite(v) for v in c])
            for f, c in zip(flux, centroid, strict=True)
        ],
        injected=injected,
        native=_native(arrays),
    )


def _native(arrays: dict[str, np.ndarray]) -> list[SourceModel]:
    """The deblender's own flux and centroid per source, where it returned them."""
    if "native_flux" not in arrays or "native_centroid" not in arrays:
        return []
    flux, centroid = arrays["native_flux"], arrays["native_centroid"]
    return [
        SourceModel([finite(v) for v in f], [finite(v) for v in c])
        for f, c in zip(flux, centroid, strict=True)
    ]
