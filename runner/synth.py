"""Deterministic synthetic blends in the HSC blend schema.

Each blend is an HSC-like cut-out in g r i z y with Moffat PSFs, sky and source
noise, and 2-6 bulge+disk Sérsic galaxies whose magnitudes and positions are the
truth (``matched``). The same seed always gives byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage, signal, special

from runner.datasets import BANDS, ZERO_POINT
from runner.npzio import write_npz

PIXEL_SCALE = 0.168  # arcsec per HSC pixel
PSF_SIZE = 43
OVERSAMPLE = 4
# Per band: Moffat FWHM in pixels and sky variance, close to the medians of the HSC set.
PSF_FWHM = np.array([4.4, 4.0, 3.5, 3.7, 3.9])
SKY_VARIANCE = np.array([1.8e-4, 3.1e-4, 5.2e-4, 1.5e-3, 4.3e-3])
SOURCE_VARIANCE_PER_FLUX = 2e-4
STAMP_SIZES = (48, 64)
# Colours relative to i (u-i, g-i, r-i, 0, i-z, i-y) for disks (blue) and bulges (red).
DISK_COLOURS = np.array([1.4, 0.6, 0.25, 0.0, -0.1, -0.15])
BULGE_COLOURS = np.array([3.1, 1.6, 0.6, 0.0, -0.3, -0.45])

MATCHED_DTYPE = np.dtype(
    [(f"{band}magVar", "<f8") for band in ("u", *BANDS)]
    + [
        ("redshift", "<f8"),
        ("pa_bulge", "<f8"),
        ("pa_disk", "<f8"),
        ("a_b", "<f8"),
        ("b_b", "<f8"),
        ("a_d", "<f8"),
        ("b_d", "<f8"),
        ("bulge_n", "<f8"),
        ("disk_n", "<f8"),
        ("DiskHalfLightRadius", "<f8"),
        ("BulgeHalfLightRadius", "<f8"),
        ("sourceType", "S6"),
        ("fluxnorm_bulge", "<f8"),
        ("x", "<f8"),
        ("y", "<f8"),
    ]
)


@dataclass(frozen=True)
class Galaxy:
    """One bulge+disk galaxy: position in pixels, sizes in pixels, angles in degrees."""

    y: float
    x: float
    mag_i: float
    bulge_fraction: float
    disk_radius: float
    disk_q: float
    disk_pa: float
    bulge_radius: float
    bulge_q: float
    bulge_pa: float
    disk_colours: np.ndarray
    bulge_colours: np.ndarray
    redshift: float

    def fluxes(self, colours: np.ndarray, fraction: float) -> np.ndarray:
        """Flux in u g r i z y of one component."""
        mags = self.mag_i + colours
        return fraction * 10 ** ((ZERO_POINT - mags) / 2.5)


def moffat_psf(fwhm: float, beta: float, e1: float, e2: float) -> np.ndarray:
    """A normalised, slightly elliptical Moffat PSF image of PSF_SIZE squared pixels."""
    half = PSF_SIZE // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    r2 = ((1 - e1) * x**2 + (1 + e1) * y**2 - 2 * e2 * x * y) / alpha**2
    psf = (1 + r2) ** -beta
    return psf / psf.sum()


def sersic_image(
    shape: tuple[int, int], y0: float, x0: float, n: float, radius: float, q: float, pa: float
) -> np.ndarray:
    """Unit-flux elliptical Sérsic profile integrated over pixels by oversampling."""
    step = 1 / OVERSAMPLE
    offsets = (np.arange(OVERSAMPLE) + 0.5) * step - 0.5
    ys = (np.arange(shape[0])[:, None] + offsets[None, :]).ravel() - y0
    xs = (np.arange(shape[1])[:, None] + offsets[None, :]).ravel() - x0
    dy, dx = np.meshgrid(ys, xs, indexing="ij")
    theta = np.deg2rad(pa)
    major = dx * np.cos(theta) + dy * np.sin(theta)
    minor = -dx * np.sin(theta) + dy * np.cos(theta)
    r = np.sqrt(q * major**2 + minor**2 / q)
    b_n = special.gammaincinv(2 * n, 0.5)
    fine = np.exp(-b_n * ((r / radius) ** (1 / n) - 1))
    image = fine.reshape(shape[0], OVERSAMPLE, shape[1], OVERSAMPLE).sum(axis=(1, 3))
    return image / image.sum()


def random_galaxies(rng: np.random.Generator, size: int) -> list[Galaxy]:
    """2-6 galaxies, the first near the centre and the others around it."""
    count = int(rng.integers(2, 7))
    positions: list[tuple[float, float]] = []
    centre = size / 2 + rng.uniform(-2, 2, 2)
    while len(positions) < count:
        if positions:
            angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(7, size / 2 - 8)
            candidate = centre + distance * np.array([np.sin(angle), np.cos(angle)])
        else:
            candidate = centre
        inside = np.all((candidate > 8) & (candidate < size - 9))
        apart = all(np.hypot(*(candidate - np.array(p))) >= 6 for p in positions)
        if inside and apart:
            positions.append((float(candidate[0]), float(candidate[1])))
    galaxies = []
    for y, x in positions:
        galaxies.append(
            Galaxy(
                y=y,
                x=x,
                mag_i=float(rng.uniform(20.0, 24.0)),
                bulge_fraction=float(rng.uniform(0.0, 0.6)),
                disk_radius=float(rng.uniform(1.5, 5.0)),
                disk_q=float(rng.uniform(0.3, 1.0)),
                disk_pa=float(rng.uniform(0, 180)),
                bulge_radius=float(rng.uniform(0.7, 2.0)),
                bulge_q=float(rng.uniform(0.6, 1.0)),
                bulge_pa=float(rng.uniform(0, 180)),
                disk_colours=DISK_COLOURS + rng.normal(0, 0.1, 6),
                bulge_colours=BULGE_COLOURS + rng.normal(0, 0.1, 6),
                redshift=float(rng.uniform(0.1, 1.5)),
            )
        )
    return galaxies


def render_blend(seed: int, index: int) -> dict[str, np.ndarray]:
    """The arrays of blend ``index`` of the set with ``seed``, in the HSC schema."""
    rng = np.random.default_rng([seed, index])
    size = int(rng.choice(STAMP_SIZES))
    galaxies = random_galaxies(rng, size)
    pad = PSF_SIZE // 2
    canvas = (size + 2 * pad, size + 2 * pad)
    psfs = np.stack(
        [moffat_psf(f * rng.uniform(0.95, 1.05), 2.5, *rng.normal(0, 0.03, 2)) for f in PSF_FWHM]
    )
    scene = np.zeros((len(BANDS), *canvas))
    truth = np.zeros(len(galaxies), dtype=MATCHED_DTYPE)
    for row, galaxy in zip(truth, galaxies, strict=True):
        disk = sersic_image(
            canvas,
            galaxy.y + pad,
            galaxy.x + pad,
            1.0,
            galaxy.disk_radius,
            galaxy.disk_q,
            galaxy.disk_pa,
        )
        bulge = sersic_image(
            canvas,
            galaxy.y + pad,
            galaxy.x + pad,
            4.0,
            galaxy.bulge_radius,
            galaxy.bulge_q,
            galaxy.bulge_pa,
        )
        disk_flux = galaxy.fluxes(galaxy.disk_colours, 1 - galaxy.bulge_fraction)
        bulge_flux = galaxy.fluxes(galaxy.bulge_colours, galaxy.bulge_fraction)
        scene += disk_flux[1:, None, None] * disk + bulge_flux[1:, None, None] * bulge
        total = disk_flux + bulge_flux
        for band, flux in zip(("u", *BANDS), total, strict=True):
            row[f"{band}magVar"] = ZERO_POINT - 2.5 * np.log10(flux)
        row["x"], row["y"] = galaxy.x, galaxy.y
        row["redshift"] = galaxy.redshift
        row["pa_disk"], row["pa_bulge"] = galaxy.disk_pa, galaxy.bulge_pa
        row["a_d"] = galaxy.disk_radius * PIXEL_SCALE
        row["b_d"] = galaxy.disk_radius * galaxy.disk_q * PIXEL_SCALE
        row["a_b"] = galaxy.bulge_radius * PIXEL_SCALE
        row["b_b"] = galaxy.bulge_radius * galaxy.bulge_q * PIXEL_SCALE
        row["disk_n"], row["bulge_n"] = 1.0, 4.0
        row["DiskHalfLightRadius"] = galaxy.disk_radius * PIXEL_SCALE
        row["BulgeHalfLightRadius"] = galaxy.bulge_radius * PIXEL_SCALE
        row["fluxnorm_bulge"] = galaxy.bulge_fraction
        row["sourceType"] = b"galaxy"
    observed = np.stack(
        [signal.fftconvolve(band, psf, mode="same") for band, psf in zip(scene, psfs, strict=True)]
    )[:, pad:-pad, pad:-pad]
    observed = np.clip(observed, 0, None)
    sky = SKY_VARIANCE * rng.uniform(0.8, 1.2, len(BANDS))
    variance = sky[:, None, None] + SOURCE_VARIANCE_PER_FLUX * observed
    images = observed + rng.normal(size=observed.shape) * np.sqrt(variance)
    detected = observed.sum(axis=0) > 2 * np.sqrt(sky.sum())
    inside = ndimage.binary_dilation(detected, iterations=2)
    centers = np.array([[int(g.y), int(g.x)] for g in galaxies], dtype=np.int64)
    return {
        "images": images.astype(np.float32),
        "variance": variance.astype(np.float32),
        "mask": np.zeros(images.shape, dtype=np.int32),
        "footprint": ~inside,
        "psfs": psfs.astype(np.float32),
        "centers": centers,
        "matched": truth,
    }


def write_synthetic_set(out: Path, blends: int = 20, seed: int = 0) -> list[Path]:
    """Write ``blends`` synthetic blends into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(blends):
        path = out / f"synth-s{seed}-{index:04d}.npz"
        write_npz(path, render_blend(seed, index))
        paths.append(path)
    return paths
