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
    """A deblender family: its import name, its lock and its worker-side adapter file."""

    name: str
    module: str
    lock: Path
    worker_file: Path

    @property
    def lock_hash(self) -> str:
        """sha256 of the lock file: part of every environment's identity."""
        return hashlib.sha256(self.lock.read_bytes()).hexdigest()

    def lock_requirements(self) -> list[str]:
        """The pinned requirements of the lock, one ``name==version`` each."""
        lines = (line.split("#")[0].strip() for line in self.lock.read_text().splitlines())
        return [line for line in lines if line]


ADAPTERS = {
    name: Adapter(name, module, LOCK_DIR / f"{name}.txt", WORKER_DIR / f"adapter_{name}.py")
    for name, module in (("scarlet1", "scarlet"), ("scarlet2", "scarlet2"))
}


def get_adapter(name: str) -> Adapter:
    """The adapter called ``name``."""
    try:
        return ADAPTERS[name]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise AdapterError(f"unknown adapter {name!r} (known: {known})") from None


def detect_adapter(checkout: Path) -> Adapter:
    """Recognise the deblender of a source tree by the package it holds."""
    if (checkout / "src" / "scarlet2").is_dir() or (checkout / "scarlet2").is_dir():
        return ADAPTERS["scarlet2"]
    if (checkout / "scarlet").is_dir() and (checkout / "setup.py").exists():
        return ADAPTERS["scarlet1"]
    raise AdapterError(
        f"cannot tell which deblender {checkout} holds (no scarlet/ or scarlet2/ package);"
        " pass --adapter"
    )
