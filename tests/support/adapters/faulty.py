"""A worker adapter for harness tests: a trivial deblender that misbehaves on request.

The fault is read from ``images[0, 0, 0]`` of the blend, which the tests set:
1001 raises, 1002 hangs, 1003 kills the process, 1004 returns NaNs, 1005 prints to
stdout before answering, 1006 allocates memory without bound, 1007 fails in this
adapter's own code (a tool failure); every blend fails (the deblender's
``DeblendFailure``) where the installed ``tinydeblender.BROKEN`` is true. Otherwise the
"model" is the image times the installed ``tinydeblender.GAIN`` (1 where it has none), and
each source's model the 5x5 box of it around its centre. Each deblend works the CPU for
``tinydeblender.WORK`` seconds (0.02 where it has none), so that its CPU time can be
measured.
"""

import os
import signal
import time

import numpy as np

FAULTS = {
    1001.0: "raise",
    1002.0: "hang",
    1003.0: "crash",
    1004.0: "nan",
    1005.0: "print",
    1006.0: "allocate",
    1007.0: "adapter",
}


class DeblendFailure(RuntimeError):
    """The deblender could not deblend the blend (its failure, not this adapter's)."""


def _setting(name, default):
    """The installed tinydeblender's ``name``; ``default`` where it has none or (the pool
    tests run this file with the test interpreter) where no tinydeblender is installed."""
    try:
        import tinydeblender
    except ImportError:
        return default
    return getattr(tinydeblender, name, default)


def _work(seconds):
    """Keep the CPU busy for ``seconds`` of this process's CPU time."""
    until = time.process_time() + seconds
    total = 0
    while time.process_time() < until:
        total += sum(range(1000))
    return total


def _check_box(centers):
    """A deblender bug: every blend errors (the deblender's failure, not the adapter's)."""
    raise DeblendFailure(f"{len(centers)} centres outside the box")


def boxes(model, centers):
    """Each source's model: the 5x5 box of ``model`` around its centre, zero elsewhere."""
    sources = np.zeros((len(centers), *model.shape))
    for k, (y, x) in enumerate(centers):
        box = (slice(None), slice(max(y - 2, 0), y + 3), slice(max(x - 2, 0), x + 3))
        sources[k][box] = model[box]
    return sources


def deblend(blend, options):
    """Deblend trivially, or fail in the way the blend asks for."""
    started = time.perf_counter()
    fault = FAULTS.get(float(blend["images"][0, 0, 0]))
    if fault == "raise":
        raise DeblendFailure("the deblender gave up")
    if fault == "hang":
        time.sleep(3600)
    if fault == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "allocate":
        hoard = []
        while True:
            hoard.append(np.ones(2**24))  # 128 MiB more, touched, every step
            time.sleep(0.05)
    if fault == "print":
        print("chatty deblender output on stdout")
    if fault == "adapter":
        _values, _loss = (1, 2, 3)  # an API whose return changed under the adapter
    if _setting("BROKEN", False):
        _check_box(blend["centers"])
    _work(_setting("WORK", 0.02))
    images = blend["images"].astype(float) * _setting("GAIN", 1.0)
    source_models = boxes(images, blend["centers"])
    model = images.copy()
    if fault == "nan":
        model[:, 0, 0] = np.nan
    return {
        "model": model.astype(np.float32),
        "source_models": source_models,
        "iterations": 1,
        "converged": True,
        "logL": 0.0,
        "init_logL": -1.0,
        "init_time": 0.0,
        "fit_time": time.perf_counter() - started,
        "version": "faulty-1",
    }
