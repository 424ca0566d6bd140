"""Residual comparison images: deterministic bytes, six-panel layout, RGB residuals on a
fixed stated stretch, a floor under the difference, size on real blends; and which blends
get one."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from runner.judge.compare import compare
from runner.judge.policy import CompareConfig
from runner.npzio import write_npz
from runner.publish import residuals
from runner.publish.publish import store_residual_images
from runner.publish.residuals import render_blend, render_comparison
from runner.result import BlendResult, BlendRun, DatasetInfo
from runner.store import LocalStore
from support import HSC, synthetic_result

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


GREY = 128  # zero: mid-grey, exactly (the palette holds the scale bars' greys)


def _decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB")).astype(int)


def _geometry(rgb: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(zoom, panel width, panel height, first panel row), checked against the image."""
    height, width = shape
    zoom = max(1, round(residuals.PANEL_TARGET / max(height, width)))
    pw, ph = width * zoom, height * zoom
    assert rgb.shape[1] == 2 * residuals.MARGIN + 6 * pw + 5 * residuals.GAP
    frame = np.round(np.array(residuals.FRAME) * 255).astype(int)
    rows = np.flatnonzero((rgb[:, residuals.MARGIN - 1] == frame).all(axis=1))
    assert rows.tolist() == list(range(rows[0], rows[0] + ph + 2)), "one framed run of rows"
    assert rows[0] > 2 * residuals.MARGIN  # caption and labels above the panels
    return zoom, pw, ph, rows[0] + 1


def _panels(rgb: np.ndarray, shape: tuple[int, int]) -> list[np.ndarray]:
    """The six panel interiors, checked against the layout the geometry implies."""
    _, pw, ph, top = _geometry(rgb, shape)
    margin, gap = residuals.MARGIN, residuals.GAP
    band = rgb[top : top + ph]
    white = (band >= 250).all(axis=(0, 2))
    edges = np.flatnonzero(np.diff(white.astype(int)))
    # Six framed panels separated by white columns: starts and ends of 6 dark runs.
    starts, ends = edges[::2] + 1, edges[1::2] + 1
    expected = [margin - 1 + i * (pw + gap) for i in range(6)]
    assert starts.tolist() == expected
    assert (ends - starts).tolist() == [pw + 2] * 6
    return [band[:, s + 1 : s + 1 + pw] for s in expected]


def _render(arrays: dict, base: np.ndarray, head: np.ndarray, caption: str = CAPTION) -> bytes:
    return render_comparison(
        arrays["images"], arrays["variance"], arrays["footprint"], base, head, caption
    )


def _truth_and_noise(seed: int = 0) -> tuple[dict, np.ndarray]:
    """``_blend`` whose model is the truth: the image minus its noise; and the source mask."""
    arrays = _blend(seed)
    light = arrays["model"][1]
    return arrays, light > 0.3


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
    png = _render(arrays, model, model)
    panels = _panels(_decode(png), model.shape[1:])
    assert b"Software" not in png
    assert (panels[5] == GREY).all()  # zero difference: mid-grey, exactly
    assert (panels[3] == panels[4]).all()  # the same residual on the same scale
    assert (panels[1] == panels[2]).all()
    assert not (panels[0] == panels[1]).all()  # observed has noise, the model has none


def test_a_colour_error_is_coloured_even_where_the_bands_cancel():
    arrays, source = _truth_and_noise()
    truth = arrays["model"]
    # Head moves flux from y to g: the sum over bands of chi is unchanged pixel by pixel.
    head = truth.copy()
    shift = 0.4 * truth[1]
    head[0] += shift
    head[4] -= shift
    panels = [p.astype(float) for p in _panels(_decode(_render(arrays, truth, head)), (40, 50))]
    zoom = panels[0].shape[0] // 40
    inside = np.repeat(np.repeat(source, zoom, axis=0), zoom, axis=1)
    red, blue = 0, 2
    base_residual, head_residual, difference = (p[inside] for p in panels[3:])
    # Base residual is noise: grey on average. Head's data are above it in y (red) and
    # below it in g (blue); the difference is the other way round.
    assert abs(base_residual[:, red].mean() - base_residual[:, blue].mean()) < 3
    assert head_residual[:, red].mean() - head_residual[:, blue].mean() > 30
    assert difference[:, blue].mean() - difference[:, red].mean() > 30
    assert np.abs(difference[:, 1] - GREY).max() <= 1  # green (r i z) untouched


def test_the_residual_stretch_is_fixed_and_the_same_in_every_band_is_grey():
    arrays, source = _truth_and_noise()
    truth = arrays["model"].astype(np.float64)
    noiseless = dict(arrays, images=truth)
    sigma = np.sqrt(arrays["variance"])
    even = truth - 3 * sigma * source  # data 3 sigma above the model in every band
    bright = even.copy()
    bright[:, :4, -4:] -= 300 * sigma[:, :4, -4:]  # and, in a far corner, 300 sigma
    first, second = (
        _panels(_decode(_render(noiseless, m, m)), (40, 50))[3] for m in (even, bright)
    )
    zoom = first.shape[0] // 40
    far = np.ones((40, 50), dtype=bool)
    far[:4, -4:] = False
    far = np.repeat(np.repeat(far, zoom, axis=0), zoom, axis=1)
    assert (first[far] == second[far]).all(), "a bright corner changes nothing else"
    corner = second[~far]  # saturated, faded outside the footprint
    assert (corner == corner[0]).all() and (corner[0] > GREY + 20).all()
    inside = np.repeat(np.repeat(source, zoom, axis=0), zoom, axis=1)
    fraction = residuals.RESIDUAL_STRETCH(np.array([3.0]))[0]
    expected = round(255 * (0.5 + 0.5 * round(fraction * residuals.STEPS) / residuals.STEPS))
    assert (first[inside] == expected).all() and expected > GREY + 30  # grey, at the stretch


def test_the_difference_has_a_floor_round_off_is_blank_a_tenth_of_sigma_is_not():
    arrays, source = _truth_and_noise()
    base = arrays["model"].astype(np.float64)
    sigma = np.sqrt(arrays["variance"])
    round_off = base * (1 + 1e-7)
    assert np.abs((round_off - base) / sigma).max() > 0
    tenth = base.copy()
    tenth[4] += 0.1 * sigma[4] * source  # 0.1 sigma in y alone, over the sources
    identical, rounded, changed = (
        _panels(_decode(_render(arrays, base, head)), (40, 50))[5]
        for head in (base, round_off, tenth)
    )
    assert (identical == GREY).all() and (rounded == GREY).all()
    zoom = changed.shape[0] // 40
    inside = np.repeat(np.repeat(source, zoom, axis=0), zoom, axis=1)
    assert (changed[inside][:, 0] > GREY).all() and (changed[~inside] == GREY).all()
    assert _render(arrays, base, round_off) != _render(arrays, base, base)  # labels differ


def test_scale_bars_are_grey_ramps_in_the_panels_steps():
    arrays = _blend()
    model = arrays["model"]
    rgb = _decode(_render(arrays, model, model * 1.05))
    _, pw, ph, top = _geometry(rgb, (40, 50))
    row = rgb[top + ph + 1 + residuals.GAP // 2 + residuals.BAR_HEIGHT // 2]
    for first, last in ((3, 4), (5, 5)):
        x0 = residuals.MARGIN + first * (pw + residuals.GAP)
        ramp = row[x0 : x0 + (last - first + 1) * pw + (last - first) * residuals.GAP]
        assert (ramp == ramp[:, :1]).all(), "grey"
        levels = ramp[:, 0]
        assert (np.diff(levels) >= 0).all() and levels[0] == 0 and levels[-1] == 255
        assert len(set(levels.tolist())) == 2 * residuals.STEPS + 1


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


def test_blends_with_identical_models_get_no_image(tmp_path: Path):
    result = synthetic_result(blends=3)
    folder = tmp_path / "set"
    folder.mkdir()
    result.provenance.datasets = [DatasetInfo("set", str(folder), "c" * 64, 3)]
    for index, blend in enumerate(result.blends):
        arrays = _blend(seed=index)
        np.savez(
            folder / f"{blend.id}.npz",
            **{k: arrays[k] for k in ("images", "variance", "footprint")},
        )
        for side in ("base", "head"):
            model = arrays["model"] * (1.1 if side == "head" and index == 1 else 1.0)
            run = getattr(blend, side)
            run.arrays = f"blends/set/{blend.id}.{side}.npz"
            (tmp_path / run.arrays).parent.mkdir(parents=True, exist_ok=True)
            write_npz(tmp_path / run.arrays, {"model": model})
    result.blends[1].head.model_hash = "f" * 64
    result.comparison = compare(result, CompareConfig())
    store = LocalStore(tmp_path / "store")
    keys = store_residual_images(result, tmp_path, store)
    assert list(keys) == [("set", "b1")]
    image = tmp_path / "store" / keys[("set", "b1")]
    before = image.stat().st_mtime_ns
    assert store_residual_images(result, tmp_path, store) == keys  # stored once
    assert image.stat().st_mtime_ns == before
    assert len(list((tmp_path / "store" / "images").iterdir())) == 1


@pytest.mark.hsc
def test_real_blend_is_small_and_laid_out():
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
