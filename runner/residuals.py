"""Residual comparison images: one compact PNG per blend, head against base.

Six panels in one row: observed | base model | head model | base residual | head
residual | head - base, under a caption that wraps rather than being cut off. Pure
functions of the arrays: the same arrays give the same PNG bytes (Agg, text settings
pinned, no metadata, Pillow median-cut palette of ``COLOURS`` colours).

Colour panels (observed, base model, head model) are Lupton et al. (2004) asinh RGB
composites (astropy's ``make_lupton_rgb``) of the i, r, g bands as red, green, blue with
equal weights (the bands share one AB zero point, so equal weights keep true colours),
all three on ONE stretch derived from the observed image: the sky noise of the mean
intensity maps to ``NOISE_LEVEL`` of full scale, and ``Q`` is solved for so that the
brightest channel saturates at the 99.9th percentile of the intensity inside the
footprint. Negative sky is black.

Residual panels show ``chi = sum_b (image_b - model_b) / sqrt(variance_b) / sqrt(B)``
over all B bands: pure noise gives unit variance per pixel and a residual present in
several bands adds up (one of opposite sign in different bands, a colour error, cancels).
Both share one symmetric ``RdBu_r`` scale of ``LEVELS`` steps, ``+-v`` with ``v`` the 99th
percentile of ``|chi|`` inside the footprint over both maps (at least 3), rounded up to
1, 2, 3 or 5 times a power of ten; red is data above the model. Pixels outside the
footprint (not in the fit's chi^2) are washed grey. The difference panel is head model -
base model in the same noise units, on its own symmetric scale (the 99.9th percentile of
its modulus, rounded the same way). Each panel's label states its scale.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib
import numpy as np
from astropy.visualization import make_lupton_rgb
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from PIL import Image

from runner.result import BlendResult

RGB_BANDS = (2, 1, 0)  # i, r, g of g r i z y as red, green, blue
NOISE_LEVEL = 0.04  # sky sigma as a fraction of full scale on the colour panels
SATURATION_PERCENTILE = 99.9
RESIDUAL_PERCENTILE = 99.0
RESIDUAL_MIN_SCALE = 3.0
DIFFERENCE_PERCENTILE = 99.9
CMAP = "RdBu_r"
LEVELS = 21  # odd: steps of v / 10, zero in the middle of the white central step
OUTSIDE_GREY = 0.78  # grey the residuals outside the footprint are washed towards
OUTSIDE_WASH = 0.6  # fraction of that grey

PANEL_TARGET = 160  # panels are zoomed by an integer factor to about this many pixels
DPI = 100
MARGIN, GAP = 6, 6  # pixels
CAPTION_SIZE, LABEL_SIZE, MIN_LABEL_SIZE = 10.0, 8.0, 5.0  # points
COLOURS = 128
FRAME = (0.55, 0.55, 0.55)
# Text settings pinned to matplotlib's own defaults, so that no matplotlibrc changes the bytes.
RC = {
    key: matplotlib.rcParamsDefault[key]
    for key in (
        "font.family",
        "font.sans-serif",
        "font.style",
        "font.weight",
        "font.stretch",
        "text.color",
        "text.antialiased",
        "text.hinting",
        "text.hinting_factor",
        "text.kerning_factor",
    )
}


def render_comparison(
    images: np.ndarray,
    variance: np.ndarray,
    footprint: np.ndarray,
    base_model: np.ndarray,
    head_model: np.ndarray,
    caption: str,
) -> bytes:
    """The six-panel comparison PNG of one blend.

    ``images``, ``variance``, ``base_model`` and ``head_model`` are (B, H, W) in the
    bands g r i z y; ``footprint`` (H, W) is True OUTSIDE the blend, as in the HSC files.
    """
    images = np.asarray(images, dtype=np.float64)
    variance = np.asarray(variance, dtype=np.float64)
    outside = np.asarray(footprint, dtype=bool)
    base = np.asarray(base_model, dtype=np.float64)
    head = np.asarray(head_model, dtype=np.float64)
    for name, array in (("variance", variance), ("base_model", base), ("head_model", head)):
        if array.shape != images.shape:
            raise ValueError(f"{name} shape {array.shape} differs from images {images.shape}")
    if images.ndim != 3 or outside.shape != images.shape[1:]:
        raise ValueError(f"need images (B, H, W) and footprint (H, W), got {images.shape}")
    inside = ~outside if outside.any() and not outside.all() else np.ones_like(outside)

    stretch, q = lupton_stretch(images, variance, inside)
    colour = [_lupton(a, stretch, q) for a in (images, base, head)]

    sigma = np.sqrt(variance)
    scale = math.sqrt(images.shape[0])
    chi_base = ((images - base) / sigma).sum(axis=0) / scale
    chi_head = ((images - head) / sigma).sum(axis=0) / scale
    both = np.concatenate([chi_base[inside], chi_head[inside]])
    v_chi = nice_ceil(max(RESIDUAL_MIN_SCALE, _percentile(both, RESIDUAL_PERCENTILE)))
    diff = ((head - base) / sigma).sum(axis=0) / scale
    v_diff = nice_ceil(_percentile(diff, DIFFERENCE_PERCENTILE) or _percentile(diff, 100) or 1.0)

    panels = [
        *colour,
        _washed(_diverging(chi_base, v_chi), outside),
        _washed(_diverging(chi_head, v_chi), outside),
        _diverging(diff, v_diff),
    ]
    labels = [
        "observed (i r g)",
        "base model",
        "head model",
        f"base residual ±{v_chi:g}σ",
        f"head residual ±{v_chi:g}σ",
        f"head − base ±{v_diff:g}σ" if np.any(diff) else "head − base: identical",
    ]
    with matplotlib.rc_context(RC):
        return _compose(panels, labels, caption)


def render_blend(result_dir: Path, blend: BlendResult, blend_path: Path, caption: str) -> bytes:
    """The comparison PNG of ``blend`` from a run's arrays under ``result_dir`` and the
    observed blend file ``blend_path``; ValueError when a side has no arrays."""
    models = []
    for side, run in (("base", blend.base), ("head", blend.head)):
        if run.status != "ok" or not run.arrays:
            raise ValueError(f"{blend.dataset}/{blend.id}: {side} has no model ({run.status})")
        with np.load(Path(result_dir) / run.arrays, allow_pickle=False) as archive:
            models.append(archive["model"])
    with np.load(blend_path, allow_pickle=False) as archive:
        images, variance, footprint = (archive[k] for k in ("images", "variance", "footprint"))
    return render_comparison(images, variance, footprint, models[0], models[1], caption)


def lupton_stretch(
    images: np.ndarray, variance: np.ndarray, inside: np.ndarray
) -> tuple[float, float]:
    """The Lupton ``stretch`` and ``Q`` for the observed ``images`` (see the module).

    astropy's stretch is ``f(I) = asinh(Q I / stretch) * 0.1 / asinh(0.1 Q)`` of the mean
    intensity ``I``; every channel is scaled by ``f(I) / I``, so the brightest channel
    (``colour`` times the mean) saturates where ``f(I) = 1 / colour``.
    """
    bands = list(RGB_BANDS)
    sigma = float(np.median(np.sqrt(variance[bands]))) / len(bands) ** 0.5
    intensity = images[bands].mean(axis=0)
    peak = float(np.percentile(intensity[inside], SATURATION_PERCENTILE))
    bright = inside & (intensity >= peak)
    colour = max(1.0, float(np.median(images[bands].max(axis=0)[bright] / intensity[bright])))
    if not (sigma > 0 and math.isfinite(peak)) or colour * NOISE_LEVEL * peak <= 1.01 * sigma:
        return max(colour * peak, sigma / NOISE_LEVEL, 1e-30), 0.0  # no range: linear

    def excess(q: float) -> float:  # > 0 below the root, < 0 above it
        soften = NOISE_LEVEL * math.asinh(0.1 * q) / (0.1 * sigma)  # f'(0) sigma = NOISE_LEVEL
        return 0.1 * colour * math.asinh(soften * peak) - math.asinh(0.1 * q)

    low, high = 1e-6, 1e6
    for _ in range(200):  # bisection in log Q
        mid = math.sqrt(low * high)
        low, high = (mid, high) if excess(mid) > 0 else (low, mid)
    q = math.sqrt(low * high)
    return q * 0.1 * sigma / (NOISE_LEVEL * math.asinh(0.1 * q)), q


def nice_ceil(value: float) -> float:
    """The smallest of 1, 2, 3, 5 times a power of ten that is >= ``value`` (> 0)."""
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"need a positive finite value, got {value}")
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 3, 5, 10):
        candidate = float(f"{step}e{exponent}")
        if candidate >= value * (1 - 1e-12):
            return candidate
    raise AssertionError("unreachable")


def _percentile(values: np.ndarray, percentile: float) -> float:
    """The percentile of ``|values|`` over its finite entries (0 when there are none)."""
    modulus = np.abs(values[np.isfinite(values)])
    return float(np.percentile(modulus, percentile)) if modulus.size else 0.0


def _lupton(cube: np.ndarray, stretch: float, q: float) -> np.ndarray:
    r, g, b = (cube[i] for i in RGB_BANDS)
    with np.errstate(invalid="ignore", divide="ignore"):  # astropy divides 0 by 0 on blank sky
        return make_lupton_rgb(r, g, b, stretch=stretch, Q=q)


def _diverging(values: np.ndarray, v: float) -> np.ndarray:
    cmap = matplotlib.colormaps[CMAP].resampled(LEVELS)
    rgba = cmap(np.clip(values / (2 * v) + 0.5, 0.0, 1.0), bytes=True)
    return rgba[..., :3]


def _washed(rgb: np.ndarray, outside: np.ndarray) -> np.ndarray:
    washed = rgb.astype(np.float64)
    washed[outside] = (1 - OUTSIDE_WASH) * washed[outside] + OUTSIDE_WASH * 255 * OUTSIDE_GREY
    return np.round(washed).astype(np.uint8)


def _text_width(renderer, text: str, size: float) -> float:
    width, _, _ = renderer.get_text_width_height_descent(text, FontProperties(size=size), False)
    return width


def _wrap(renderer, text: str, width: float, size: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels where possible."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in _chunks(renderer, paragraph.split(" "), width, size):
            trial = f"{line} {word}" if line else word
            if line and _text_width(renderer, trial, size) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _chunks(renderer, words: list[str], width: float, size: float) -> list[str]:
    """``words`` with any word wider than ``width`` cut into pieces that fit."""
    pieces = []
    for word in words:
        while len(word) > 1 and _text_width(renderer, word, size) > width:
            low, high = 1, len(word) - 1  # the longest fitting prefix, at least 1 character
            while low < high:
                mid = (low + high + 1) // 2
                low, high = (
                    (mid, high)
                    if _text_width(renderer, word[:mid], size) <= width
                    else (low, mid - 1)
                )
            cut = low
            pieces.append(word[:cut])
            word = word[cut:]
        pieces.append(word)
    return pieces


def _compose(panels: list[np.ndarray], labels: list[str], caption: str) -> bytes:
    height, width = panels[0].shape[:2]
    zoom = max(1, round(PANEL_TARGET / max(height, width)))
    pw, ph = width * zoom, height * zoom
    fig_w = 2 * MARGIN + len(panels) * pw + (len(panels) - 1) * GAP

    fig = Figure(dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    px = DPI / 72
    caption_lines = _wrap(renderer, caption, fig_w - 2 * MARGIN, CAPTION_SIZE)
    label_sizes = []
    for label in labels:
        size = LABEL_SIZE
        while size > MIN_LABEL_SIZE and _text_width(renderer, label, size) > pw:
            size -= 0.5
        label_sizes.append(size)
    caption_h = math.ceil(len(caption_lines) * CAPTION_SIZE * px * 1.25)
    label_h = math.ceil(LABEL_SIZE * px * 1.4)
    fig_h = MARGIN + caption_h + label_h + ph + MARGIN
    fig.set_size_inches(fig_w / DPI, fig_h / DPI)

    strip = np.full((ph + 2, fig_w, 3), 255, dtype=np.uint8)
    frame = np.array(FRAME) * 255
    for index, panel in enumerate(panels):
        x0 = MARGIN + index * (pw + GAP)
        strip[:, x0 - 1 : x0 + pw + 1] = frame
        strip[1:-1, x0 : x0 + pw] = np.repeat(np.repeat(panel, zoom, axis=0), zoom, axis=1)
    fig.figimage(strip, xo=0, yo=MARGIN - 1, origin="upper", resize=False)

    top = fig_h - MARGIN
    fig.text(
        MARGIN / fig_w,
        top / fig_h,
        "\n".join(caption_lines),
        size=CAPTION_SIZE,
        va="top",
        ha="left",
        linespacing=1.2,
        parse_math=False,
    )
    label_y = (MARGIN + ph + 3) / fig_h
    for index, (label, size) in enumerate(zip(labels, label_sizes, strict=True)):
        x_mid = (MARGIN + index * (pw + GAP) + pw / 2) / fig_w
        fig.text(x_mid, label_y, label, size=size, ha="center", va="bottom", parse_math=False)

    canvas.draw()
    rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    paletted = rgb.quantize(COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    paletted.save(out, format="PNG", optimize=True)
    return out.getvalue()
