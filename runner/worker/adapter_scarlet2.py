"""scarlet2 adapter for scarlet-regression: deblend one blend, return measurements.

Follows scarlet2's docs (0-example.ipynb, "Real-World Example"): model frame from
``Frame.from_observations`` (Gaussian model PSF, sigma 0.7 px), sources initialised with
``init.from_gaussian_moments`` and, on ``ValueError``, the documented fallback
``init.pixel_spectrum`` + ``init.compact_morphology``; positive spectra, unit-interval
morphologies, ``relative_step`` step sizes, ``Scene.fit`` (Adam).

Process-wide settings (the runner sets them in the worker's environment):
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``,
``JAX_PLATFORMS=cpu``, ``JAX_COMPILATION_CACHE_DIR=<dir>`` and
``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0`` for the persistent compilation cache.
"""

import contextlib
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import scarlet2 as sc2
from numpyro.distributions import constraints

DEFAULTS = {
    "max_iter": 1000,  # docs example: maxiter = 1000
    "e_rel": 1e-4,  # docs example: e_rel=1e-4
    "spectrum_step": 0.05,  # relative_step factor for spectra (docs "recommended")
    "morph_step": 1e-3,  # relative_step factor for morphologies (docs "recommended")
    "min_snr": 3,  # from_gaussian_moments default
    "min_corr": 0.99,  # from_gaussian_moments default
    "bands": "grizy",
}

# Same step-size objects on every call, so equinox's jit cache stays valid (partials hash by id).
_STEPS = {}
# JAX keeps every compiled blend shape in memory (~100 MB each): clear them now and then.
CLEAR_CACHES_EVERY = 10
_calls = [0]


def _step(factor):
    if factor not in _STEPS:
        _STEPS[factor] = partial(sc2.relative_step, factor=factor)
    return _STEPS[factor]


def _square_psf(psfs):
    """Zero-pad (B, h, w) PSF images to an odd square, keeping the centre pixel centred."""
    psfs = np.asarray(psfs, dtype=np.float64)
    h, w = psfs.shape[-2:]
    n = max(h, w) | 1
    pad_h, pad_w = n - h, n - w
    pad = ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
    return np.pad(psfs, pad)


def _fit(scene, obs, max_iter, e_rel):
    """``Scene.fit`` that also returns the number of optimizer steps taken.

    Counts calls to ``scarlet2.infer._make_step`` where it exists; otherwise uses the public
    ``callback``, which is slower (fit rebuilds the scene on the host for it, ~1.5 ms per step).
    """
    count = [0]
    kwargs = {"max_iter": int(max_iter), "e_rel": float(e_rel), "progress_bar": False}
    step = getattr(sc2.infer, "_make_step", None)
    if step is None:
        scene_ = scene.fit(obs, callback=lambda *_: count.__setitem__(0, count[0] + 1), **kwargs)
        return scene_, count[0]

    def counted_step(*args):
        count[0] += 1
        return step(*args)

    sc2.infer._make_step = counted_step
    try:
        scene_ = scene.fit(obs, **kwargs)
    finally:
        sc2.infer._make_step = step
    return scene_, count[0]


def _init_source(obs, center, opts):
    """Return (spectrum, morphology) or None, following the docs' init + fallback."""
    try:
        spectrum, morph = sc2.init.from_gaussian_moments(
            obs, center, min_snr=opts["min_snr"], min_corr=opts["min_corr"]
        )
        if not (jnp.all(jnp.isfinite(spectrum)) and jnp.all(jnp.isfinite(morph))):
            raise ValueError("non-finite Gaussian-moments initialisation")
    except (ValueError, AssertionError):
        try:
            spectrum = sc2.init.pixel_spectrum(obs, center)
            morph = sc2.init.compact_morphology()
        except (ValueError, AssertionError):
            return None
    # positive constraint: its inverse (log) turns negative or zero amplitudes into NaN
    floor = max(float(jnp.max(jnp.abs(spectrum))) * 1e-6, 1e-20)
    return jnp.maximum(spectrum, floor), morph


def deblend(blend: dict, options: dict) -> dict:
    """Deblend one blend with scarlet2; see module docstring and DEFAULTS for options.

    Returns flux (N, B), centroid (N, 2) (y, x) of the deconvolved source models (NaN rows for
    sources that could not be initialised), the rendered scene model (B, H, W), iterations,
    logL, init_logL, init_time, fit_time and the scarlet2 version.
    """
    _calls[0] += 1
    if _calls[0] % CLEAR_CACHES_EVERY == 0:
        jax.clear_caches()
    with contextlib.redirect_stdout(sys.stderr):  # scarlet2's init helpers print warnings
        return _deblend(blend, {**DEFAULTS, **(options or {})})


def _deblend(blend, opts):
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown scarlet2 adapter options: {sorted(unknown)}")
    images = np.asarray(blend["images"])
    if images.ndim != 3:
        raise ValueError(f"images must be (B, H, W), got {images.shape}")
    inside = ~np.asarray(blend["footprint"], bool)
    with np.errstate(divide="ignore"):
        weights = (1 / np.asarray(blend["variance"], dtype=np.float64)) * inside
    weights[~np.isfinite(weights)] = 0
    centers = np.asarray(blend["centers"]).reshape(-1, 2)
    n_src, n_band = len(centers), images.shape[0]
    sc2.set_validation(False)

    t0 = time.perf_counter()
    obs = sc2.Observation(
        images,
        weights=weights,
        psf=_square_psf(blend["psfs"]),
        channels=list(opts["bands"])[:n_band],
    )
    model_frame = sc2.Frame.from_observations(obs)
    if model_frame.bbox.spatial != obs.frame.bbox.spatial:
        raise RuntimeError("scarlet2 model frame does not match the observed pixel grid")
    obs.match(model_frame)
    kept = []
    with sc2.Scene(model_frame) as scene:
        for k, center in enumerate(centers):
            init = _init_source(obs, jnp.asarray(center, dtype=float), opts)
            if init is not None:
                sc2.Source(jnp.asarray(center, dtype=float), *init)
                kept.append(k)
    if not kept:
        raise ValueError("scarlet2: no source could be initialised")
    with sc2.Parameters(scene):
        for i, src in enumerate(scene.sources):
            sc2.Parameter(
                src.spectrum,
                name=f"spectrum:{i}",
                constraint=constraints.positive,
                stepsize=_step(opts["spectrum_step"]),
            )
            sc2.Parameter(
                src.morphology,
                name=f"morph:{i}",
                constraint=constraints.unit_interval,
                stepsize=_step(opts["morph_step"]),
            )
    init_model = jax.block_until_ready(scene())
    init_time = time.perf_counter() - t0
    init_log_l = float(obs.log_likelihood(init_model))

    t0 = time.perf_counter()
    try:
        scene_, iterations = _fit(scene, obs, opts["max_iter"], opts["e_rel"])
        final = jax.block_until_ready(scene_())
    finally:
        sc2.parameter_registry.pop(scene.registry_key, None)  # global registry, keyed by id(scene)
    fit_time = time.perf_counter() - t0

    flux = np.full((n_src, n_band), np.nan)
    centroid = np.full((n_src, 2), np.nan)
    for k, src in zip(kept, scene_.sources, strict=True):
        # the deconvolved source model in the model frame
        model = np.asarray(scene_.evaluate_source(src), dtype=np.float64)
        flux[k] = sc2.measure.flux(model)
        centroid[k] = sc2.measure.centroid(model.sum(axis=0))
    return {
        "flux": flux,
        "centroid": centroid,
        "model": np.asarray(obs.render(final), dtype=np.float32),
        "iterations": iterations,
        "logL": float(obs.log_likelihood(final)),
        "init_logL": init_log_l,
        "init_time": init_time,
        "fit_time": fit_time,
        "version": sc2.__version__,
    }
