"""Deblending worker, run as a script by the revision's own interpreter.

It imports only the standard library, numpy and (through the adapter file named on
its command line) the deblender. Protocol, one JSON object per line: it announces
``{"ready": ...}``, then answers each request ``{"blend": npz, "out": npz,
"options": {...}}`` (the blend's inputs alone: no truth) by deblending it, writing the
arrays the adapter returned (``model``, ``source_models`` and, where the deblender
measures them itself, ``native_flux`` and ``native_centroid``) to ``out`` and replying
with the scalars (``converged`` a bool: False when the fit stopped at its iteration cap),
or with ``{"ok": false, "error": ..., "traceback": ..., "raised_in": ..., "raised_by":
...}``: ``raised_in`` is the function that raised the exception (its innermost frame),
``raised_by`` is "adapter" when that frame is in the adapter's own code or this file's
and the exception is not the adapter's ``DeblendFailure`` (the deblender could not
deblend the blend), "deblender" otherwise. Anything the deblender prints goes to stderr.
The runner times each request itself.
"""

import importlib.util
import json
import os
import platform
import sys
import traceback

import numpy as np

INPUT_KEYS = ("images", "variance", "footprint", "psfs", "centers")
ARRAY_KEYS = ("model", "source_models")
NATIVE_KEYS = ("native_flux", "native_centroid")
TRACEBACK_LINES = 12  # the traceback's last frames and the error
SCALAR_KEYS = ("iterations", "converged", "logL", "init_logL", "init_time", "fit_time")


def load_adapter(path):
    """Import the adapter module from its file."""
    spec = importlib.util.spec_from_file_location("scarlet_regression_adapter", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def deblend(adapter, request):
    """Deblend one blend file; return the reply for the parent."""
    with np.load(request["blend"], allow_pickle=False) as archive:
        blend = {key: archive[key] for key in INPUT_KEYS}
    result = adapter.deblend(blend, request.get("options", {}))
    arrays = {key: np.asarray(result[key]) for key in (*ARRAY_KEYS, *NATIVE_KEYS) if key in result}
    np.savez_compressed(request["out"], **arrays)
    reply = {key: result[key] for key in SCALAR_KEYS}
    reply["iterations"] = int(reply["iterations"])
    reply["converged"] = bool(reply["converged"])
    for key in ("logL", "init_logL", "init_time", "fit_time"):
        reply[key] = float(reply[key])
    reply.update(ok=True, version=str(result.get("version", "")))
    return reply


def raised_in(error):
    """The qualified name of the function that raised ``error`` (its innermost frame)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return None
    code = tb.tb_frame.f_code
    return getattr(code, "co_qualname", code.co_name)


def failure(adapter, error):
    """The reply for an exception: its message, traceback's last frames, the function
    that raised it and whose code that is."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = {os.path.realpath(path) for path in (adapter.__file__, __file__)}
    own = bool(frames) and os.path.realpath(frames[-1].filename) in ours
    expected = isinstance(error, getattr(adapter, "DeblendFailure", ()))
    lines = traceback.format_exception(error)
    return {
        "ok": False,
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(lines[-TRACEBACK_LINES:]).rstrip(),
        "raised_in": raised_in(error),
        "raised_by": "adapter" if own and not expected else "deblender",
    }


def main():
    """Serve requests from stdin until it closes; an adapter that cannot be imported is
    announced ``{"ready": false, ...}`` (as a failed request's reply), and the worker ends."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    try:
        adapter = load_adapter(sys.argv[1])
    except Exception as error:
        adapter = type("Unloaded", (), {"__file__": sys.argv[1]})
        protocol.write(json.dumps({"ready": False, **failure(adapter, error)}) + "\n")
        return
    ready = {"ready": True, "numpy": np.__version__, "python": platform.python_version()}
    protocol.write(json.dumps(ready) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = deblend(adapter, request)
        except Exception as error:
            reply = failure(adapter, error)
        protocol.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
