"""The worker's reply to one blend, driven over its JSON-line protocol with trivial adapters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.deblend.adapters import WORKER_DIR
from support import FAULTY_ADAPTER


def reply_of(adapter: Path, blend: Path, out: Path) -> dict:
    """Start a worker with ``adapter``, deblend ``blend`` and return its reply."""
    request = json.dumps({"blend": str(blend), "out": str(out), "options": {}})
    worker = subprocess.run(
        [sys.executable, "-I", str(WORKER_DIR / "worker.py"), str(adapter)],
        input=request + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ready, reply = (json.loads(line) for line in worker.stdout.splitlines())
    assert ready["ready"] is True
    return reply


def adapter_returning(tmp_path: Path, converged: str | None) -> Path:
    """The faulty adapter with its ``converged`` replaced by the expression ``converged``
    (removed when None)."""
    lines = [f"exec(open({str(FAULTY_ADAPTER)!r}).read())", "_deblend = deblend", ""]
    lines += ["def deblend(blend, options):", "    result = _deblend(blend, options)"]
    if converged is None:
        lines.append("    del result['converged']")
    else:
        lines += ["    import numpy as np", f"    result['converged'] = {converged}"]
    path = tmp_path / "adapter.py"
    path.write_text("\n".join([*lines, "    return result", ""]))
    return path


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("True", True), ("np.bool_(False)", False), ("np.int64(0)", False)],
)
def test_the_reply_carries_convergence_as_a_json_bool(
    synthetic_set, tmp_path, expression, expected
):
    blend = sorted(synthetic_set.glob("*.npz"))[0]
    adapter = adapter_returning(tmp_path, expression)
    reply = reply_of(adapter, blend, tmp_path / "out.npz")
    assert reply["ok"] is True
    assert reply["converged"] is expected


def test_an_adapter_that_does_not_say_whether_it_converged_errors_the_blend(
    synthetic_set, tmp_path
):
    blend = sorted(synthetic_set.glob("*.npz"))[0]
    reply = reply_of(adapter_returning(tmp_path, None), blend, tmp_path / "out.npz")
    assert reply["ok"] is False
    assert reply["error"] == "KeyError: 'converged'"
