"""Blend sets in the HSC npz schema: discovery, content hashes, validated loading.

The schema is documented in ``data/hsc/README.md``: ``images``, ``variance``
(5, H, W), ``footprint`` (H, W, True outside the blend), ``psfs`` (5, h, w),
``centers`` (N, 2) as (y, x) and ``matched``, the truth of the injected sources.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BANDS = ("g", "r", "i", "z", "y")
ZERO_POINT = 27.0
REQUIRED_KEYS = ("images", "variance", "footprint", "psfs", "centers", "matched")


class BlendError(ValueError):
    """A blend file that cannot be deblended, with the reason."""


class DatasetError(ValueError):
    """A blend set that cannot be used at all."""


@dataclass(frozen=True)
class BlendFile:
    """One blend file of a set, identified by its set, its name and its bytes."""

    dataset: str
    id: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class Dataset:
    """A directory of blend files and the content hash that identifies it."""

    name: str
    path: Path
    blends: tuple[BlendFile, ...]
    content_hash: str


@dataclass(frozen=True)
class Truth:
    """Truth of one injected source: its ``centers`` row, position and magnitudes."""

    index: int
    y: float
    x: float
    mags: tuple[float, ...]


@dataclass(frozen=True)
class Blend:
    """The validated arrays of one blend."""

    images: np.ndarray
    variance: np.ndarray
    footprint: np.ndarray
    psfs: np.ndarray
    centers: np.ndarray
    truth: tuple[Truth, ...]

    @property
    def inside(self) -> np.ndarray:
        """Pixels inside the blend footprint (the file stores the outside)."""
        return ~self.footprint


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_dataset(path: Path, name: str | None = None) -> Dataset:
    """The blend set in directory ``path`` (every ``*.npz`` in it, sorted by name)."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"dataset {path} is not a directory")
    files = sorted(path.glob("*.npz"))
    if not files:
        raise DatasetError(f"dataset {path} holds no .npz blend files")
    name = name or path.name
    blends = tuple(BlendFile(name, f.stem, f, file_sha256(f)) for f in files)
    digest = hashlib.sha256()
    for blend in blends:
        digest.update(f"{blend.id}\0{blend.sha256}\n".encode())
    return Dataset(name, path, blends, digest.hexdigest())


def open_datasets(paths: list[Path]) -> list[Dataset]:
    """Open several sets, giving sets that share a directory name distinct names."""
    datasets: list[Dataset] = []
    seen: dict[str, int] = {}
    for path in paths:
        base = Path(path).resolve().name
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}-{seen[base]}"
        datasets.append(open_dataset(path, name))
    return datasets


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in REQUIRED_KEYS if key not in archive.files]
            if missing:
                raise BlendError(f"missing key(s) {', '.join(missing)}")
            return {key: archive[key] for key in REQUIRED_KEYS}
    except BlendError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise BlendError(f"not a readable npz file ({type(error).__name__}: {error})") from None


def _check_shapes(arrays: dict[str, np.ndarray]) -> None:
    images, variance = arrays["images"], arrays["variance"]
    if images.ndim != 3 or images.shape[0] != len(BANDS):
        raise BlendError(f"images must be ({len(BANDS)}, H, W), got {images.shape}")
    if variance.shape != images.shape:
        raise BlendError(f"variance shape {variance.shape} differs from images {images.shape}")
    if arrays["footprint"].shape != images.shape[1:]:
        raise BlendError(f"footprint shape {arrays['footprint'].shape} is not {images.shape[1:]}")
    psfs = arrays["psfs"]
    if psfs.ndim != 3 or psfs.shape[0] != len(BANDS):
        raise BlendError(f"psfs must be ({len(BANDS)}, h, w), got {psfs.shape}")
    centers = arrays["centers"]
    if centers.ndim != 2 or centers.shape[1] != 2 or len(centers) == 0:
        raise BlendError(f"centers must be (N, 2) with N >= 1, got {centers.shape}")
    height, width = images.shape[1:]
    if np.any(centers < 0) or np.any(centers >= (height, width)):
        raise BlendError("a row of centers lies outside the image")


def _check_values(arrays: dict[str, np.ndarray]) -> None:
    for key in ("images", "variance", "psfs"):
        bad = ~np.isfinite(arrays[key])
        if bad.any():
            raise BlendError(f"{key} has {int(bad.sum())} non-finite pixel(s)")
    if np.any(arrays["variance"] <= 0):
        raise BlendError("variance has pixels <= 0")
    if not np.any(~arrays["footprint"]):
        raise BlendError("the footprint is empty")
    if np.any(arrays["psfs"].sum(axis=(1, 2)) <= 0):
        raise BlendError("a PSF image has no positive flux")


def _truth(matched: np.ndarray, centers: np.ndarray) -> tuple[Truth, ...]:
    names = matched.dtype.names or ()
    needed = ["x", "y", *(f"{band}magVar" for band in BANDS)]
    missing = [field for field in needed if field not in names]
    if missing:
        raise BlendError(f"matched lacks field(s) {', '.join(missing)}")
    rows = {(int(y), int(x)): index for index, (y, x) in enumerate(centers)}
    truth = []
    for source in np.atleast_1d(matched):
        key = (int(source["y"]), int(source["x"]))
        if key not in rows:
            raise BlendError(f"injected source at (y, x) = {key} matches no row of centers")
        mags = tuple(float(source[f"{band}magVar"]) for band in BANDS)
        truth.append(Truth(rows[key], float(source["y"]), float(source["x"]), mags))
    return tuple(truth)


def load_blend(path: Path) -> Blend:
    """Read and validate one blend file; raise BlendError naming what is wrong."""
    arrays = _read_arrays(Path(path))
    _check_shapes(arrays)
    _check_values(arrays)
    return Blend(
        images=arrays["images"],
        variance=arrays["variance"],
        footprint=arrays["footprint"].astype(bool),
        psfs=arrays["psfs"],
        centers=arrays["centers"].astype(np.int64),
        truth=_truth(arrays["matched"], arrays["centers"]),
    )
