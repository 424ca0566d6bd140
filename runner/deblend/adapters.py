"""The deblenders the runner knows: how to install one and which worker adapter drives it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).parent
WORKER_DIR = PACKAGE / "worker"
LOCK_DIR = PACKAGE / "locks"


class AdapterError(ValueError):
    """An unknown adapter, or a repository whose deblender cannot be recognised."""


@dataclass(frozen=True)
class Adapter:
    """A deblender family: its import name, its lock, its worker-side adapter file and
    the folder that marks its source tree (``marker``, relative to the tree's root)."""

    name: str
    module: str
    lock: Path
    worker_file: Path
    markers: tuple[str, ...] = ()

    @property
    def lock_hash(self) -> str:
        """sha256 of the lock file: part of every environment's identity."""
        return hashlib.sha256(self.lock.read_bytes()).hexdigest()

    def lock_requirements(self) -> list[str]:
        """The pinned requirements of the lock, one ``name==version`` each."""
        lines = (line.split("#")[0].strip() for line in self.lock.read_text().splitlines())
        return [line for line in lines if line]


def _adapter(name: str, module: str, *markers: str) -> Adapter:
    return Adapter(
        name, module, LOCK_DIR / f"{name}.txt", WORKER_DIR / f"adapter_{name}.py", markers
    )


# In the order they are recognised: the first whose marker a tree holds.
ADAPTERS = {
    adapter.name: adapter
    for adapter in (
        _adapter("scarlet_lite", "lsst.scarlet.lite", "python/lsst/scarlet/lite"),
        _adapter("scarlet2", "scarlet2", "src/scarlet2", "scarlet2"),
        _adapter("scarlet1", "scarlet", "scarlet"),
    )
}


def get_adapter(name: str) -> Adapter:
    """The adapter called ``name``."""
    try:
        return ADAPTERS[name]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise AdapterError(f"unknown adapter {name!r} (known: {known})") from None


def detect_adapter(checkout: Path) -> Adapter:
    """Recognise the deblender of a source tree by the package it holds (scarlet v1's
    ``scarlet/`` only beside a ``setup.py``)."""
    for adapter in ADAPTERS.values():
        for marker in adapter.markers:
            if (checkout / marker).is_dir() and (
                adapter.name != "scarlet1" or (checkout / "setup.py").exists()
            ):
                return adapter
    known = ", ".join(m for a in ADAPTERS.values() for m in a.markers)
    raise AdapterError(
        f"cannot tell which deblender {checkout} holds (none of {known}); pass --adapter"
    )
