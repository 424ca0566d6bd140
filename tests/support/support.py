"""Helpers shared by the tests: paths, and blend files with parts changed or removed."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np

from runner.commands.release_repo import commit
from runner.deblend.adapters import Adapter
from runner.deblend.environments import uv_binary
from runner.deblend.revisions import git
from runner.npzio import write_npz
from runner.result import (
    BlendResult,
    BlendRun,
    Build,
    DatasetInfo,
    InjectedSource,
    Provenance,
    RevisionInfo,
    RunResult,
)

ROOT = Path(__file__).resolve().parents[2]
HSC = ROOT / "data" / "hsc"
FAULTY_ADAPTER = Path(__file__).parent / "adapters" / "faulty.py"
SCALED_ADAPTER = Path(__file__).parent / "adapters" / "scaled.py"


def write_blend_with(path: Path, source: Path, **changes) -> Path:
    """Copy the blend ``source`` to ``path`` with some arrays replaced or removed."""
    with np.load(source, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    write_npz(path, arrays)
    return path


TINY_LOCK = "setuptools==84.2.1\nwheel==0.48.0\npackaging==26.4\nnumpy==2.4.6\n"
PYPROJECT = """[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "{version}"
"""
TINY_PYPROJECT = PYPROJECT.format(name="tinydeblender", version="1.0")


def two_blends(synthetic_set: Path, folder: Path) -> Path:
    """A blend set of the first two synthetic blends, in ``folder``."""
    folder.mkdir()
    for path in sorted(synthetic_set.glob("*.npz"))[:2]:
        shutil.copy(path, folder)
    return folder


def tiny_repository(repo: Path) -> tuple[Path, str]:
    """A git repository holding a tiny installable package, ``tinydeblender`` 1.0."""
    (repo / "tinydeblender").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(TINY_PYPROJECT)
    (repo / "tinydeblender" / "__init__.py").write_text("__version__ = '1.0'\n")
    return repo, commit(repo, "1.0", init=True)


def tiny_pull_request(repo: Path) -> str:
    """A PR branch ``feature`` on the tiny repository whose models are 0.1 % brighter
    (within every tolerance: the verdict passes, with residual images); its SHA."""
    git(repo, "checkout", "--quiet", "-b", "feature")
    (repo / "tinydeblender" / "__init__.py").write_text("__version__ = '1.0'\nGAIN = 1.001\n")
    return commit(repo, "head of the PR")


def tiny_adapter(folder: Path, worker_file: Path = FAULTY_ADAPTER) -> Adapter:
    """An adapter that installs ``tinydeblender`` with a small lock and deblends with
    ``worker_file`` (by default the faulty test deblender, which needs only numpy)."""
    lock = folder / "tiny-lock.txt"
    lock.write_text(TINY_LOCK)
    return Adapter("tiny", "tinydeblender", lock, worker_file)


# tinyscale, a dependency of the tiny drift deblender: 2.0 drops the keyword 1.0 took,
# as autograd 1.9 broke scarlet v1 (every deblend raises a TypeError).
TINYSCALE = {
    "1.0": "def scale(values, factor=1.0):\n    return values * factor\n",
    "2.0": "def scale(values, *, gain=1.0):\n    return values * gain\n",
}
TINY_DRIFT_PYPROJECT = TINY_PYPROJECT + 'dependencies = ["tinyscale>=1"]\n'
TINY_DRIFT_MODULE = """import tinyscale

__version__ = "1.0"


def model(images):
    return tinyscale.scale(images, factor=1.0)
"""


def tinyscale_wheels(folder: Path, versions=("1.0", "2.0")) -> Path:
    """A wheel directory (for ``UV_FIND_LINKS``) holding the given releases of tinyscale,
    each written here and built with ``uv build``."""
    wheels = folder / "wheels"
    for version in versions:
        source = folder / f"tinyscale-{version}"
        (source / "tinyscale").mkdir(parents=True)
        (source / "pyproject.toml").write_text(PYPROJECT.format(name="tinyscale", version=version))
        (source / "tinyscale" / "__init__.py").write_text(TINYSCALE[version])
        subprocess.run(
            [uv_binary(), "build", "--quiet", "--wheel", "--out-dir", str(wheels), str(source)],
            check=True,
        )
    return wheels


def tiny_drift_repository(repo: Path) -> tuple[Path, str]:
    """A git repository holding ``tinydeblender`` 1.0, which requires ``tinyscale>=1``
    and models through it."""
    (repo / "tinydeblender").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(TINY_DRIFT_PYPROJECT)
    (repo / "tinydeblender" / "__init__.py").write_text(TINY_DRIFT_MODULE)
    return repo, commit(repo, "1.0", init=True)


def tiny_drift_adapter(folder: Path) -> Adapter:
    """The tiny adapter for ``tiny_drift_repository``: the tiny lock plus tinyscale 1.0."""
    lock = folder / "tiny-drift-lock.txt"
    lock.write_text("# The tiny drift deblender's lock.\n" + TINY_LOCK + "tinyscale==1.0\n")
    return Adapter("tiny", "tinydeblender", lock, SCALED_ADAPTER)


BANDS = ["g", "r", "i", "z", "y"]


def synthetic_result(
    blends=40, sources=3, seed=1, timing_noise=0.05, error=(0.03, 0.08)
) -> RunResult:
    """Base and head with identical science and timing that differs by machine noise only;
    magnitude errors drawn from a normal distribution of ``error`` (mean, sigma)."""
    rng = np.random.default_rng(seed)
    results = []
    for index in range(blends):
        injected = [
            InjectedSource(
                index=k,
                y=10.0,
                x=10.0,
                mag_true=[22.0] * 5,
                mag=[22.0] * 5,
                mag_error=list(rng.normal(*error, 5)),
                centroid_offset=float(abs(rng.normal(0.5, 0.2))),
            )
            for k in range(sources)
        ]
        fit = float(rng.uniform(0.5, 3.0))
        base = BlendRun(
            status="ok",
            init_time=0.1 * fit,
            fit_time=fit,
            iterations=int(rng.integers(20, 100)),
            logL=float(rng.uniform(5e3, 3e4)),
            init_logL=float(rng.uniform(1e3, 5e3)),
            chi2_dof=float(rng.normal(1.0, 0.05)),
            model_hash=f"{index:064x}",
            injected=injected,
        )
        head = copy.deepcopy(base)
        noise = float(np.exp(rng.normal(0, timing_noise)))
        head.fit_time, head.init_time = base.fit_time * noise, base.init_time * noise
        results.append(
            BlendResult("set", f"b{index}", "0" * 64, sources, [40, 40], base, head, 5 * 1600)
        )
    revision = RevisionInfo("main", "a" * 40, Build("ok"))
    datasets = [DatasetInfo("set", "/data/set", "c" * 64, blends)]
    provenance = Provenance(
        "repo",
        "scarlet1",
        "lock",
        revision,
        copy.deepcopy(revision),
        None,
        datasets,
        {},
        "0",
        "",
        "",
        "",
    )
    return RunResult(provenance, BANDS, results)


def shift_head(result: RunResult, band: int, shift: float, model=True) -> RunResult:
    """Head's magnitude errors in ``band`` moved by ``shift`` (its magnitudes by -shift);
    its models differ too unless ``model`` is False (a change in the measurement only)."""
    for blend in result.blends:
        if model:
            blend.head.model_hash = "f" * 64
        for source in blend.head.injected:
            source.mag_error[band] += shift
            source.mag[band] -= shift
    return result


def fast_retry(deadline: float = 1.0):
    """GCS's DEFAULT_RETRY with a short deadline, so failing tests stay fast."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(deadline).with_delay(initial=0.02, maximum=0.1)
