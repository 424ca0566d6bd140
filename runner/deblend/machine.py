"""The kind of machine this is: what a stored outcome must have been measured on to be
reused here (floating-point results may differ between CPU models and instruction sets)."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

from runner.result import Machine


@functools.cache
def this_machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> Machine:
    """This machine's CPU model, a hash of its feature flags, and its cores (Linux's
    ``/proc/cpuinfo``; elsewhere the processor's name and architecture)."""
    fields: dict[str, str] = {}
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    model = fields.get("model name") or fields.get("Model") or platform.processor()
    flags = " ".join(sorted((fields.get("flags") or fields.get("Features") or "").split()))
    features = hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:16]
    return Machine(model or platform.machine(), features, os.cpu_count() or 1)
