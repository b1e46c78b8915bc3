"""The training loop: start a run (config, data, checkpoint, each read once), then step, log,
sample, checkpoint and stop, top to bottom.

``train`` drives ``dcgan.trainer.Trainer`` to the run's total steps: a metrics line (the only
host read of the losses) every log interval, sample grids, atomic checkpoints (the newest
valid ones kept), a guard that stops on NaN/inf or exploded losses without saving over the
last good checkpoint, Ctrl-C that saves and stops cleanly, and, under torchrun, one process
group over all GPUs.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from dcgan import ddp
from dcgan.checkpoint import (
    GENERATOR,
    NAME,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    save_checkpoint,
)
from dcgan.config import TrainConfig, check_epochs, config_difference, steps_for_epochs
from dcgan.data import mix_seed, open_images
from dcgan.models import sample_z
from dcgan.run import RunDir
from dcgan.trainer import Trainer
from pipeline.errors import UserError
from pipeline.outputs import OutputDir

__all__ = ["Start", "Trainer", "TrainingDiverged", "start_run", "train", "train_run"]

log = logging.getLogger(__name__)

# A mean loss above 100 nats over a log interval stops the run: D's logits are then past
# +-100, where its probabilities are 0 or 1 to float32 precision (healthy, collapsing and
# 100x-too-fast runs measured stay below 20; --lr 1e5 reaches 1e12 at the first step).
EXPLODED = 100.0


class TrainingDiverged(UserError):
    """The losses became NaN, infinite or exploded: the run stopped, the last good checkpoint
    stays."""


@dataclass(frozen=True)
class Start:
    """What a run starts from, each read once: the config, the training pixels (None when
    not opened, for a dry run) and, on resume, the checkpoint and its contents."""

    data: Path
    out: Path
    config: TrainConfig
    images: np.ndarray | None
    checkpoint: Path | None = None
    state: dict[str, Any] | None = None


def start_run(data: str | Path, out: str | Path, overrides: dict[str, Any],
              resume: bool = False, epochs: float | None = None, open_data: bool = True,
              progress: bool = True) -> Start:
    """The run's config (defaults, or the checkpoint's on resume, plus ``overrides``; None
    values are ignored), its data and its checkpoint. ``epochs`` sets the total steps from
    the data's size (the data is then opened even without ``open_data``).

    Refused: an output folder that is not a run's own, a new run where one exists, a resume
    without a checkpoint or with another trajectory (the differences are named).
    """
    data, out = Path(data), Path(out)
    OutputDir(out, "run", [data]).check()
    if epochs is not None:
        check_epochs(epochs)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    path = state = None
    if resume:
        path, state = _resume_point(out)
        config = _resumed_config(path, state, overrides)
    else:
        found = list_checkpoints(out)
        if found:
            raise UserError(f"{out} already holds a run (checkpoints up to step "
                            f"{int(NAME.match(found[0].name)[1])}): continue it with `resume`, "
                            "or choose another `out`")
        config = TrainConfig.from_dict(overrides)
    images = None
    if open_data or epochs is not None:
        images = open_images(data, config.resolution, progress and ddp.from_env().main)
        if epochs is not None:
            config = config.replace(steps=steps_for_epochs(len(images), config.batch_size,
                                                           epochs))
        if len(images) < config.batch_size and ddp.from_env().main:
            log.warning("the data holds %d image%s but a batch is %d: each batch holds every "
                        "image about %.3g times", len(images), "" if len(images) == 1 else "s",
                        config.batch_size, config.batch_size / len(images))
    return Start(data, out, config, images, path, state)


def _resume_point(out: Path) -> tuple[Path, dict[str, Any]]:
    """The newest valid full checkpoint of the run in ``out`` and its contents."""
    if not list_checkpoints(out):
        raise UserError(f"nothing to `resume`: {out} holds no checkpoint (looked in "
                        f"{checkpoint_path(out, 0).parent})")
    path, state = latest_checkpoint(out)
    missing = {"D", "opt_g", "opt_d", "step", "rng"} - set(state)
    if missing:
        raise UserError(f"cannot `resume` from {path}: not a full training checkpoint (no "
                        f"{', '.join(sorted(missing))})")
    return path, state


def _resumed_config(path: Path, state: dict[str, Any], overrides: dict[str, Any]
                    ) -> TrainConfig:
    """The checkpoint's config with ``overrides``; one that changes the trajectory is refused."""
    saved = TrainConfig.from_dict(state["config"])
    config = saved.replace(**overrides)
    diff = config_difference(saved, config)
    if diff:
        raise UserError(f"cannot `resume` {path}: it was trained with another config "
                        f"({'; '.join(diff)}); resume with the same settings, or start a new "
                        "run in another `out`")
    return config


def train(data: str | Path, out: str | Path, config: TrainConfig, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a run in ``out`` on ``data``; returns a summary.

    Under torchrun every process calls this; process 0 writes the run directory.
    """
    return train_run(start_run(data, out, config.to_dict(), resume, progress=progress),
                     progress)


def train_run(start: Start, progress: bool = True) -> dict[str, Any]:
    """Train from ``start`` (see ``start_run``) to its config's total steps."""
    if start.images is None:
        raise ValueError("start_run(open_data=False) gives a config to show, not to train")
    dist, device = ddp.init(start.config.device)
    try:
        return _train(start, progress, dist, device)
    finally:
        ddp.shutdown(dist)


class _Mark(NamedTuple):
    step: int  # the step of the last metrics line (or the start)
    time: float  # time.monotonic() then


def _train(start: Start, progress: bool, dist: ddp.Dist, device: torch.device
           ) -> dict[str, Any]:
    run = RunDir(start.out, start.data, write=dist.main)
    try:
        return _train_in(run, start, progress, dist, device)
    finally:
        run.close()


def _train_in(run: RunDir, start: Start, progress: bool, dist: ddp.Dist,
              device: torch.device) -> dict[str, Any]:
    from pipeline.progress import progress_bar

    config, out, every = start.config, start.out, start.config.intervals()
    trainer = Trainer(config, start.images, device, dist)
    if start.state is not None:
        _load_state(trainer, start)
    run.save_config(config.resolved(), str(start.data))
    run.truncate_metrics(trainer.step)
    fixed = sample_z(64, config, torch.Generator().manual_seed(mix_seed(config.seed, "fixed")))
    fid = _fid_evaluator(start, device) if config.fid_every and dist.main else None
    first, t0 = trainer.step, time.monotonic()
    mark = _Mark(first, t0)
    saved = trainer.step  # the newest checkpoint of this run (0: none)
    verified: dict[Path, tuple[int, int]] = {}  # intact checkpoints (see prune_checkpoints)
    status, metrics = "finished", {}
    bar = progress_bar(config.steps, "train", "step", progress and dist.main,
                       initial=trainer.step)
    try:
        with _StopOnSignal() as stop:
            for step in range(trainer.step + 1, config.steps + 1):
                trainer.train_step()
                bar.update(1)
                last = step == config.steps
                fid_now = fid is not None and (step % config.fid_every == 0 or last)
                log_now = step % every.log == 0 or last or fid_now
                if log_now:
                    metrics, mark = _log(trainer, run, mark, fid if fid_now else None, bar)
                if step % every.sample == 0 or last:
                    run.save_samples(trainer.sample(fixed), step)
                if step % every.checkpoint == 0:
                    if not log_now:
                        _check_losses(trainer.read_metrics(reset=False), mark.step, step, out)
                    saved = _checkpoint(trainer, run, config.keep, dist, saved, verified)
                if _stop_requested(stop.requested, log_now, dist, device):
                    status = "interrupted"
                    break
        if trainer.acc_steps:
            _check_losses(trainer.read_metrics(reset=False), mark.step, trainer.step, out)
        in_sync = _same_weights(trainer, dist, device)
        saved = _checkpoint(trainer, run, config.keep, dist, saved, verified)
        generator = _save_generator(trainer, run) if dist.main and trainer.step else None
    finally:
        bar.close()
        trainer.close()
    seconds = time.monotonic() - t0
    done = trainer.step - first
    return {"status": status, "step": trainer.step, "steps_run": done,
            "seconds": round(seconds, 2),
            "img_per_s": round(done * config.batch_size / max(seconds, 1e-9), 1),
            "speed": trainer.speed, "device": str(device), "world_size": dist.world_size,
            "metrics": metrics,
            "checkpoint": str(checkpoint_path(out, saved)) if saved else None,
            "generator": str(generator) if generator else None, "run": str(out),
            "rank": dist.rank, "in_sync": in_sync}


def _load_state(trainer: Trainer, start: Start) -> None:
    trainer.load_state_dict(start.state)
    n = start.state.get("n_images")
    if n != trainer.n_images:
        log.warning("the data holds %d images, the checkpoint's %s: the data order differs "
                    "from the original run's", trainer.n_images, n)
    log.info("resuming %s from step %d (%s)", start.out, trainer.step, start.checkpoint.name)


def _fid_evaluator(start: Start, device: torch.device) -> Any:
    """FID/KID against the training images, embedded once before the first step."""
    from dcgan.fid import FidEvaluator

    c = start.config
    return FidEvaluator(start.images, n=c.fid_n, device=str(device), seed=c.seed)


def _log(trainer: Trainer, run: RunDir, mark: _Mark, fid: Any, bar: Any
         ) -> tuple[dict[str, Any], _Mark]:
    """Read the losses back (one host sync), check them, write a metrics line."""
    values = trainer.read_metrics()
    step, now = trainer.step, time.monotonic()
    _check_losses(values, mark.step, step, run.root)
    rate = (step - mark.step) * trainer.config.batch_size / max(now - mark.time, 1e-9)
    metrics = {"step": step, **{k: round(v, 5) for k, v in values.items()},
               "img_per_s": round(rate, 1), "epoch": round(trainer.order.epoch(step), 3)}
    if fid is not None:
        try:
            metrics.update(fid(trainer.G, trainer.config))
        finally:
            trainer.G.train()
    run.log(metrics)
    bar.set_postfix(loss_d=metrics["loss_d"], loss_g=metrics["loss_g"], refresh=False)
    return metrics, _Mark(step, now)


def _check_losses(values: dict[str, float], since: int, step: int, out: Path) -> None:
    """Stop the run (TrainingDiverged) when a mean loss is NaN, infinite or exploded."""
    losses = {k: v for k, v in values.items() if k.startswith("loss")}
    if all(math.isfinite(v) for v in losses.values()):
        worst = max(losses, key=losses.__getitem__)
        if losses[worst] <= EXPLODED:
            return
        what = f"exploded ({worst} {losses[worst]:.3g}, above {EXPLODED:g})"
    else:
        what = "became NaN or infinite"
    found = list_checkpoints(out)
    kept = f"the last good checkpoint is kept: {found[0]}" if found else \
        "no checkpoint had been written yet"
    raise TrainingDiverged(f"training diverged: the losses {what} between steps {since} and "
                           f"{step}; stopped without saving ({kept}). Try a lower `lr` or "
                           "check the data")


def _checkpoint(trainer: Trainer, run: RunDir, keep: int, dist: ddp.Dist, saved: int,
                verified: dict[Path, tuple[int, int]]) -> int:
    """Save this step's checkpoint (once) and prune to the newest valid ones; returns the
    step of the newest checkpoint."""
    if trainer.step in (0, saved):
        return saved
    if dist.main:  # replaces a file of the same step (say, a damaged one skipped on resume)
        path = checkpoint_path(run.root, trainer.step)
        save_checkpoint(trainer.state_dict(), run.own(path.relative_to(run.root).as_posix()),
                        verified)
        prune_checkpoints(run.root, keep, run.remove, verified)
    ddp.barrier(dist)
    return trainer.step


def _save_generator(trainer: Trainer, run: RunDir) -> Path:
    """G alone, for sampling and the experiments."""
    return save_checkpoint({"format": 1, "config": trainer.config.to_dict(),
                            "step": trainer.step, "G": trainer.G.state_dict()},
                           run.own(GENERATOR))


def _stop_requested(requested: bool, log_now: bool, dist: ddp.Dist, device: torch.device
                    ) -> bool:
    """Ctrl-C was pressed: alone, stop now; several processes agree only where they already
    meet (the log step)."""
    if not dist.enabled:
        return requested
    return log_now and ddp.any_true(requested, dist, device)


class _StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step; twice: now."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _same_weights(trainer: Trainer, dist: ddp.Dist, device: torch.device) -> bool:
    """Whether every process ends with the same weights (DDP's promise, checked once)."""
    if not dist.enabled:
        return True
    with torch.no_grad():
        total = torch.stack([p.double().sum() for net in (trainer.G, trainer.D)
                             for p in net.parameters()]).sum().reshape(1).to(device)
    lo, hi = total.clone(), total.clone()
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    if lo.item() != hi.item():
        log.error("the processes ended with different weights (%r vs %r)", lo.item(), hi.item())
        return False
    return True
