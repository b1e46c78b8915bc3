"""A training run's configuration (nanoGPT's GPTConfig): every field, its default, its checks.

Importing this module is light (no torch), so the CLI can show the defaults in ``--help``;
the allowed values come from the modules that define them (``dcgan.models`` for resolutions
and z distributions, ``pipeline.devices`` for devices).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

from pipeline.errors import UserError, at_least

SPEEDS = ("auto", "graph", "compile", "eager")  # the CUDA step's forms (auto: graph on one GPU)

# Derived monitoring: about this many metrics lines, sample grids and checkpoints per run.
LOG_POINTS, SAMPLE_GRIDS, CHECKPOINTS = 250, 20, 10


@dataclass(frozen=True)
class TrainConfig:
    resolution: int = 64  # image side: 32, 64 (the paper's) or 128
    nz: int = 100  # length of the noise vector z (the paper: 100)
    ngf: int = 64  # generator width: channels of its last hidden layer
    ndf: int = 64  # discriminator width: channels of its first layer
    z_dist: str = "uniform"  # z's distribution: "uniform" in [-1, 1] (the paper) or "normal"
    lr: float = 2e-4  # Adam learning rate for both networks (the paper, §4)
    beta1: float = 0.5  # Adam beta1 (the paper lowered it from 0.9 for stability)
    beta2: float = 0.999  # Adam beta2
    batch_size: int = 128  # images per step, over all processes (the paper: 128)
    steps: int = 10000  # the run's total number of steps (a resumed run continues up to it)
    seed: int = 0  # seeds the weights, the data order, the noise and the flips
    flip: bool = False  # random horizontal flips of the real images (the paper uses none)
    log_every: int | None = None  # steps between metrics lines; None: derived from steps
    sample_every: int | None = None  # steps between sample grids; None: derived from steps
    checkpoint_every: int | None = None  # steps between checkpoints; None: derived from steps
    fid_every: int = 0  # steps between FID/KID measurements in metrics.jsonl (0 = never)
    fid_n: int = 2000  # images on each side of those FID/KID measurements
    keep: int = 3  # valid checkpoints kept (the newest)
    device: str = "auto"  # "auto" (CUDA when present), "cuda" or "cpu"
    speed: str = "auto"  # CUDA step: "graph" (CUDA graph), "compile" (+torch.compile), "eager"
    amp: bool = True  # bf16 autocast on CUDA (always fp32 on the CPU)

    def __post_init__(self) -> None:
        # Imported here, not above: the CLI reads this class for --help without torch.
        from dcgan.models import RESOLUTIONS, Z_DISTS
        from pipeline.devices import DEVICES

        for name, allowed in (("resolution", RESOLUTIONS), ("z_dist", Z_DISTS),
                              ("device", DEVICES), ("speed", SPEEDS)):
            value = getattr(self, name)
            if value not in allowed:
                raise UserError(f"{_arg(name)} must be {_one_of(allowed)} (got {value!r})")
        at_least(self, nz=1, ngf=1, ndf=1, batch_size=1, steps=1, keep=1, fid_every=0,
                 fid_n=2, log_every=1, sample_every=1, checkpoint_every=1)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"`lr` must be a positive number (got {self.lr})")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"`{name}` must be in [0, 1) (got {getattr(self, name)})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from a dict; unknown keys are refused, missing ones take defaults."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown training config field(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def intervals(self) -> Intervals:
        """The monitoring intervals: as given, or derived from ``steps`` so that any run
        length gives a readable loss curve, a few sample grids and a few checkpoints."""
        return Intervals(self.log_every or derived_interval(self.steps, LOG_POINTS),
                         self.sample_every or derived_interval(self.steps, SAMPLE_GRIDS),
                         self.checkpoint_every or derived_interval(self.steps, CHECKPOINTS))

    def resolved(self) -> dict[str, Any]:
        """``to_dict`` with the intervals' values (for --dry-run and config.json)."""
        every = self.intervals()
        return {**self.to_dict(), "log_every": every.log, "sample_every": every.sample,
                "checkpoint_every": every.checkpoint}


class Intervals(NamedTuple):
    log: int  # steps between metrics lines (and loss.png redraws)
    sample: int  # steps between sample grids
    checkpoint: int  # steps between checkpoints


# Fields that define the trajectory of a run: a resumed run must agree on all of them.
TRAJECTORY_FIELDS = ("resolution", "nz", "ngf", "ndf", "z_dist", "lr", "beta1", "beta2",
                     "batch_size", "seed", "flip")


def config_difference(old: TrainConfig, new: TrainConfig) -> list[str]:
    """'field: old -> new' for each trajectory field that differs."""
    return [f"{k}: {getattr(old, k)!r} -> {getattr(new, k)!r}" for k in TRAJECTORY_FIELDS
            if getattr(old, k) != getattr(new, k)]


def check_epochs(epochs: float) -> float:
    """``epochs`` if it is a number of passes to train for (more than 0)."""
    if not (epochs > 0 and math.isfinite(epochs)):
        raise UserError(f"`epochs` must be more than 0 (got {epochs:g})")
    return epochs


def steps_for_epochs(n_images: int, batch_size: int, epochs: float) -> int:
    """The total steps that make ``epochs`` passes over ``n_images`` at ``batch_size``."""
    return max(1, math.ceil(check_epochs(epochs) * n_images / batch_size))


def nice_ceil(x: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``x`` (> 0): round
    numbers for intervals and plot ticks."""
    power = 10.0 ** math.floor(math.log10(x))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= x * (1 - 1e-9))


def derived_interval(steps: int, count: int) -> int:
    """A round interval that gives about ``count`` (between count / 2.5 and count) events."""
    return max(1, round(nice_ceil(steps / count)))


def _arg(name: str) -> str:
    """An argument as messages name it: in backquotes, with hyphens (a CLI shows its flag)."""
    return f"`{name.replace('_', '-')}`"


def _one_of(values: tuple) -> str:
    *head, last = map(str, values)
    return f"{', '.join(head)} or {last}" if head else last
