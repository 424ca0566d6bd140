"""Residual comparison images: one compact PNG per blend, head against base.

Six panels in one row: observed | base model | head model | base residual | head
residual | head - base, under a caption that wraps rather than being cut off, with a
stated scale bar under the residual pair and under the difference. Pure functions of the
arrays: the same arrays give the same PNG bytes (Agg, text settings pinned, no metadata,
a palette of ``COLOURS`` colours: the scale bars' greys exactly, the rest by median cut).

Colour panels (observed, base model, head model) are Lupton et al. (2004) asinh RGB
composites (astropy's ``make_lupton_rgb``) of the i, r, g bands as red, green, blue with
equal weights (the bands share one AB zero point, so equal weights keep true colours),
all three on ONE stretch derived from the observed image: the sky noise of the mean
intensity maps to ``NOISE_LEVEL`` of full scale, and ``Q`` is solved for so that the
brightest channel saturates at the 99.9th percentile of the intensity inside the
footprint. Negative sky is black.

Residual panels are RGB residuals, as scarlet's own ``show_scene(show_residual=True)``
draws them, but in noise units: each band's ``chi_b = (image_b - model_b) / sigma_b`` is
mapped to red, green and blue with scarlet's five-band weights (``CHANNEL_MAP``: red
z y, green r i z, blue g r; each row sums to 1), so a residual of the same chi in every
band is grey, lighter where the data are above the model, and a residual in some bands
only (a colour error) is coloured. Zero is mid-grey. The stretch is FIXED, the same on
every blend and stated on the scale bar: ``RESIDUAL_STRETCH``, asinh, linear within
about 1 sigma (noise stays visible as texture) and saturating at 100 sigma. It scales
the largest channel of each pixel and the others in proportion (Lupton's trick: bright
residuals keep their hue), in ``STEPS`` steps either side of zero (compact PNGs).
Pixels outside the footprint (not in the fit's chi^2) are faded towards mid-grey.

The difference panel is head model - base model, per band in the same noise units and
the same colours, on its own fixed ``DIFFERENCE_STRETCH``: linear below 0.1 sigma, the
floor, so float round-off (about 1e-7 of a model pixel: at most ~1e-4 sigma at a
signal-to-noise of 1000) is under 0.02 % of full scale, below half a step: exactly
mid-grey; while a change of 0.1 sigma (about 1 % of the flux of a source at peak
signal-to-noise 10, the scale of the comparison's magnitude tolerances), even in one band
alone, is a step off grey; saturating at 100 sigma. Its label states the largest change.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from astropy.visualization import AsinhStretch, make_lupton_rgb
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from PIL import Image

from runner.result import BlendResult

RGB_BANDS = (2, 1, 0)  # i, r, g of g r i z y as red, green, blue
NOISE_LEVEL = 0.04  # sky sigma as a fraction of full scale on the colour panels
SATURATION_PERCENTILE = 99.9
# Red, green, blue from g r i z y: scarlet.display.channels_to_rgb(5).
CHANNEL_MAP = np.array([[0, 0, 0, 0.667, 1], [0, 0.333, 1, 0.333, 0], [1, 0.667, 0, 0, 0]]) / 1.667
OUTSIDE_FADE = 0.75  # fraction by which residuals outside the footprint fade to zero
STEPS = 10  # signed levels per channel on each side of zero, as in a 21-step colour map


@dataclass(frozen=True)
class Stretch:
    """A fixed signed asinh stretch in sigma: linear within about ``soft``, full scale at
    ``limit``; ``ticks`` are the values its scale bar labels (and their negatives)."""

    soft: float
    limit: float
    ticks: tuple[float, ...]

    def __call__(self, modulus: np.ndarray) -> np.ndarray:
        """``modulus`` (>= 0, in sigma) as a fraction of full scale, 0 to 1."""
        return AsinhStretch(a=self.soft / self.limit)(modulus / self.limit, clip=True)


@dataclass(frozen=True)
class Bar:
    """A scale bar under panels ``first`` to ``last``: ``stretch`` as a grey ramp (the
    colour of the same value in every band) with its ticks, and a ``key`` line."""

    first: int
    last: int
    stretch: Stretch
    key: str


RESIDUAL_STRETCH = Stretch(soft=1.0, limit=100.0, ticks=(0, 3, 10, 30, 100))
DIFFERENCE_STRETCH = Stretch(soft=0.1, limit=100.0, ticks=(0, 1, 10, 100))

PANEL_TARGET = 160  # panels are zoomed by an integer factor to about this many pixels
DPI = 100
MARGIN, GAP = 6, 6  # pixels
CAPTION_SIZE, LABEL_SIZE, MIN_LABEL_SIZE, BAR_TEXT_SIZE = 10.0, 8.0, 5.0, 6.5  # points
BAR_HEIGHT, TICK_LENGTH = 5, 2  # pixels
COLOURS = 112
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
    if images.shape[0] != CHANNEL_MAP.shape[1]:
        raise ValueError(f"need the 5 bands g r i z y, got {images.shape[0]}")
    inside = ~outside if outside.any() and not outside.all() else np.ones_like(outside)

    stretch, q = lupton_stretch(images, variance, inside)
    colour = [_lupton(a, stretch, q) for a in (images, base, head)]

    sigma = np.sqrt(variance)
    residuals = [
        _signed_rgb((images - model) / sigma, RESIDUAL_STRETCH, outside) for model in (base, head)
    ]
    diff = (head - base) / sigma
    largest = float(np.abs(np.nan_to_num(diff)).max())
    panels = [*colour, *residuals, _signed_rgb(diff, DIFFERENCE_STRETCH)]
    labels = [
        "observed (i r g)",
        "base model",
        "head model",
        "base residual",
        "head residual",
        f"head − base, max {_sigmas(largest)}" if largest else "head − base: identical",
    ]
    bars = [
        Bar(3, 4, RESIDUAL_STRETCH, "(data − model) / σ · red z y · green r i z · blue g r"),
        Bar(5, 5, DIFFERENCE_STRETCH, "(head − base) / σ, per band"),
    ]
    with matplotlib.rc_context(RC):
        return _compose(panels, labels, caption, bars)


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


def _lupton(cube: np.ndarray, stretch: float, q: float) -> np.ndarray:
    r, g, b = (cube[i] for i in RGB_BANDS)
    with np.errstate(invalid="ignore", divide="ignore"):  # astropy divides 0 by 0 on blank sky
        return make_lupton_rgb(r, g, b, stretch=stretch, Q=q)


def _signed_rgb(
    values: np.ndarray, stretch: Stretch, faded: np.ndarray | None = None
) -> np.ndarray:
    """(B, H, W) signed values in sigma as (H, W, 3) bytes: bands to channels by
    ``CHANNEL_MAP``, zero mid-grey, each pixel's largest channel by ``stretch`` and the
    others in proportion; ``faded`` pixels (H, W) lose ``OUTSIDE_FADE`` of their contrast."""
    rgb = np.tensordot(CHANNEL_MAP, np.nan_to_num(values), axes=1)
    modulus = np.abs(rgb).max(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = np.where(modulus > 0, stretch(modulus) / modulus, 0.0)
    if faded is not None:
        gain = np.where(faded, (1 - OUTSIDE_FADE) * gain, gain)
    return _levels(rgb * gain).transpose(1, 2, 0)


def _sigmas(value: float) -> str:
    """``value`` (> 0) in sigma, to two significant figures at most."""
    return f"{value:.0f}σ" if value >= 10 else f"{value:.2g}σ".replace("e-0", "e-")


def _levels(signed: np.ndarray) -> np.ndarray:
    """Signed fractions of full scale (-1 to 1) as bytes, in ``STEPS`` steps either side of
    mid-grey."""
    return np.round(255 * (0.5 + 0.5 * np.round(signed * STEPS) / STEPS)).astype(np.uint8)


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


def _fitted_size(renderer, text: str, width: float, size: float) -> float:
    """``size`` reduced in half points (to ``MIN_LABEL_SIZE``) until ``text`` fits ``width``."""
    while size > MIN_LABEL_SIZE and _text_width(renderer, text, size) > width:
        size -= 0.5
    return size


def _bar_ticks(renderer, bar: Bar, x0: float, width: float) -> list[tuple[float, str, str]]:
    """(x, label, alignment) of ``bar``'s ticks from left to right, symmetric about zero:
    a value whose label would touch its outer neighbour's on the negative side (the wider
    labels) is dropped on both sides; the ends and zero stay."""

    def place(value: float) -> tuple[float, str, str]:
        fraction = float(bar.stretch(np.array([abs(value)], dtype=float))[0])
        x = x0 + width * (1 + math.copysign(fraction, value)) / 2
        align = "left" if x <= x0 else "right" if x >= x0 + width else "center"
        return x, ("−" if value < 0 else "") + f"{abs(value):g}", align

    kept: list[float] = []
    right = -math.inf
    for magnitude in sorted(bar.stretch.ticks, reverse=True):
        x, label, align = place(-magnitude)
        label_width = _text_width(renderer, label, BAR_TEXT_SIZE)
        left = {"left": x, "right": x - label_width}.get(align, x - label_width / 2)
        if left > right + 3 or magnitude == 0:
            if left <= right + 3 and len(kept) > 1:
                kept.pop()  # zero wins over its neighbour
            kept.append(magnitude)
            right = left + label_width
    return [place(-m) for m in kept if m] + [place(m) for m in reversed(kept)]


def _paletted(rgb: np.ndarray) -> Image.Image:
    """(H, W, 3) bytes as a ``COLOURS``-colour palette image: the greys of the scale bars
    exactly (so that a residual the same in every band stays grey), the rest by median cut;
    each colour to its nearest (Pillow's own mapping approximates, and would tint greys)."""
    greys = np.unique(_levels(np.linspace(-1, 1, 2 * STEPS + 1)))
    count = COLOURS - len(greys)
    cut = Image.fromarray(rgb).quantize(count, method=Image.Quantize.MEDIANCUT)
    palette = np.concatenate(
        [np.reshape(cut.getpalette()[: 3 * count], (-1, 3)), np.repeat(greys[:, None], 3, axis=1)]
    ).astype(np.int32)
    codes = rgb.astype(np.int32) @ np.array([65536, 256, 1], dtype=np.int32)
    unique, inverse = np.unique(codes, return_inverse=True)
    colours = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], axis=1)
    distance = (palette**2).sum(axis=1) - 2 * colours @ palette.T  # + |colour|^2, the same
    index = distance.argmin(axis=1)[inverse].reshape(rgb.shape[:2]).astype(np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette.astype(np.uint8).ravel().tolist())
    return image


def _compose(panels: list[np.ndarray], labels: list[str], caption: str, bars: list[Bar]) -> bytes:
    height, width = panels[0].shape[:2]
    zoom = max(1, round(PANEL_TARGET / max(height, width)))
    pw, ph = width * zoom, height * zoom
    fig_w = 2 * MARGIN + len(panels) * pw + (len(panels) - 1) * GAP

    fig = Figure(dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    px = DPI / 72
    caption_lines = _wrap(renderer, caption, fig_w - 2 * MARGIN, CAPTION_SIZE)
    label_sizes = [_fitted_size(renderer, label, pw, LABEL_SIZE) for label in labels]
    caption_h = math.ceil(len(caption_lines) * CAPTION_SIZE * px * 1.25)
    label_h = math.ceil(LABEL_SIZE * px * 1.4)
    text_h = math.ceil(BAR_TEXT_SIZE * px * 1.3)
    bar_h = GAP // 2 + BAR_HEIGHT + TICK_LENGTH
    fig_h = MARGIN + caption_h + label_h + ph + 2 + bar_h + 2 * text_h + MARGIN
    fig.set_size_inches(fig_w / DPI, fig_h / DPI)

    strip = np.full((ph + 2 + bar_h, fig_w, 3), 255, dtype=np.uint8)
    frame = np.array(FRAME) * 255
    for index, panel in enumerate(panels):
        x0 = MARGIN + index * (pw + GAP)
        strip[: ph + 2, x0 - 1 : x0 + pw + 1] = frame
        strip[1 : ph + 1, x0 : x0 + pw] = np.repeat(np.repeat(panel, zoom, axis=0), zoom, axis=1)

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
    label_y = (MARGIN + 2 * text_h + bar_h + ph + 5) / fig_h
    for index, (label, size) in enumerate(zip(labels, label_sizes, strict=True)):
        x_mid = (MARGIN + index * (pw + GAP) + pw / 2) / fig_w
        fig.text(x_mid, label_y, label, size=size, ha="center", va="bottom", parse_math=False)

    bar_top = ph + 2 + GAP // 2  # row of the strip
    for bar in bars:
        x0 = MARGIN + bar.first * (pw + GAP)
        span = (bar.last - bar.first + 1) * pw + (bar.last - bar.first) * GAP
        ramp = _levels((np.arange(span) + 0.5) / span * 2 - 1)
        strip[bar_top : bar_top + BAR_HEIGHT, x0 : x0 + span] = ramp[None, :, None]
        for x, label, align in _bar_ticks(renderer, bar, x0, span):
            column = min(max(round(x), x0), x0 + span - 1)
            strip[bar_top + BAR_HEIGHT : bar_top + bar_h - GAP // 2, column] = frame
            fig.text(
                x / fig_w,
                (MARGIN + 2 * text_h) / fig_h,
                label,
                size=BAR_TEXT_SIZE,
                ha=align,
                va="top",
                parse_math=False,
            )
        key_size = _fitted_size(renderer, bar.key, span, BAR_TEXT_SIZE)
        fig.text(
            (x0 + span / 2) / fig_w,
            (MARGIN + text_h) / fig_h,
            bar.key,
            size=key_size,
            ha="center",
            va="top",
            parse_math=False,
        )

    fig.figimage(strip, xo=0, yo=MARGIN + 2 * text_h, origin="upper", resize=False)
    canvas.draw()
    paletted = _paletted(np.asarray(canvas.buffer_rgba())[..., :3])
    out = io.BytesIO()
    paletted.save(out, format="PNG", optimize=True)
    return out.getvalue()
