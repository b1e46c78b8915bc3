"""Training configuration and checkpoints: save atomically, find the latest good one, load.

A checkpoint holds everything needed to resume exactly (nanoGPT's checkpoint dict): both
networks, both optimizers, the step, RNG states and the config. Files are loaded with
``torch.load(weights_only=True)``, so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.dataset import atomic_write
from pipeline.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
GENERATOR = "generator.pt"
_NAME = re.compile(r"^step-(\d+)\.pt$")


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
    log_every: int = 50  # steps between metrics lines (the only time losses are read back)
    sample_every: int = 500  # steps between sample grids from the fixed noise batch
    checkpoint_every: int = 1000  # steps between checkpoints
    fid_every: int = 0  # steps between FID/KID measurements in metrics.jsonl (0 = never)
    fid_n: int = 2000  # images on each side of those FID/KID measurements
    keep: int = 3  # checkpoints kept (the newest)
    device: str = "auto"  # "auto" (CUDA when present), "cuda" or "cpu"
    speed: str = "auto"  # CUDA step: "graph" (CUDA graph), "compile" (+torch.compile), "eager"
    amp: bool = True  # bf16 autocast on CUDA (always fp32 on the CPU)

    def __post_init__(self) -> None:
        checks = [
            (self.resolution in (32, 64, 128), f"resolution must be 32, 64 or 128 (got "
                                               f"{self.resolution})"),
            (self.z_dist in ("uniform", "normal"), f"z-dist must be uniform or normal (got "
                                                   f"{self.z_dist!r})"),
            (self.device in ("auto", "cuda", "cpu"), f"device must be auto, cuda or cpu (got "
                                                     f"{self.device!r})"),
            (self.speed in ("auto", "graph", "compile", "eager"), "speed must be auto, graph, "
                                                                  f"compile or eager (got "
                                                                  f"{self.speed!r})"),
            (min(self.nz, self.ngf, self.ndf, self.batch_size, self.steps, self.keep,
                 self.log_every, self.sample_every, self.checkpoint_every) >= 1,
             "nz, ngf, ndf, batch size, steps, keep and the intervals must be at least 1"),
            (self.fid_every >= 0 and self.fid_n >= 2,
             "fid-every must be 0 (off) or more, and fid-n at least 2"),
            (self.lr > 0 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
             "lr must be positive and the betas in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

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


# Fields that define the trajectory of a run: a resumed run must agree on all of them.
TRAJECTORY_FIELDS = ("resolution", "nz", "ngf", "ndf", "z_dist", "lr", "beta1", "beta2",
                     "batch_size", "seed", "flip")


def config_difference(old: TrainConfig, new: TrainConfig) -> list[str]:
    """'field: old -> new' for each trajectory field that differs."""
    return [f"{k}: {getattr(old, k)!r} -> {getattr(new, k)!r}" for k in TRAJECTORY_FIELDS
            if getattr(old, k) != getattr(new, k)]


def checkpoint_path(run: str | Path, step: int) -> Path:
    return Path(run) / CHECKPOINTS / f"step-{step:08d}.pt"


def list_checkpoints(run: str | Path) -> list[Path]:
    """The run's checkpoint files, newest (highest step) first."""
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` under a temporary name, then rename: a crash never leaves a half file."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return path


def prune_checkpoints(run: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    for p in list_checkpoints(run)[max(1, keep):]:
        p.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint file safely (``weights_only=True``); UserError if unreadable."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, garbage, or pickled code refused
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint of this tool "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
                        ) from e
    if not isinstance(ckpt, dict) or "config" not in ckpt or "G" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this tool (no config or generator)")
    return ckpt


def latest_checkpoint(run: str | Path, map_location: Any = "cpu"
                      ) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of ``run`` that loads, and its contents; older ones are tried
    when newer ones are corrupt."""
    run = Path(run)
    candidates = list_checkpoints(run)
    for p in candidates:
        try:
            return p, load_checkpoint(p, map_location)
        except UserError as e:
            log.warning("skipping %s", e)
    if not candidates and (run / GENERATOR).is_file():
        return run / GENERATOR, load_checkpoint(run / GENERATOR, map_location)
    what = "no valid checkpoint" if candidates else "no checkpoint"
    raise UserError(f"{run} holds {what} (looked in {run / CHECKPOINTS})")


def find_checkpoint(run_or_file: str | Path) -> Path:
    """A checkpoint file as given, or the latest valid one in a run directory."""
    p = Path(run_or_file)
    if p.is_dir():
        return latest_checkpoint(p)[0]
    if not p.exists():
        raise UserError(f"{p} does not exist")
    return p


def _load(run_or_file: str | Path, map_location: Any) -> tuple[dict[str, Any], TrainConfig]:
    p = Path(run_or_file)
    ckpt = latest_checkpoint(p, map_location)[1] if p.is_dir() else load_checkpoint(
        p, map_location)
    return ckpt, TrainConfig.from_dict(ckpt["config"])


def load_generator(run_or_file: str | Path, device: Any = "cpu"):
    """The generator of a run (latest valid checkpoint) or checkpoint file, in eval mode."""
    from dcgan.models import Generator

    ckpt, config = _load(run_or_file, device)
    g = Generator(config.nz, config.ngf, config.resolution).to(device)
    g.load_state_dict(ckpt["G"])
    return g.eval(), config


def load_discriminator(run_or_file: str | Path, device: Any = "cpu"):
    """The discriminator of a run or checkpoint file, in eval mode."""
    from dcgan.models import Discriminator

    ckpt, config = _load(run_or_file, device)
    if "D" not in ckpt:
        raise UserError(f"{run_or_file} holds a generator only (no discriminator): "
                        "give the run directory or a checkpoints/step-*.pt file")
    d = Discriminator(config.ndf, config.resolution).to(device)
    d.load_state_dict(ckpt["D"])
    return d.eval(), config


def sample_z(n: int, config: TrainConfig, generator: Any = None, device: Any = None,
             out: Any = None):
    """``n`` noise vectors (n, nz) from the config's distribution.

    ``generator``: a ``torch.Generator`` (its device is used when ``device`` is None).
    ``out``: an existing (n, nz) tensor to fill in place (no allocation).
    """
    import torch

    if out is None:
        if device is None:
            device = generator.device if generator is not None else "cpu"
        out = torch.empty(n, config.nz, device=device)
    if config.z_dist == "uniform":
        return out.uniform_(-1.0, 1.0, generator=generator)
    if config.z_dist == "normal":
        return out.normal_(0.0, 1.0, generator=generator)
    raise UserError(f"z_dist must be 'uniform' or 'normal' (got {config.z_dist!r})")
