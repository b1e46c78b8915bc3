"""The run directory: config.json, metrics.jsonl, sample grids and the loss-curve PNG.

Layout::

    RUN/config.json            the resolved TrainConfig (+ data path, tool version)
    RUN/metrics.jsonl          one line every log_every steps: step, losses, D(x), D(G(z)), img/s
    RUN/samples/step-*.png     the fixed noise batch through G (eval mode)
    RUN/loss.png               loss curves, redrawn with every metrics line
    RUN/checkpoints/step-*.pt  the last K checkpoints (dcgan.checkpoint)
    RUN/generator.pt           G alone, for sampling
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.dataset import atomic_write, read_jsonl, write_json

METRICS = "metrics.jsonl"


class RunDir:
    """Writes a run's outputs (only process 0 of a multi-process run writes)."""

    def __init__(self, root: str | Path, write: bool = True):
        self.root = Path(root)
        self.write = write
        if write:
            self.root.mkdir(parents=True, exist_ok=True)

    def save_config(self, config: dict[str, Any], data: str) -> None:
        if self.write:
            write_json(self.root / "config.json", {**config, "data": data,
                                                   "version": __version__})

    def metrics(self) -> list[dict]:
        return read_jsonl(self.root / METRICS)

    def truncate_metrics(self, step: int) -> None:
        """Drop lines past ``step`` (a resumed run rewrites what came after its checkpoint)."""
        if not self.write or not (self.root / METRICS).exists():
            return
        keep = [m for m in self.metrics() if m["step"] <= step]
        with atomic_write(self.root / METRICS) as f:
            f.writelines(json.dumps(m) + "\n" for m in keep)

    def log(self, record: dict[str, Any]) -> None:
        if self.write:
            with open(self.root / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.save_loss_curve()

    def save_samples(self, images: np.ndarray, step: int) -> Path | None:
        """A grid of generated images (N x H x W x 3 uint8)."""
        if not self.write:
            return None
        from pipeline.sheets import save_sheet

        path = self.root / "samples" / f"step-{step:08d}.png"
        return save_sheet(list(images), path, pad=1)

    def save_loss_curve(self) -> Path | None:
        from pipeline.sheets import save_png

        metrics = self.metrics()
        if len(metrics) < 2:
            return None
        return save_png(plot_curves(metrics, ("loss_d", "loss_g")), self.root / "loss.png")


_COLOURS = {"loss_d": (31, 119, 180), "loss_g": (255, 127, 14)}  # RGB


def plot_curves(metrics: list[dict], keys: tuple[str, ...], size: tuple[int, int] = (800, 400)
                ) -> np.ndarray:
    """Line plot of ``keys`` against ``step`` as an RGB uint8 image, drawn with OpenCV."""
    import cv2

    w, h = size
    left, right, top, bottom = 60, 20, 30, 40
    img = np.full((h, w, 3), 255, np.uint8)
    steps = np.array([m["step"] for m in metrics], float)
    series = {k: np.array([m.get(k, np.nan) for m in metrics], float) for k in keys}
    vals = np.concatenate([v[np.isfinite(v)] for v in series.values()] or [np.zeros(1)])
    lo, hi = (float(vals.min()), float(vals.max())) if len(vals) else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    s0, s1 = float(steps.min()), float(max(steps.max(), steps.min() + 1))

    def xy(s: np.ndarray, v: np.ndarray) -> np.ndarray:
        x = left + (s - s0) / (s1 - s0) * (w - left - right)
        y = h - bottom - (v - lo) / (hi - lo) * (h - top - bottom)
        return np.stack([x, y], 1).round().astype(np.int32)

    font, grey = cv2.FONT_HERSHEY_SIMPLEX, (120, 120, 120)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), grey, 1)
    for t in np.linspace(lo, hi, 5):
        y = int(xy(np.array([s0]), np.array([t]))[0, 1])
        cv2.line(img, (left - 4, y), (left, y), grey, 1)
        cv2.putText(img, f"{t:.2f}", (4, y + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for t in np.linspace(s0, s1, 5):
        x = int(xy(np.array([t]), np.array([lo]))[0, 0])
        cv2.line(img, (x, h - bottom), (x, h - bottom + 4), grey, 1)
        cv2.putText(img, f"{int(t)}", (x - 15, h - bottom + 18), font, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.putText(img, "step", (w // 2 - 15, h - 6), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (k, v) in enumerate(series.items()):
        colour = _COLOURS.get(k, (0, 0, 0))
        ok = np.isfinite(v)
        if ok.sum() >= 2:
            cv2.polylines(img, [xy(steps[ok], v[ok])], False, colour, 1, cv2.LINE_AA)
        cv2.putText(img, k, (left + 10 + 90 * i, top - 10), font, 0.5, colour, 1, cv2.LINE_AA)
    return img
