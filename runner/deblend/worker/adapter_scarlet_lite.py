"""Adapter running one blend through scarlet_lite (lsst/scarlet_lite, ``lsst.scarlet.lite``).

Follows Rubin's recipe in ``meas_extensions_scarlet`` (the pipeline that runs it on survey
data), public API only: an ``Observation`` of the images, variances, inverse-variance
weights inside the footprint and PSFs, with a Gaussian model PSF
(``utils.integrated_circular_gaussian``, sigma 0.8 px); every source initialised at its
detected centre by the factorized initialisation; ``Blend.fit_spectra``; the adaprox
parameterisation (``component.default_adaprox_parameterization`` with a tenth of the noise
RMS); ``Blend.fit(max_iter, e_rel, min_iter, resize)``, whose own test stops the fit.

Two initialisation APIs, told apart by what the revision has (not by its version):
since PR #8 (2025-07) ``FactorizedInitialization(observation, centers, min_snr,
monotonicity, bg_thresh, initial_bg_thresh)``; before, ``FactorizedChi2Initialization(
observation, centers, min_snr, monotonicity, thresh)``, ``thresh`` being the then name of
the initial background threshold.

Options against Rubin's defaults (``ScarletDeblendConfig``): ``max_iter`` 300, ``e_rel``
1e-3, ``min_iter`` 5 (the library's own defaults are 1e-4 and 15: Rubin's are taken, as
the pipeline people run), ``resize`` 3 (library: 10), ``min_snr`` 50, ``monotonicity``
width 101, ``bg_thresh`` and ``initial_bg_thresh`` 1 (library: 0.25 and 0.5),
``model_psf_sigma`` 0.8. Imports only the standard library, numpy and scarlet_lite.
"""

import inspect
import time
from functools import partial

import numpy as np
from lsst.scarlet.lite import Blend, Observation, initialization, operators, utils
from lsst.scarlet.lite.component import default_adaprox_parameterization

try:
    from lsst.scarlet.lite import __version__
except ImportError:  # some revisions keep it in version.py only
    __version__ = "unknown"

DEFAULTS = {
    "max_iter": 300,  # ScarletDeblendConfig.maxIter
    "e_rel": 1e-3,  # ScarletDeblendConfig.relativeError
    "min_iter": 5,  # ScarletDeblendConfig.minIter
    "resize": 3,  # the pipeline's resize interval
    "min_snr": 50,  # ScarletDeblendConfig.minSNR
    "monotonicity_width": 101,  # operators.Monotonicity((101, 101))
    "bg_thresh": 1.0,  # ScarletDeblendConfig.backgroundThresh
    "initial_bg_thresh": 1.0,  # ScarletDeblendConfig.initialBackgroundThresh
    "model_psf_sigma": 0.8,
    "bands": "grizy",
}


class DeblendFailure(RuntimeError):
    """scarlet_lite could not deblend this blend (not the adapter's fault)."""


def _initialise(observation, centers, opts):
    """The sources, through the initialisation API the revision has."""
    monotonicity = operators.Monotonicity((opts["monotonicity_width"],) * 2)
    init = initialization.FactorizedInitialization
    common = {"min_snr": opts["min_snr"], "monotonicity": monotonicity}
    if "bg_thresh" in inspect.signature(init).parameters:
        return init(
            observation,
            centers,
            bg_thresh=opts["bg_thresh"],
            initial_bg_thresh=opts["initial_bg_thresh"],
            **common,
        ).sources
    chi2 = initialization.FactorizedChi2Initialization
    return chi2(observation, centers, thresh=opts["initial_bg_thresh"], **common).sources


def _source_model(source, observation, shape):
    """A source's deconvolved model over the observed pixel grid (NaN: no component)."""
    if source.is_null:
        return np.full(shape, np.nan, dtype=np.float32)
    model = source.get_model().project(bbox=observation.bbox)
    return np.asarray(model.data)


def deblend(blend: dict, options: dict) -> dict:
    """Deblend one blend with scarlet_lite; see DEFAULTS for the options.

    Returns the rendered model (B, H, W) in the observed frame, every source's deconvolved
    model ``source_models`` (N, B, H, W) in the model frame (the observed pixel grid; NaN
    for a source without components), iterations, converged (the fit's own test held
    before ``max_iter``), logL and init_logL (after ``fit_spectra``), init_time, fit_time
    and the version. scarlet_lite has no flux or centroid measurement of its own.
    """
    opts = {**DEFAULTS, **(options or {})}
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown scarlet_lite adapter options: {sorted(unknown)}")
    images = np.asarray(blend["images"], dtype=np.float32)
    variance = np.asarray(blend["variance"], dtype=np.float32)
    inside = ~np.asarray(blend["footprint"], dtype=bool)
    centers = [tuple(int(v) for v in c) for c in np.asarray(blend["centers"]).reshape(-1, 2)]
    psfs = np.asarray(blend["psfs"], dtype=np.float32)
    n_bands = len(images)
    with np.errstate(divide="ignore"):
        weights = np.where(variance > 0, 1 / variance, 0).astype(np.float32) * inside

    t0 = time.perf_counter()
    model_psf = utils.integrated_circular_gaussian(sigma=opts["model_psf_sigma"])
    observation = Observation(
        images,
        variance,
        weights,
        psfs,
        model_psf[None],
        bands=tuple(opts["bands"][:n_bands]),
    )
    sources = _initialise(observation, centers, opts)
    if all(source.is_null for source in sources):
        raise DeblendFailure(f"none of the {len(centers)} sources could be initialised")
    blend_ = Blend(sources, observation).fit_spectra()
    blend_.parameterize(
        partial(default_adaprox_parameterization, noise_rms=observation.noise_rms / 10)
    )
    init_logL = float(blend_.log_likelihood)
    init_time = time.perf_counter() - t0

    t1 = time.perf_counter()
    iterations, logL = blend_.fit(
        opts["max_iter"], e_rel=opts["e_rel"], min_iter=opts["min_iter"], resize=opts["resize"]
    )
    fit_time = time.perf_counter() - t1

    return {
        "model": np.asarray(blend_.get_model(convolve=True).data, dtype=np.float32),
        "source_models": np.stack([_source_model(s, observation, images.shape) for s in sources]),
        "iterations": int(iterations),
        "converged": int(iterations) < opts["max_iter"],
        "logL": float(logL),
        "init_logL": init_logL,
        "init_time": init_time,
        "fit_time": fit_time,
        "version": __version__,
    }
