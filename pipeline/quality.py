"""Image quality: cheap measures taken once at decode time, and the rules that flag issues.

``measure`` turns a decoded image into a dozen numbers (exposure, colour, blur, detail, size);
``flag_issues`` decides from a table of those numbers alone, so thresholds can change without
decoding again. A rule fires when a measure is past its absolute limit *and* far from the rest
of its collection (a robust z-score), so a set of night or misty photos keeps its photos.
The method, the measurements behind each limit and the limits of it: ``docs/quality.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

WORK_SIDE = 128  # short side the pixel measures are taken at (blur is judged at this scale)
CLIP = 250  # a channel value at or above this is blown out

# In order of precedence: the first issue an image has is its drop reason. A black frame is
# `dark`, a flat frame of any other level `low_information` (even when a channel is clipped).
ISSUES = ("small", "odd_aspect", "dark", "low_information", "bright", "grayscale", "blurry")
# What each measure means (all pixel measures on 0..1 scales, at the working scale).
MEASURES = {
    "width": "source width in pixels",
    "height": "source height in pixels",
    "aspect": "long side / short side of the source",
    "lum_mean": "mean luma (BT.601 Y)",
    "lum_std": "standard deviation of luma",
    "lum_p99": "99th percentile of luma: how bright the highlights are",
    "dark_share": "share of pixels with luma <= 10/255 (crushed shadows)",
    "clip_share": "share of pixels with a channel >= 250/255 (blown highlights)",
    "entropy": "entropy of the 256-bin luma histogram, bits",
    "colourfulness": "Hasler-Suesstrunk colourfulness / 255",
    "chroma_p99": "99th percentile of max-min channel difference (0 when R=G=B)",
    "detail": "luma standard deviation at 1/8 of the working scale (noise averaged out)",
    "blur": "Crete-Roffet re-blur score of the sharpest image tile (0 sharp .. 1 flat)",
}


class Flag(NamedTuple):
    """One issue found in one image: the measure that decided, its value and the limit."""

    issue: str
    measure: str
    value: float
    threshold: float


@dataclass(frozen=True)
class QualityConfig:
    resolution: int = 64  # training resolution: a short side below it is `small`
    max_aspect: float = 2.0  # long/short above this is `odd_aspect` (a centre square keeps < 50%)
    gray_chroma: float = 4 / 255  # chroma_p99 at or below this is `grayscale` (R=G=B)
    dark_p99: float = 0.40  # `dark`: the brightest 1% of pixels are below this luma...
    dark_mean: float = 0.20  # ...and the mean luma is below this (a dim grey frame is not dark)
    bright_clip: float = 0.25  # `bright`: more than this share of pixels blown out
    low_detail: float = 0.02  # `low_information`: coarse luma spread below this
    max_blur: float = 0.40  # `blurry`: even the sharpest tile's blur score is above this
    relative_z: float = 2.0  # rules also need a robust z-score past this in the collection; 0: off
    min_collection: int = 50  # with fewer images, absolute limits only (too few for a spread)
    drop: tuple[str, ...] = ISSUES  # issues that drop an image (the others are only recorded)


def measure(img: np.ndarray, width: int | None = None, height: int | None = None, *,
            bgr: bool = False) -> dict[str, float]:
    """The measures of one decoded image (H x W x 3 uint8, or H x W grey).

    ``width``/``height``: the source's size when ``img`` was decoded reduced or cropped (the
    size rules judge the source); default: ``img``'s own.
    """
    import cv2

    h, w = img.shape[:2]
    width, height = width or w, height or h
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        bgr = True
    work = _reduce(img, WORK_SIDE)
    grey = cv2.cvtColor(work, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
    # A pyramid of exact halvings: tone and colour need no detail (1/2 scale: 4x fewer
    # pixels); 1/4 is the blur test's re-blurred image, 1/8 the noise-free detail.
    halves = [grey]
    while len(halves) < 4 and min(halves[-1].shape) >= 2:
        halves.append(_halve(halves[-1]))
    m = {"width": float(width), "height": float(height),
         "aspect": max(width, height) / max(1, min(width, height))}
    m.update(_tone(halves[min(1, len(halves) - 1)]))
    m.update(_colour(_halve(work) if min(work.shape[:2]) >= 2 else work, bgr))
    m["detail"] = float(cv2.meanStdDev(halves[-1])[1][0, 0]) / 255
    m["blur"] = _blur(grey, halves[min(2, len(halves) - 1)])
    return m


def laplacian_variance(img: np.ndarray, bgr: bool = False) -> float:
    """The classic blur measure (variance of the Laplacian of luma, 0..255 scale) at the
    working scale; kept out of ``measure`` (the benchmark's naive baseline uses it)."""
    import cv2

    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
    return float(cv2.meanStdDev(cv2.Laplacian(_reduce(img, WORK_SIDE), cv2.CV_16S))[1][0, 0]) ** 2


def _halve(img: np.ndarray) -> np.ndarray:
    """Exact 2x area reduction (OpenCV's fast path needs even sides: drop an odd last row)."""
    import cv2

    h, w = img.shape[:2]
    return cv2.resize(img[:h - h % 2, :w - w % 2], (w // 2, h // 2), interpolation=cv2.INTER_AREA)


def _reduce(img: np.ndarray, side: int) -> np.ndarray:
    """Scale down to a short side of ``side`` (never up): exact halvings, then one linear step.

    OpenCV's area resampling is ~10x slower at non-integer factors; after the halvings the last
    factor is above 1/2, where linear interpolation hardly aliases.
    """
    import cv2

    while min(img.shape[:2]) >= 2 * side:
        img = _halve(img)
    h, w = img.shape[:2]
    if min(h, w) > side:
        s = side / min(h, w)
        img = cv2.resize(img, (max(side, round(w * s)), max(side, round(h * s))),
                         interpolation=cv2.INTER_LINEAR)
    return img


def _tone(y: np.ndarray) -> dict[str, float]:
    """Luma statistics from one 256-bin histogram."""
    import cv2

    hist = cv2.calcHist([y], [0], None, [256], [0, 256]).ravel() / y.size
    levels = np.arange(256) / 255
    mean = float(hist @ levels)
    cum = np.cumsum(hist)
    nz = hist[hist > 0]
    return {"lum_mean": mean,
            "lum_std": float(np.sqrt(max(hist @ (levels - mean) ** 2, 0.0))),
            "lum_p99": float(np.searchsorted(cum, 0.99)) / 255,
            "dark_share": float(cum[10]),
            "entropy": float(-(nz * np.log2(nz)).sum())}


def _colour(img: np.ndarray, bgr: bool) -> dict[str, float]:
    """Blown highlights, colourfulness and the largest channel differences."""
    import cv2

    c0, c1, c2 = cv2.split(img)
    r, g, b = (c2, c1, c0) if bgr else (c0, c1, c2)
    hi = cv2.max(cv2.max(r, g), b)
    chroma = cv2.subtract(hi, cv2.min(cv2.min(r, g), b))
    cum = np.cumsum(cv2.calcHist([chroma], [0], None, [256], [0, 256]).ravel())
    # Hasler & Suesstrunk 2003: opponent channels rg = R - G, yb = (R + G) / 2 - B.
    rg_mean, rg_std = cv2.meanStdDev(cv2.subtract(r, g, dtype=cv2.CV_16S))
    yb = cv2.subtract(cv2.addWeighted(r, 0.5, g, 0.5, 0, dtype=cv2.CV_32F), b, dtype=cv2.CV_32F)
    yb_mean, yb_std = cv2.meanStdDev(yb)
    colourful = (np.hypot(rg_std[0, 0], yb_std[0, 0])
                 + 0.3 * np.hypot(rg_mean[0, 0], yb_mean[0, 0])) / 255
    return {"clip_share": float(np.count_nonzero(hi >= CLIP)) / hi.size,
            "colourfulness": float(colourful),
            "chroma_p99": float(np.searchsorted(cum, 0.99 * cum[-1])) / 255}


def _blur(y: np.ndarray, coarse: np.ndarray, tiles: int = 4) -> float:
    """Blur score of the sharpest tile: Crete-Roffet et al. 2007 ("The blur effect"), per tile.

    Blurring an already blurred image changes its neighbour differences little: per direction,
    1 - (what re-blurring removes) / (the differences), the worse direction (so camera shake
    along one axis counts). The re-blurred image is ``coarse`` (``y`` at 1/4 scale) scaled back
    up: the same test as the paper's 9-pixel box blur, and as good on the tuning photos, at a
    third of the cost. Taking the sharpest of ``tiles`` x ``tiles`` tiles that hold edges keeps
    a sharp subject on a soft background (macro, portrait) sharp.
    """
    import cv2

    h, w = y.shape
    th, tw = (h - 1) // tiles, (w - 1) // tiles
    if th < 2 or tw < 2:
        tiles, th, tw = 1, h - 1, w - 1
    corners = np.ix_(np.arange(tiles + 1) * th, np.arange(tiles + 1) * tw)
    b = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    maps = []
    for cut, prev in ((np.s_[:-1, 1:], np.s_[:-1, :-1]), (np.s_[1:, :-1], np.s_[:-1, :-1])):
        d_f = cv2.absdiff(y[cut], y[prev])
        maps += [d_f, cv2.subtract(d_f, cv2.absdiff(b[cut], b[prev]))]  # removed: at least 0
    # Tile sums of all four maps from one integral image: exact, and one call.
    s = cv2.integral(cv2.merge(maps))[corners].astype(np.float64)
    s = s[1:, 1:] - s[:-1, 1:] - s[1:, :-1] + s[:-1, :-1]
    s_f = s[..., ::2]
    scores = 1 - s[..., 1::2] / np.maximum(s_f, 1)
    score = scores.max(-1)
    ok = s_f.min(-1) >= th * tw  # tiles with at least 1 grey level per pixel of change
    return float(score[ok].min()) if ok.any() else float(score.mean())


# (issue, measure, config field, True when low values are bad, z-scores of the log: a spread)
_RULES = (("dark", "lum_p99", "dark_p99", True, False),
          ("bright", "clip_share", "bright_clip", False, False),
          ("low_information", "detail", "low_detail", True, True),
          ("blurry", "blur", "max_blur", False, False))


def to_columns(rows: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
    """A list of ``measure`` results as one array per measure (the form rules work on)."""
    return {k: np.array([r[k] for r in rows], np.float64) for k in MEASURES}


def thresholds(columns: Mapping[str, np.ndarray], config: QualityConfig = QualityConfig()
               ) -> dict[str, float]:
    """The limit each rule applies to this collection: the absolute one, tightened where the
    collection itself sits past it (robust z-score: median and 1.4826 x MAD)."""
    out = {}
    n = len(next(iter(columns.values()))) if columns else 0
    for issue, name, field, low_bad, log in _RULES:
        limit = getattr(config, field)
        if config.relative_z > 0 and n >= config.min_collection:
            v = np.asarray(columns[name], np.float64)
            if log:
                v = np.log(np.maximum(v, 1e-4))
            med = float(np.median(v))
            z = config.relative_z * 1.4826 * float(np.median(np.abs(v - med)))
            rel = med - z if low_bad else med + z
            rel = float(np.exp(rel)) if log else rel
            limit = min(limit, rel) if low_bad else max(limit, rel)
        out[issue] = limit
    return out


def flag_issues(columns: Mapping[str, np.ndarray] | Sequence[Mapping[str, float]],
                config: QualityConfig = QualityConfig()) -> list[list[Flag]]:
    """Per image, the issues it has (in ``ISSUES`` order: the first is its drop reason).

    ``columns``: the measures of a whole collection (``to_columns`` form, or a list of
    ``measure`` results); the relative part of the rules needs all of them at once.
    """
    if not isinstance(columns, Mapping):
        columns = to_columns(columns)
    cols = {k: np.asarray(v, np.float64) for k, v in columns.items()}
    n = len(cols["width"])
    limits = thresholds(cols, config)
    short = np.minimum(cols["width"], cols["height"])
    hits: dict[str, tuple[np.ndarray, str, np.ndarray, float]] = {
        "small": (short < config.resolution, "short_side", short, float(config.resolution)),
        "odd_aspect": (cols["aspect"] > config.max_aspect, "aspect", cols["aspect"],
                       config.max_aspect),
        "grayscale": (cols["chroma_p99"] <= config.gray_chroma, "chroma_p99",
                      cols["chroma_p99"], config.gray_chroma),
    }
    for issue, name, _, low_bad, _ in _RULES:
        v, t = cols[name], limits[issue]
        hit = v < t if low_bad else v > t
        if issue == "dark":
            hit &= cols["lum_mean"] < config.dark_mean
        hits[issue] = (hit, name, v, t)
    flags: list[list[Flag]] = [[] for _ in range(n)]
    for issue in ISSUES:
        hit, name, v, t = hits[issue]
        for i in np.flatnonzero(hit):
            flags[i].append(Flag(issue, name, float(v[i]), float(t)))
    return flags


def drop_reason(flags: list[Flag], config: QualityConfig = QualityConfig()) -> Flag | None:
    """The flag an image is dropped for (the first issue in ``config.drop``), or None."""
    return next((f for f in flags if f.issue in config.drop), None)
