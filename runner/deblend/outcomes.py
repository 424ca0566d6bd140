"""Measured outcomes kept in the store, so that a side already measured is read, not
deblended again.

An outcome (one revision's measurements on one blend, and its arrays) is stored under

    outcomes/<key>/<blend sha256>.<arrays' sha256>.npz   the deblender's arrays
    outcomes/<key>/<blend sha256>.json                   the measurements, the run that
                                                         made them, the arrays' name

(the document last and create-only: a stored document means complete arrays, and the
first run to store an outcome stays its source). The key covers everything
that decides the outcome: the environment's identity (SHA, adapter, lock, Python,
recipe: ``environments.environment_key``), the adapter options, the kind of machine
(CPU model and features: floating point may differ between them) and the code that
measures (the worker, its adapter, ``measure.py``, ``datasets.py``); the blend's own
bytes name the file. Any of them changing is a miss. Only outcomes deblended without
error are kept (a timeout on a busy machine says nothing of the revision), and only the
trusted runner writes them; a revision's code can only ever make its own SHA's.

A reused side is spot-checked: a sample of its blends, chosen from the run's head SHA, is
deblended afresh and must match the stored outcome in everything measured.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from runner import datasets
from runner.datasets import BlendFile
from runner.deblend import measure
from runner.deblend.adapters import Adapter
from runner.deblend.pool import WORKER_SCRIPT
from runner.result import BlendRun, Machine, plain_to
from runner.store import ArtifactStore, KeyNotFound

PREFIX = "outcomes"
THREADS = 16  # store calls at once (GCS round trips dominate)


def measuring_code(adapter: Adapter) -> str:
    """sha256 of the code between the deblender and a measured outcome."""
    digest = hashlib.sha256()
    code = (WORKER_SCRIPT, adapter.worker_file, Path(measure.__file__), Path(datasets.__file__))
    for path in code:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def outcome_key(environment: str, options: dict, machine: Machine, adapter: Adapter) -> str:
    """The key of one side's outcomes: environment identity, options, machine, code."""
    identity = {
        "environment": environment,
        "options": options,
        "cpu": machine.cpu,
        "features": machine.features,
        "measuring": measuring_code(adapter),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Stored:
    """An outcome read from the store: the measurements, the run that made them, and
    the deblender's arrays."""

    run: BlendRun
    measured_by: str
    arrays: bytes


@dataclass(frozen=True)
class Outcomes:
    """One side's stored outcomes under ``key`` in ``store``."""

    store: ArtifactStore
    key: str

    def _name(self, name: str) -> str:
        return f"{PREFIX}/{self.key}/{name}"

    def get(self, blend: BlendFile) -> Stored | None:
        """The stored outcome of ``blend``, None when there is none or it is unreadable
        (then the blend is deblended again, as for any miss)."""
        try:
            document = json.loads(self.store.get(self._name(f"{blend.sha256}.json")))
            arrays = self.store.get(self._name(document["arrays"]))
            run = plain_to(BlendRun, document["outcome"])
            return Stored(run, str(document["measured_by"]), arrays)
        except (KeyNotFound, ValueError, KeyError, TypeError):
            return None

    def get_many(self, blends: list[BlendFile]) -> dict[BlendFile, Stored]:
        """The stored outcomes of those ``blends`` that have one."""
        with ThreadPoolExecutor(THREADS) as pool:
            found = dict(zip(blends, pool.map(self.get, blends), strict=True))
        return {blend: stored for blend, stored in found.items() if stored is not None}

    def put(self, blend: BlendFile, run: BlendRun, arrays: Path, measured_by: str) -> None:
        """Keep a fresh outcome (its arrays first), unless one is already stored: the
        first run to measure it stays its source."""
        name = self._name(f"{blend.sha256}.json")
        if self.store.exists(name):
            return
        digest = hashlib.sha256(arrays.read_bytes()).hexdigest()[:16]
        stored = f"{blend.sha256}.{digest}.npz"  # by content: a concurrent writer's are others
        self.store.put_file(self._name(stored), arrays, "application/octet-stream")
        outcome = dataclasses.asdict(dataclasses.replace(run, arrays=None))
        document = {"measured_by": measured_by, "outcome": outcome, "arrays": stored}
        self.store.create(name, json.dumps(document).encode(), "application/json")

    def put_many(self, items: list[tuple[BlendFile, BlendRun, Path]], measured_by: str) -> None:
        """Keep several fresh outcomes."""
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda item: self.put(*item, measured_by), items))


def spot_sample(blends: list[BlendFile], seed: str, count: int) -> list[BlendFile]:
    """``count`` of ``blends`` chosen by ``seed`` (the run's head SHA): the same blends for
    the same seed, others for another."""

    def rank(blend: BlendFile) -> str:
        return hashlib.sha256(f"{seed}:{blend.sha256}".encode()).hexdigest()

    return sorted(blends, key=rank)[:count]
