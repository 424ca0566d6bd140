"""Adapter running one blend through scarlet v1 (pmelchior/scarlet).

Mirrors the in-repo reference pipeline ``scarlet/testing/deblend.py``: a model frame
with a Gaussian PSF, one observation with inverse-variance weights restricted to the
footprint, ``init_all_sources`` and ``Blend.fit``. Imports only the standard library,
numpy and scarlet.
"""

import time

import numpy as np
import scarlet
from scarlet.initialization import init_all_sources

DEFAULTS = {
    "max_iter": 100,  # scarlet.testing.settings.max_iter
    "e_rel": 1e-4,  # scarlet.testing.settings.e_rel
    "min_snr": 30,  # scarlet.testing.deblend
    "max_components": 2,
    "min_components": 1,
    "thresh": 1,
    "model_psf_sigma": 0.8,  # Gaussian model PSF width in pixels
}


class DeblendFailure(RuntimeError):
    """scarlet could not deblend this blend (not the adapter's fault)."""


def _square_psf(psfs):
    """Zero-pad (B, h, w) PSFs to an odd square centred on pixel (h//2, w//2)."""
    _, h, w = psfs.shape
    size = max(h, w) | 1
    pad = [(0, 0)]
    for n in (h, w):
        before = size // 2 - n // 2
        pad.append((before, size - n - before))
    return np.pad(psfs, pad)


def deblend(blend: dict, options: dict) -> dict:
    """Deblend one blend with scarlet v1 and measure every source.

    ``blend`` holds numpy arrays ``images`` (B, H, W), ``variance``, ``footprint``
    (True outside the blend), ``psfs`` (B, h, w) and ``centers`` (N, 2) as (y, x).
    ``options`` may override any key of ``DEFAULTS``; other keys are ignored.

    Returns the rendered blend model (B, H, W), each source's deconvolved model
    ``source_models`` (N, B, H, W) in the model frame (NaN for sources that could not be
    initialised), scarlet's own measurement of them (``native_flux`` (N, B),
    ``native_centroid`` (N, 2, (y, x))), iterations, converged, logL (final log-likelihood
    as returned by ``Blend.fit``), init_logL (log-likelihood of the initial model),
    init_time, fit_time and version.

    ``Blend.fit`` stops early only when its test holds (the loss changed by less than
    ``e_rel`` times its value since the previous step: ``Blend._callback`` raises
    ``StopIteration`` before the next gradient, so fewer than ``max_iter`` losses are
    recorded); otherwise it runs all ``max_iter`` steps, restarts included. So the fit
    converged exactly when it returns fewer than ``max_iter`` iterations.
    """
    opt = {**DEFAULTS, **options}

    images = np.asarray(blend["images"], dtype=np.float32)
    variance = np.asarray(blend["variance"], dtype=np.float32)
    footprint = np.asarray(blend["footprint"], dtype=bool)
    centers = np.asarray(blend["centers"])
    psfs = _square_psf(np.asarray(blend["psfs"], dtype=np.float32))
    if images.ndim != 3 or variance.shape != images.shape:
        raise DeblendFailure(f"images {images.shape} and variance {variance.shape} differ")
    if footprint.shape != images.shape[1:] or len(psfs) != len(images):
        raise DeblendFailure("footprint or psfs do not match images")
    if centers.ndim != 2 or centers.shape[1] != 2:
        raise DeblendFailure(f"centers must be (N, 2), got {centers.shape}")
    n_bands, n_src = len(images), len(centers)

    with np.errstate(divide="ignore"):
        weights = np.where(variance > 0, 1 / variance, 0) * ~footprint
    channels = list(range(n_bands))

    t0 = time.perf_counter()
    model_psf = scarlet.GaussianPSF(sigma=(opt["model_psf_sigma"],) * n_bands)
    model_frame = scarlet.Frame(images.shape, psf=model_psf, channels=channels)
    observation = scarlet.Observation(
        images, psf=scarlet.ImagePSF(psfs), weights=weights, channels=channels
    )
    observation.match(model_frame)
    sources, skipped = init_all_sources(
        model_frame,
        centers,
        observation,
        max_components=opt["max_components"],
        min_components=opt["min_components"],
        min_snr=opt["min_snr"],
        thresh=opt["thresh"],
        fallback=True,
        silent=True,
        set_spectra=True,
    )
    init_time = time.perf_counter() - t0
    if not sources:
        raise DeblendFailure(f"none of the {n_src} sources could be initialised")

    blend_ = scarlet.Blend(sources, observation)
    init_logL = float(observation.get_log_likelihood(blend_.get_model()))
    t1 = time.perf_counter()
    iterations, logL = blend_.fit(opt["max_iter"], e_rel=opt["e_rel"])
    fit_time = time.perf_counter() - t1

    source_models = np.full((n_src, *images.shape), np.nan, dtype=np.float32)
    native_flux = np.full((n_src, n_bands), np.nan)
    native_centroid = np.full((n_src, 2), np.nan)
    fitted = [k for k in range(n_src) if k not in set(skipped)]
    for k, src in zip(fitted, sources, strict=True):
        source_models[k] = src.get_model(frame=model_frame)
        native_flux[k] = scarlet.measure.flux(src)
        # centroid of the (C, Ny, Nx) model: channel, y, x in model-frame pixels
        native_centroid[k] = scarlet.measure.centroid(src)[1:]

    model = observation.render(blend_.get_model())
    return {
        "model": np.asarray(model, dtype=np.float32),
        "source_models": source_models,
        "native_flux": native_flux,
        "native_centroid": native_centroid,
        "iterations": int(iterations),
        "converged": int(iterations) < opt["max_iter"],
        "logL": float(logL),
        "init_logL": init_logL,
        "init_time": init_time,
        "fit_time": fit_time,
        "version": scarlet.__version__,
    }
