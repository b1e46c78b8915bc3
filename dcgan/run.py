"""The run directory: config.json, metrics.jsonl, sample grids and the loss-curve PNG.

Layout::

    RUN/config.json            the resolved TrainConfig (+ data path, tool version)
    RUN/metrics.jsonl          one line every log interval: step, losses, D(x), D(G(z)), img/s
    RUN/samples/step-*.png     the fixed noise batch through G (eval mode)
    RUN/loss.png               losses and D's outputs, redrawn with every metrics line
    RUN/checkpoints/step-*.pt  the newest valid checkpoints (dcgan.checkpoint)
    RUN/generator.pt           G alone, for sampling

It is an output folder of the tool (``pipeline.outputs.OutputDir``, kind ``run``): locked
while a run writes it, every file listed before it is written, and a folder holding anything
else (a dataset directory, someone's documents) refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from dcgan.config import nice_ceil
from pipeline import __version__
from pipeline.dataset import atomic_write, read_jsonl, write_json
from pipeline.outputs import OutputDir

log = logging.getLogger(__name__)

CONFIG, METRICS, LOSS_PNG, SAMPLES = "config.json", "metrics.jsonl", "loss.png", "samples"


class RunDir:
    """Writes a run's outputs, holding the folder for the run (only process 0 of a
    multi-process run writes)."""

    def __init__(self, root: str | Path, data: str | Path, write: bool = True):
        self.root = Path(root)
        self.write = write
        self._metrics: list[dict] | None = None  # metrics.jsonl, read once, then appended to
        self.held = OutputDir(self.root, "run", [data]).open() if write else None

    def own(self, name: str) -> Path:
        """The path of the run's file ``name``, listed as the tool's before it is written."""
        return self.held.own(name) if self.held else self.root / name

    def remove(self, path: Path) -> None:
        """Delete a file of the run that the tool wrote (others are left alone)."""
        rel = path.relative_to(self.root).as_posix()
        if self.held is not None and self.held.owns(rel):
            self.held.remove(rel)

    def close(self) -> None:
        if self.held is not None:
            self.held.close()

    def save_config(self, config: dict[str, Any], data: str) -> None:
        if self.write:
            write_json(self.own(CONFIG), {**config, "data": data, "version": __version__})

    def metrics(self) -> list[dict]:
        if self._metrics is None:
            self._metrics = read_jsonl(self.root / METRICS)
        return self._metrics

    def truncate_metrics(self, step: int) -> None:
        """Drop lines past ``step`` (a resumed run rewrites what came after its checkpoint)."""
        if not self.write or not (self.root / METRICS).exists():
            return
        self._metrics = [m for m in read_jsonl(self.root / METRICS) if m["step"] <= step]
        with atomic_write(self.own(METRICS)) as f:
            f.writelines(json.dumps(m) + "\n" for m in self._metrics)

    def log(self, record: dict[str, Any]) -> None:
        if self.write:
            self.metrics().append(record)
            with open(self.own(METRICS), "a") as f:
                f.write(json.dumps(record) + "\n")
            self.save_loss_curve()

    def save_samples(self, images: np.ndarray, step: int) -> Path | None:
        """A grid of generated images (N x H x W x 3 uint8)."""
        if not self.write:
            return None
        from pipeline.sheets import save_sheet

        path = self.own(f"{SAMPLES}/step-{step:08d}.png")
        return save_sheet(list(images), path, pad=1)

    def save_loss_curve(self) -> Path | None:
        from pipeline.sheets import save_png

        metrics = self.metrics()
        if len(metrics) < 2:
            return None
        title = f"{self.root.name}: training to step {metrics[-1]['step']}"
        return save_png(plot_metrics(metrics, title), self.own(LOSS_PNG))


# -- the picture ------------------------------------------------------------------------------
_COLOURS = {"loss_d": (31, 119, 180), "loss_g": (255, 127, 14),  # RGB
            "d_real": (44, 160, 44), "d_fake": (214, 39, 40)}
_PANELS = (  # y label, series (key, legend), fixed y range
    ("loss (binary cross-entropy)", (("loss_d", "D loss"), ("loss_g", "G loss")), None),
    ("D output (probability)", (("d_real", "D(x), real"), ("d_fake", "D(G(z)), fake")),
     (0.0, 1.0)),
)


def plot_metrics(metrics: list[dict], title: str, size: tuple[int, int] = (800, 400)
                 ) -> np.ndarray:
    """Losses (left) and D's mean outputs on real and generated images (right) against the
    step, as an RGB uint8 image drawn with OpenCV."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    _text(img, title, (w // 2, 20), 0.55, centre=True)
    steps = np.array([m["step"] for m in metrics], float)
    half = w // len(_PANELS)
    for i, (ylabel, keys, fixed) in enumerate(_PANELS):
        series = [(name, np.array([m.get(k, np.nan) for m in metrics], float), _COLOURS[k])
                  for k, name in keys]
        # Plot area: room on the left for tick values and the y label, above for the legend,
        # below for the x axis.
        box = (i * half + 62, 56, (i + 1) * half - 14, h - 44)
        _panel(img, box, steps, series, ylabel, fixed)
    return img


def _panel(img: np.ndarray, box: tuple[int, int, int, int], steps: np.ndarray,
           series: list[tuple[str, np.ndarray, tuple[int, int, int]]], ylabel: str,
           fixed: tuple[float, float] | None) -> None:
    import cv2

    x0, y0, x1, y1 = box
    grey, light = (120, 120, 120), (225, 225, 225)
    finite = np.concatenate([v[np.isfinite(v)] for _, v, _ in series])
    lo, hi = fixed or ((float(finite.min()), float(finite.max())) if len(finite) else (0, 1))
    yticks = nice_ticks(lo, hi)
    xticks = nice_ticks(0.0, float(steps.max()))
    lo, hi, s1 = yticks[0], yticks[-1], xticks[-1]

    def xy(s: np.ndarray, v: np.ndarray) -> np.ndarray:
        x = x0 + s / s1 * (x1 - x0)
        y = y1 - (v - lo) / (hi - lo) * (y1 - y0)
        return np.stack([x, y], 1).round().astype(np.int32)

    for t in yticks:
        y = int(xy(np.zeros(1), np.array([t]))[0, 1])
        cv2.line(img, (x0, y), (x1, y), light, 1)
        _text(img, _tick_label(t), (x0 - 6, y + 4), 0.4, right=True)
    for t in xticks:
        x = int(xy(np.array([t]), np.array([lo]))[0, 0])
        cv2.line(img, (x, y1), (x, y1 + 4), grey, 1)
        _text(img, _tick_label(t), (x, y1 + 17), 0.4, centre=True)
    cv2.rectangle(img, (x0, y0), (x1, y1), grey, 1)
    _text(img, "step", ((x0 + x1) // 2, y1 + 36), 0.45, centre=True)
    _vertical_text(img, ylabel, (x0 - 50, (y0 + y1) // 2))
    for i, (name, v, colour) in enumerate(series):
        ok = np.isfinite(v)
        if ok.sum() >= 2:
            cv2.polylines(img, [xy(steps[ok], np.clip(v[ok], lo, hi))], False, colour, 1,
                          cv2.LINE_AA)
        lx = x0 + 150 * i  # the legend, in a row above the plot
        cv2.line(img, (lx, y0 - 12), (lx + 20, y0 - 12), colour, 2)
        _text(img, name, (lx + 26, y0 - 8), 0.42)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (multiples of 1, 2 or 5 x 10^k) covering [lo, hi], about ``count``."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    step = nice_ceil((hi - lo) / count)
    first, last = np.floor(lo / step + 1e-9), np.ceil(hi / step - 1e-9)
    return [float(k * step) for k in np.arange(first, last + 1)]


def _tick_label(t: float) -> str:
    if 1e4 <= abs(t) < 1e7 and t == round(t):
        return f"{t / 1000:g}k"
    return f"{round(t, 10):g}"


def _text(img: np.ndarray, text: str, at: tuple[int, int], scale: float,
          centre: bool = False, right: bool = False) -> None:
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, _), _ = cv2.getTextSize(text, font, scale, 1)
    x = at[0] - tw // 2 if centre else at[0] - tw if right else at[0]
    cv2.putText(img, text, (x, at[1]), font, scale, (0, 0, 0), 1, cv2.LINE_AA)


def _vertical_text(img: np.ndarray, text: str, centre: tuple[int, int]) -> None:
    """Text turned 90 degrees anticlockwise (a y-axis label), centred on ``centre``."""
    import cv2

    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    (tw, th), base = cv2.getTextSize(text, font, scale, 1)
    strip = np.full((th + base + 4, tw + 4, 3), 255, np.uint8)
    cv2.putText(strip, text, (2, th + 2), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    strip = np.ascontiguousarray(np.rot90(strip))
    sh, sw = strip.shape[:2]
    y, x = centre[1] - sh // 2, centre[0] - sw // 2
    y, x = max(0, y), max(0, x)
    region = img[y:y + sh, x:x + sw]
    region[...] = np.minimum(region, strip[:region.shape[0], :region.shape[1]])
