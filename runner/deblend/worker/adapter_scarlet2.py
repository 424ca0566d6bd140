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

Convergence. scarlet2 0.5's own test (``max_change < e_rel``: the largest ``|dx| / |x|`` of
Adam's update ``dx`` to a parameter ``x``, in unconstrained coordinates) never holds here:
with ``relative_step`` the update is ``-factor * |x| * m/sqrt(v)``, so the measure is
``factor * |m/sqrt(v)|``, and Adam's normalised step does not shrink near the optimum. On HSC
blends it stays at 3e-4 to 3e-3 for the morphologies (factor 1e-3) however long the fit runs,
above ``e_rel`` = 1e-4, and every fit ran to ``max_iter``. The adapter replaces
it with scarlet v1's test on the loss (``Blend.fit``: ``|L_t - L_{t-1}| < e_rel |L_t|``, L
being scarlet2's loss, the negative log-posterior), required on ``PATIENCE`` consecutive
steps because Adam's loss is not monotone. A fit that stops at ``max_iter`` without passing
it is reported ``converged: False``. ``e_rel`` is 1e-5: L is about 1.4 per pixel (the
normalisation's 0.92 included), so at 1e-4 a fit stopped while still gaining ~3e-4 in
chi²/dof a step, and on HSC blends ended 0.01-0.1 in chi²/dof short of the 1000-step fit,
beyond the comparison's tolerance; at 1e-5 within 0.02, after 195-760 steps (1 of 12 blends,
whose loss oscillates, reaches the 1000-step cap).

Timing. Every ``Scene.fit`` traces its step afresh (it builds a new parameter class and
optimizer per call), and a blend shape not seen before is compiled by XLA, seconds that
dwarf the fit. So each blend is first deblended untimed with a ``WARM_UP_ITER``-step fit and
its result discarded: XLA's output lands in the persistent compilation cache and the
initialisation's in memory, and the timed pass pays only the per-call trace, as any caller
of ``Scene.fit`` would. Both passes are the same deterministic computation, so the warm-up
does not change the result (option ``warm_up=False`` skips it).
"""

import contextlib
import math
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
    "e_rel": 1e-5,  # of the loss test (see above); the docs' 1e-4 is of scarlet2's own test
    "spectrum_step": 0.05,  # relative_step factor for spectra (docs "recommended")
    "morph_step": 1e-3,  # relative_step factor for morphologies (docs "recommended")
    "min_snr": 3,  # from_gaussian_moments default
    "min_corr": 0.99,  # from_gaussian_moments default
    "bands": "grizy",
    "warm_up": True,  # an untimed deblend with a WARM_UP_ITER-step fit first (see above)
}
# Steps in a row the loss test must hold: on HSC blends Adam's loss rises on up to a third of
# the steps, and the test on one step stopped some fits after ~30 steps, far from the optimum.
PATIENCE = 10
WARM_UP_ITER = 1

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


class _Converged(Exception):
    """Raised by the fit's callback to end a converged fit; carries the fitted scene."""

    def __init__(self, scene):
        super().__init__("converged")
        self.scene = scene


def _loss_change(losses: list[float]) -> float:
    """Largest |L_t - L_(t-1)| / |L_t| over the last PATIENCE steps; inf before that many."""
    if len(losses) <= PATIENCE:
        return math.inf
    last = np.asarray(losses[-PATIENCE - 1 :])
    return float(np.max(np.abs(np.diff(last)) / np.abs(last[1:])))


def _fit(scene, obs, max_iter: int, e_rel: float):
    """``Scene.fit`` stopped by the loss test; returns (scene, steps taken, converged).

    Wraps ``scarlet2.infer._make_step`` where it exists, handing the fit loop the loss
    change in place of its own convergence measure (so its ``max_change < e_rel`` test is
    the loss test); otherwise stops from the public ``callback``, which is slower (fit
    rebuilds the scene on the host for it, ~1.5 ms per step). Both stop at the same step.
    """
    losses = []
    kwargs = {"max_iter": int(max_iter), "progress_bar": False}
    step = getattr(getattr(sc2, "infer", None), "_make_step", None)
    if step is None:
        scene_ = _fit_by_callback(scene, obs, losses, e_rel, kwargs)
    else:

        def step_(*args):
            values, loss, opt_state, convergence = step(*args)
            losses.append(float(loss))
            change = _loss_change(losses)
            return values, loss, opt_state, jax.tree.map(lambda _: change, convergence)

        sc2.infer._make_step = step_
        try:
            scene_ = scene.fit(obs, e_rel=float(e_rel), **kwargs)
        finally:
            sc2.infer._make_step = step
    return scene_, len(losses), _loss_change(losses) < e_rel


def _fit_by_callback(scene, obs, losses, e_rel, kwargs):
    """``Scene.fit`` with scarlet2's own test off (``e_rel=0``), ended by the callback."""

    def callback(scene_, _convergence, loss, *_):
        losses.append(float(loss))
        if _loss_change(losses) < e_rel:
            raise _Converged(scene_)

    try:
        return scene.fit(obs, e_rel=0.0, callback=callback, **kwargs)
    except _Converged as stop:
        return stop.scene


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
    converged (False when the fit stopped at max_iter), logL, init_logL, init_time, fit_time
    and the scarlet2 version.
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
    psf = _square_psf(blend["psfs"])
    n_src, n_band = len(centers), images.shape[0]
    sc2.set_validation(False)

    if opts["warm_up"]:
        _deblend_pass(images, weights, psf, centers, {**opts, "max_iter": WARM_UP_ITER})
    run = _deblend_pass(images, weights, psf, centers, opts)
    obs, scene_, final = run["obs"], run["scene"], run["final"]

    flux = np.full((n_src, n_band), np.nan)
    centroid = np.full((n_src, 2), np.nan)
    for k, src in zip(run["kept"], scene_.sources, strict=True):
        # the deconvolved source model in the model frame
        model = np.asarray(scene_.evaluate_source(src), dtype=np.float64)
        flux[k] = sc2.measure.flux(model)
        centroid[k] = sc2.measure.centroid(model.sum(axis=0))
    return {
        "flux": flux,
        "centroid": centroid,
        "model": np.asarray(obs.render(final), dtype=np.float32),
        "iterations": run["iterations"],
        "converged": run["converged"],
        "logL": float(obs.log_likelihood(final)),
        "init_logL": float(obs.log_likelihood(run["init_model"])),
        "init_time": run["init_time"],
        "fit_time": run["fit_time"],
        "version": sc2.__version__,
    }


def _deblend_pass(images, weights, psf, centers, opts) -> dict:
    """Initialise and fit once, timing both; the warm-up and the measured pass alike."""
    t0 = time.perf_counter()
    obs = sc2.Observation(
        images, weights=weights, psf=psf, channels=list(opts["bands"])[: images.shape[0]]
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

    t0 = time.perf_counter()
    try:
        scene_, iterations, converged = _fit(scene, obs, opts["max_iter"], opts["e_rel"])
        final = jax.block_until_ready(scene_())
    finally:
        sc2.parameter_registry.pop(scene.registry_key, None)  # global registry, keyed by id(scene)
    return {
        "obs": obs,
        "scene": scene_,
        "kept": kept,
        "init_model": init_model,
        "final": final,
        "iterations": iterations,
        "converged": bool(converged),
        "init_time": init_time,
        "fit_time": time.perf_counter() - t0,
    }
