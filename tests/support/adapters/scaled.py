"""A worker adapter for drift tests: deblends with ``tinydeblender`` as written by
``support.tiny_drift_repository``, whose model goes through its dependency
``tinyscale``. The "model" is the image scaled by tinyscale; each source's model is the
5x5 box of it around its centre.
"""

import time

import numpy as np
import tinydeblender


def deblend(blend, options):
    """Deblend with tinydeblender (and so with whichever tinyscale is installed)."""
    started = time.perf_counter()
    model = tinydeblender.model(blend["images"].astype(float))
    sources = np.zeros((len(blend["centers"]), *model.shape))
    for k, (y, x) in enumerate(blend["centers"]):
        box = (slice(None), slice(max(y - 2, 0), y + 3), slice(max(x - 2, 0), x + 3))
        sources[k][box] = model[box]
    return {
        "model": model.astype(np.float32),
        "source_models": sources,
        "iterations": 1,
        "converged": True,
        "logL": 0.0,
        "init_logL": -1.0,
        "init_time": 0.0,
        "fit_time": time.perf_counter() - started,
        "version": tinydeblender.__version__,
    }
