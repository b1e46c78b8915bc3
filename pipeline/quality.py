"""Image quality: cheap measures taken once at decode time, and the rules that flag issues.

``measure`` turns a decoded image into a dozen numbers (exposure, colour, blur, detail, size);
``flag_issues`` decides from a table of those numbers alone, so thresholds can change without
decoding again. A rule fires when a measure is past its absolute limit *and* far from the rest
of its collection (a robust z-score), so a set of night or misty photos keeps its photos.
The method, the measurements behind each limit and the limits of it: ``docs/quality.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from pipeline.errors import UserError, at_least

WORK_SIDE = 128  # short side the pixel measures are taken at (blur is judged at this scale)
CLIP = 250  # a channel value at or above this is blown out

# In order of precedence: the first issue an image has is its drop reason. A black frame is
# `dark`, a flat frame of any other level `low_information` (even when a channel is clipped).
ISSUES = ("small", "odd_aspect", "dark", "low_information", "bright", "grayscale", "blurry")
# What each measure means (pixel measures on 0..1 scales; at which scale: docs/quality.md).
MEASURES = {
    "width": "source width in pixels",
    "height": "source height in pixels",
    "aspect": "long side / short side of the source",
    "lum_mean": "mean luma (BT.601 Y)",
    "lum_std": "standard deviation of luma",
    "lum_p99": "99th percentile of luma: how bright the highlights are",
    "lum_p999": "99.9th percentile of luma: the brightest points (a star, a lamp)",
    "dark_share": "share of pixels with luma <= 10/255 (crushed shadows)",
    "clip_share": "share of pixels with a channel >= 250/255 (blown highlights)",
    "white_clip": "share of the blown pixels that are neutral white (every channel >= 250/255)",
    "entropy": "entropy of the 256-bin luma histogram, bits",
    "colourfulness": "mean of max-min channel difference (how saturated, on average)",
    "chroma_p99": "99th percentile of max-min channel difference (0 when R=G=B)",
    "detail": "luma standard deviation at 1/8 of the working scale (noise averaged out)",
    "blur": "Crete-Roffet re-blur score of the sharpest 3x3 tile, worst of 4 directions "
            "(0 sharp .. 1 flat)",
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
    gray_chroma: float = 0.0176  # `grayscale`: chroma_p99 below (at most 4/255: R=G=B + noise)
    dark_p99: float = 0.40  # `dark`: the brightest 1% of pixels are below this luma...
    dark_mean: float = 0.20  # ...and the mean luma is below this (a dim grey frame is not dark)
    dark_points: float = 0.50  # ...and the brightest 0.1% too (a night sky keeps bright points)
    bright_clip: float = 0.25  # `bright`: more than this share of pixels blown out...
    bright_white: float = 0.95  # ...and less of them pure white (a studio backdrop is, by design)
    low_detail: float = 0.02  # `low_information`: coarse luma spread below this
    max_blur: float = 0.44  # `blurry`: even the sharpest tile's blur score is above this
    relative_z: float = 2.0  # rules also need a robust z-score past this in the collection; 0: off
    min_collection: int = 50  # with fewer images, absolute limits only (too few for a spread)
    drop: tuple[str, ...] = ISSUES  # issues that drop an image (the others are only recorded)

    def __post_init__(self) -> None:
        """Limits that cannot work are refused before anything is read."""
        unknown = [i for i in self.drop if i not in ISSUES]
        if unknown:
            raise UserError(f"unknown issue {', '.join(map(repr, unknown))}: choose from "
                            f"{', '.join(ISSUES)}", param="drop")
        at_least(self, resolution=1, max_aspect=1)
        for name in ("gray_chroma", "dark_p99", "dark_mean", "dark_points", "bright_clip",
                     "bright_white", "low_detail", "max_blur"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"{name} must be between 0 and 1 (got {getattr(self, name)})",
                                param=name)
        if self.relative_z < 0 or self.min_collection < 1:
            raise UserError("relative_z must be 0 (off) or more, and min_collection at least 1",
                            param="relative_z")


# Each issue's deciding measure and the side of its limit that is flagged (strictly below or
# above); `short_side` is min(width, height). Some issues also need more (CONDITIONS).
RULES: dict[str, tuple[str, str]] = {
    "small": ("short_side", "below"), "odd_aspect": ("aspect", "above"),
    "dark": ("lum_p99", "below"), "low_information": ("detail", "below"),
    "bright": ("clip_share", "above"), "grayscale": ("chroma_p99", "below"),
    "blurry": ("blur", "above")}
# Further conditions an issue needs, each (measure, config field, flagged side): all must
# hold. Under-exposure dims the whole frame (a night sky keeps its mean low but its stars
# bright); over-exposure blows out channels unevenly, while a studio's white backdrop is pure
# white by design (docs/quality.md).
CONDITIONS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "dark": (("lum_mean", "dark_mean", "below"), ("lum_p999", "dark_points", "below")),
    "bright": (("white_clip", "bright_white", "below"),)}


def measure(img: np.ndarray, width: int | None = None, height: int | None = None, *,
            bgr: bool = False) -> dict[str, float]:
    """The measures of one image (H x W x 3 uint8, or H x W grey): ``measure_batch`` of one.

    ``width``/``height``: the source's size when ``img`` was decoded reduced or cropped (the
    size rules judge the source); default: ``img``'s own.
    """
    size = (width or img.shape[1], height or img.shape[0])
    row = measure_batch([img], [size], bgr=bgr)
    return dict(zip(MEASURES, map(float, row[0])))


def measure_batch(images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]] | None = None,
                  *, bgr: bool = False) -> np.ndarray:
    """The measures of many images as an N x len(MEASURES) float32 table (``MEASURES`` order).

    ``images`` are the pixels to judge (extraction passes each record's centre crop, at most
    ``WORK_SIDE`` px, as ``decode.prepare_measured`` leaves it); larger ones are reduced to the
    working scale first. Images of one shape are measured together, each step one OpenCV call
    over the whole stack: per image, the ~40 calls of a one-image measure cost more than
    their arithmetic. ``sizes``: each source's (width, height); default: the image's own.
    """
    out = np.zeros((len(images), len(MEASURES)), np.float32)
    groups: dict[tuple[int, ...], list[int]] = {}
    work = []
    for i, img in enumerate(images):
        w = working_copy(img)
        work.append(w)
        groups.setdefault(w.shape, []).append(i)
    col = {k: j for j, k in enumerate(MEASURES)}
    for ids in groups.values():
        for s in range(0, len(ids), _BLOCK):
            block = ids[s:s + _BLOCK]
            stack = np.stack([work[i] for i in block])
            for name, values in _measure_stack(stack, bgr).items():
                out[block, col[name]] = values
    if sizes is None:
        sizes = [(img.shape[1], img.shape[0]) for img in images]
    size = np.asarray(sizes, np.float64).reshape(-1, 2)
    out[:, col["width"]], out[:, col["height"]] = size[:, 0], size[:, 1]
    out[:, col["aspect"]] = size.max(1) / np.maximum(1, size.min(1))
    return out


_BLOCK = 32  # images measured at once (the stack, 1.5 MB at 128 px, stays in cache; measured)


def working_copy(img: np.ndarray) -> np.ndarray:
    """``img`` as 3 channels with the short side reduced to ``WORK_SIDE`` (never enlarged):
    exact 2x halvings, then one linear step (OpenCV's area filter is ~10x slower at
    non-integer factors; after the halvings the last factor is above 1/2, where linear
    interpolation hardly aliases)."""
    import cv2

    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)  # R=G=B: the same in either order
    while min(img.shape[:2]) >= 2 * WORK_SIDE:
        img = _halve(img)
    h, w = img.shape[:2]
    if min(h, w) > WORK_SIDE:
        s = WORK_SIDE / min(h, w)
        img = cv2.resize(img, (max(WORK_SIDE, round(w * s)), max(WORK_SIDE, round(h * s))),
                         interpolation=cv2.INTER_LINEAR)
    return img


def laplacian_variance(img: np.ndarray, bgr: bool = False) -> float:
    """The classic blur measure (variance of the Laplacian of luma, 0..255 scale) at the
    working scale; kept out of ``measure`` (the benchmark's naive baseline uses it)."""
    import cv2

    img = working_copy(img)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
    return float(cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S))[1][0, 0]) ** 2


def _halve(img: np.ndarray) -> np.ndarray:
    """Exact 2x area reduction (OpenCV's fast path needs even sides: drop an odd last row)."""
    import cv2

    h, w = img.shape[:2]
    return cv2.resize(img[:h - h % 2, :w - w % 2], (w // 2, h // 2), interpolation=cv2.INTER_AREA)


def _halve_stack(tall: np.ndarray, n: int) -> np.ndarray:
    """Halve each of the ``n`` images stacked vertically in ``tall`` (an odd last row of
    each dropped first, so no output row mixes two images)."""
    h = tall.shape[0] // n
    if h % 2:
        tall = np.ascontiguousarray(tall.reshape(n, h, *tall.shape[1:])[:, :h - 1]).reshape(
            n * (h - 1), *tall.shape[1:])
    return _halve(tall)


def _histograms(plane: np.ndarray, n: int) -> np.ndarray:
    """The 256-bin histogram of each of the ``n`` images stacked in ``plane`` (n x 256), in
    one call: a 2-D histogram of (image index, value)."""
    import cv2

    return cv2.calcHist([_index_plane(n, plane.shape), plane], [0, 1], None, [n, 256],
                        [0, n, 0, 256])


@functools.lru_cache(maxsize=16)
def _index_plane(n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Each pixel's image number, for a stack of ``n`` images of ``shape`` (n <= 256)."""
    return np.repeat(np.arange(n, dtype=np.uint8), int(np.prod(shape)) // n).reshape(shape)


def _per_image_sums(plane: np.ndarray, n: int) -> np.ndarray:
    """The sum of each of the ``n`` images stacked in ``plane`` (one pass)."""
    import cv2

    return cv2.reduce(plane, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).reshape(n, -1).sum(1)


def _quantile(hist: np.ndarray, q: float) -> np.ndarray:
    """Per row, the lowest level (0..1) below which at least ``q`` of the counts lie."""
    cum = np.cumsum(hist, 1)
    return (cum < q * cum[:, -1:] - 1e-6).sum(1) / 255


def _measure_stack(x: np.ndarray, bgr: bool) -> dict[str, np.ndarray]:
    """The pixel measures of ``n`` same-size images (n x H x W x 3 uint8), one array each.

    The images are stacked into one tall image, so each step is one call; steps that look
    at neighbours (halvings, differences, the blur test's upscaling) are arranged so that no
    result mixes two images, or the rows that would are left out.
    """
    import cv2

    n, h, w = x.shape[:3]
    tall = x.reshape(n * h, w, 3)
    grey = cv2.cvtColor(tall, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
    # A pyramid of exact halvings: tone and colour need no detail (1/2 scale: 4x fewer
    # pixels); 1/4 is the blur test's re-blurred image, 1/8 the noise-free detail.
    pyramid = [grey]
    while len(pyramid) < 4 and min(pyramid[-1].shape[0] // n, pyramid[-1].shape[1]) >= 2:
        pyramid.append(_halve_stack(pyramid[-1], n))
    half = min(1, len(pyramid) - 1)
    colour = _halve_stack(tall, n) if half else tall
    m = _tone(_histograms(pyramid[half], n))
    m.update(_colour(colour, n))
    m["detail"] = pyramid[-1].reshape(n, -1).std(1, dtype=np.float64) / 255
    m["blur"] = _blur(grey, pyramid[min(2, len(pyramid) - 1)], n)
    return m


def _tone(hist: np.ndarray) -> dict[str, np.ndarray]:
    """Luma statistics from each image's 256-bin histogram."""
    p = hist / hist.sum(1, keepdims=True)
    levels = np.arange(256, dtype=np.float32) / 255
    mean = p @ levels
    logp = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return {"lum_mean": mean,
            "lum_std": np.sqrt(np.maximum(p @ levels ** 2 - mean ** 2, 0.0)),
            "lum_p99": _quantile(p, 0.99),
            "lum_p999": _quantile(p, 0.999),
            "dark_share": p[:, :11].sum(1),
            "entropy": -(p * logp).sum(1)}


def _colour(img: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Blown highlights (at the tone scale), and the channel spread one halving lower: a
    statistic of colour regions, not of single pixels (an R=G=B image is grey at every
    scale), and the 4x fewer pixels matter here."""
    import cv2

    unclipped = cv2.inRange(img, (0, 0, 0), (CLIP - 1,) * 3)  # 255 where no channel is blown
    clip = 1 - _per_image_sums(unclipped, n) / (255 * unclipped.size / n)
    white = _per_image_sums(cv2.inRange(img, (CLIP,) * 3, (255,) * 3), n) / (
        255 * unclipped.size / n)
    small = _halve_stack(img, n) if min(img.shape[0] // n, img.shape[1]) >= 2 else img
    c0, c1, c2 = cv2.split(small)
    spread = _histograms(cv2.subtract(cv2.max(cv2.max(c0, c1), c2),
                                      cv2.min(cv2.min(c0, c1), c2)), n)
    return {"clip_share": clip, "white_clip": np.where(clip > 0, white / np.maximum(clip, 1e-9), 0),
            "chroma_p99": _quantile(spread, 0.99),
            "colourfulness": (spread / spread.sum(1, keepdims=True)) @ (np.arange(256) / 255)}


_TILES = 3  # the blur test's tiles per side
_EDGE = 2  # rows left out at the top and bottom of each image (the upscaling mixes images)


def _blur(y: np.ndarray, coarse: np.ndarray, n: int) -> np.ndarray:
    """Blur score of each image's sharpest tile: Crete-Roffet et al. 2007 ("The blur
    effect"), per tile and per direction.

    Blurring an already blurred image changes its neighbour differences little: per
    direction, the share of the differences that survive re-blurring, sum(min(|dy|, |db|)) /
    sum(|dy|), in the worst direction. The re-blurred image is ``coarse`` (``y`` at 1/4
    scale) scaled back up. The sharpest of the 3 x 3 tiles that hold edges decides, so a sharp
    subject on a soft background (macro, portrait) is sharp. The differences are taken from
    every other row (half the work; the ratios are the same within a few thousandths).
    """
    import cv2

    rows, w = y.shape
    h = rows // n
    b = cv2.resize(coarse, (w, rows), interpolation=cv2.INTER_LINEAR)
    # Rows of differences per image: pairs (2k, 2k+1) when h is even, else every pair (the
    # last one straddles two images). Left out: the pairs within _EDGE rows of a seam,
    # where the upscaled ``b`` mixes two images.
    step = 2 if h % 2 == 0 else 1
    per_image, edge = h // step, -(-_EDGE // step)
    tiles, tw = _TILES, (w - 2) // _TILES
    th = (per_image - 2 * edge - (step == 1)) // tiles
    if th < 2 or tw < 2:  # tiny images: one tile
        tiles, edge = 1, 0
        th, tw = max(1, per_image - (step == 1)), max(1, w - 2)
    c = np.s_[1:1 + tiles * tw]  # the columns of the tiles (a neighbour on either side)
    cl, cr = np.s_[:tiles * tw], np.s_[2:2 + tiles * tw]
    pairs = ((np.s_[0:rows - 1:step, cr], np.s_[0:rows - 1:step, c]),  # across x
             (np.s_[1::step, c], np.s_[0:rows - 1:step, c]),  # y
             (np.s_[1::step, cr], np.s_[0:rows - 1:step, c]),  # the two diagonals
             (np.s_[1::step, cl], np.s_[0:rows - 1:step, c]))
    planes = []
    for cut, prev in pairs:
        d_y = cv2.absdiff(y[cut], y[prev])
        planes += [d_y, cv2.min(d_y, cv2.absdiff(b[cut], b[prev]))]
    # Each row's sum within each tile (one pass: 3x cheaper than an integral image), then
    # the rows of each tile added up, for all eight planes at once: segments of rows per
    # image are [0, edge), the tiles, and the rest (the segments between tiles discarded).
    per_row = np.stack([cv2.reduce(p.reshape(-1, tw), 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)
                        for p in planes]).reshape(len(planes), -1, tiles)
    bounds = edge + np.arange(tiles + 1) * th
    starts = (np.arange(n)[:, None] * per_image + np.r_[0, bounds]).ravel()
    starts = starts[starts < per_row.shape[1]]
    sums = np.add.reduceat(per_row, starts, axis=1)
    sums = np.concatenate([sums, np.zeros_like(sums[:, :(tiles + 2) * n - sums.shape[1]])], 1)
    sums = sums.reshape(len(planes), n, tiles + 2, tiles)[:, :, 1:tiles + 1]
    diffs, kept = sums[0::2].astype(np.float64), sums[1::2]
    score = (1 - (diffs - kept) / np.maximum(diffs, 1)).max(0).reshape(n, -1)  # flat: 1
    ok = (diffs.min(0) >= th * tw).reshape(n, -1)  # at least 1 grey level per pixel of change
    sharpest = np.where(ok, score, np.inf).min(1)
    return np.where(ok.any(1), sharpest, score.mean(1))


# The limits a collection can tighten: (issue, config field, z-scores of the log: a spread).
_RELATIVE = (("dark", "dark_p99", False), ("bright", "bright_clip", False),
             ("low_information", "low_detail", True), ("blurry", "max_blur", False))
_ABSOLUTE = {"small": "resolution", "odd_aspect": "max_aspect", "grayscale": "gray_chroma"}


def to_columns(rows: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
    """A list of ``measure`` results as one array per measure (the form rules work on)."""
    return {k: np.array([r[k] for r in rows], np.float64) for k in MEASURES}


def table_columns(table: np.ndarray) -> dict[str, np.ndarray]:
    """A ``measure_batch`` table (``MEASURES`` order) as one array per measure."""
    return {k: np.asarray(table[:, j], np.float64) for j, k in enumerate(MEASURES)}


def thresholds(columns: Mapping[str, np.ndarray], config: QualityConfig = QualityConfig()
               ) -> dict[str, float]:
    """The limit each rule applies to this collection (every issue, ``ISSUES`` order): the
    absolute one, tightened where the collection itself sits past it (robust z-score: median
    and 1.4826 x MAD) for dark, bright, low_information and blurry."""
    out = {issue: float(getattr(config, field)) for issue, field in _ABSOLUTE.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    for issue, field, log in _RELATIVE:
        name, direction = RULES[issue]
        low_bad = direction == "below"
        limit = float(getattr(config, field))
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
    return {issue: out[issue] for issue in ISSUES}


def flag_issues(columns: Mapping[str, np.ndarray] | Sequence[Mapping[str, float]],
                config: QualityConfig = QualityConfig()) -> list[list[Flag]]:
    """Per image, the issues it has (in ``ISSUES`` order: the first is its drop reason).

    ``columns``: the measures of a whole collection (``to_columns`` form, or a list of
    ``measure`` results); the relative part of the rules needs all of them at once. An
    unknown measure (NaN: a source size not recorded) flags nothing.
    """
    if not isinstance(columns, Mapping):
        columns = to_columns(columns)
    cols = {k: np.asarray(v, np.float64) for k, v in columns.items()}
    cols["short_side"] = np.minimum(cols["width"], cols["height"])
    n = len(cols["width"])
    limits = thresholds(cols, config)
    flags: list[list[Flag]] = [[] for _ in range(n)]
    for issue in ISSUES:
        name, direction = RULES[issue]
        v, t = cols[name], limits[issue]
        hit = v < t if direction == "below" else v > t
        for measure_name, field, side in CONDITIONS.get(issue, ()):
            w, limit = cols[measure_name], getattr(config, field)
            hit &= w < limit if side == "below" else w > limit
        for i in np.flatnonzero(hit):
            flags[i].append(Flag(issue, name, float(v[i]), float(t)))
    return flags


def drop_reason(flags: list[Flag], config: QualityConfig = QualityConfig()) -> Flag | None:
    """The flag an image is dropped for (the first issue in ``config.drop``), or None."""
    return next((f for f in flags if f.issue in config.drop), None)
