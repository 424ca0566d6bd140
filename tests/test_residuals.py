"""Residual comparison images: deterministic bytes, six-panel layout, size on real blends."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from runner import residuals
from runner.npzio import write_npz
from runner.residuals import render_blend, render_comparison
from runner.result import BlendResult, BlendRun
from support import HSC

BLEND = HSC / "set3" / "43160195076981231.npz"  # the largest set3 blend: 162 x 167, 28 sources
CAPTION = "43161144264753294 · Δχ²/dof +0.03 · Δmag_r −0.012"


def _blend(seed: int = 0, shape: tuple[int, int] = (40, 50)) -> dict[str, np.ndarray]:
    """A small blend: two Gaussian galaxies in 5 bands with noise, and a smooth model."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    light = np.exp(-((y - 18) ** 2 + (x - 20) ** 2) / 30) + 0.5 * np.exp(
        -((y - 25) ** 2 + (x - 35) ** 2) / 12
    )
    sed = np.array([0.5, 1.0, 1.5, 1.8, 2.0])[:, None, None]
    model = (sed * light).astype(np.float32)
    variance = np.full((5, *shape), 0.01)
    images = model + rng.normal(0, 0.1, model.shape)
    footprint = light < 0.05  # True outside
    return {"images": images, "variance": variance, "footprint": footprint, "model": model}


def _decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB")).astype(int)


def _panels(rgb: np.ndarray, shape: tuple[int, int]) -> list[np.ndarray]:
    """The six panel interiors, checked against the layout the geometry implies."""
    height, width = shape
    zoom = max(1, round(residuals.PANEL_TARGET / max(height, width)))
    pw, ph = width * zoom, height * zoom
    margin, gap = residuals.MARGIN, residuals.GAP
    assert rgb.shape[1] == 2 * margin + 6 * pw + 5 * gap
    assert rgb.shape[0] > ph + 2 * margin  # caption and labels above the panels
    band = rgb[-margin - ph : -margin]  # the panel rows
    white = (band >= 250).all(axis=(0, 2))
    edges = np.flatnonzero(np.diff(white.astype(int)))
    # Six framed panels separated by white columns: starts and ends of 6 dark runs.
    starts, ends = edges[::2] + 1, edges[1::2] + 1
    expected = [margin - 1 + i * (pw + gap) for i in range(6)]
    assert starts.tolist() == expected
    assert (ends - starts).tolist() == [pw + 2] * 6
    return [band[:, s + 1 : s + 1 + pw] for s in expected]


def test_same_arrays_give_the_same_bytes():
    rc = dict(matplotlib.rcParams)
    arrays = _blend()
    args = (arrays["images"], arrays["variance"], arrays["footprint"])
    base, head = arrays["model"], arrays["model"] * 1.05
    first = render_comparison(*args, base, head, CAPTION)
    second = render_comparison(*args, base.copy(), head.copy(), CAPTION)
    assert first == second
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"Software" not in first and b"matplotlib" not in first
    assert render_comparison(*args, base, head * 1.1, CAPTION) != first
    assert dict(matplotlib.rcParams) == rc  # no global state changed


def test_layout_and_identical_models_give_a_blank_difference():
    arrays = _blend()
    model = arrays["model"]
    png = render_comparison(
        arrays["images"], arrays["variance"], arrays["footprint"], model, model, CAPTION
    )
    panels = _panels(_decode(png), model.shape[1:])
    assert b"Software" not in png
    zero = np.array(matplotlib.colormaps[residuals.CMAP](0.5, bytes=True)[:3], dtype=int)
    difference = panels[5].reshape(-1, 3)
    assert (difference == difference[0]).all()  # uniform
    assert np.abs(difference[0] - zero).max() <= 6  # the zero colour, up to the palette
    assert (panels[3] == panels[4]).all()  # the same residual on the same scale
    assert (panels[1] == panels[2]).all()
    assert not (panels[0] == panels[1]).all()  # observed has noise, the model has none


def test_long_caption_wraps_inside_the_image():
    arrays = _blend(shape=(20, 30))
    args = (arrays["images"], arrays["variance"], arrays["footprint"])
    model = arrays["model"]
    short = _decode(render_comparison(*args, model, model, "x"))
    long = _decode(
        render_comparison(*args, model, model, " · ".join([CAPTION] * 6) + " " + "9" * 300)
    )
    assert long.shape[1] == short.shape[1] and long.shape[0] > short.shape[0] + 30
    border = np.concatenate(
        [
            long[:2].reshape(-1, 3),
            long[-2:].reshape(-1, 3),
            long[:, :2].reshape(-1, 3),
            long[:, -2:].reshape(-1, 3),
        ]
    )
    assert (border >= 250).all()  # no text runs into the edges
    _panels(long, model.shape[1:])


def test_render_blend_loads_the_run_arrays(tmp_path: Path):
    arrays = _blend()
    blend_path = tmp_path / "b1.npz"
    np.savez(
        blend_path,
        images=arrays["images"],
        variance=arrays["variance"],
        footprint=arrays["footprint"],
    )
    runs = {}
    for side, model in (("base", arrays["model"]), ("head", arrays["model"] * 0.9)):
        relative = f"blends/set/b1.{side}.npz"
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        write_npz(tmp_path / relative, {"model": model, "flux": np.ones((1, 5))})
        runs[side] = BlendRun(status="ok", arrays=relative)
    blend = BlendResult("set", "b1", "0" * 64, 2, [40, 50], runs["base"], runs["head"])
    png = render_blend(tmp_path, blend, blend_path, CAPTION)
    expected = render_comparison(
        arrays["images"],
        arrays["variance"],
        arrays["footprint"],
        arrays["model"],
        arrays["model"] * 0.9,
        CAPTION,
    )
    assert png == expected
    blend.head = BlendRun(status="errored", error="boom")
    with pytest.raises(ValueError, match="head has no model"):
        render_blend(tmp_path, blend, blend_path, CAPTION)


def test_nice_ceil():
    assert [residuals.nice_ceil(v) for v in (0.7, 1, 2.6, 4, 7, 0.031)] == [1, 1, 3, 5, 10, 0.05]


@pytest.mark.hsc
def test_real_blend_is_small_and_laid_out():
    if not BLEND.is_file():
        pytest.skip(f"real HSC blends not found at {BLEND.parent}")
    with np.load(BLEND) as archive:
        images, variance, footprint = archive["images"], archive["variance"], archive["footprint"]
    # A stand-in for a deblender's model: the smoothed image, blank where it is sky.
    smooth = gaussian_filter(images, (0, 1.0, 1.0))
    sky = smooth < 3 * np.sqrt(variance) / math.sqrt(2 * math.pi)
    base = np.where(sky, 0, smooth).astype(np.float32)
    head = np.where(sky, 0, gaussian_filter(images, (0, 1.3, 1.3))).astype(np.float32)
    png = render_comparison(images, variance, footprint, base, head, CAPTION)
    assert len(png) <= 60_000
    panels = _panels(_decode(png), images.shape[1:])
    assert len({p.shape for p in panels}) == 1
