"""The training loop: a run directory, metrics, samples, checkpoints, guards, resume.

``train`` drives ``dcgan.trainer.Trainer`` to the run's total steps: a metrics line (the only
host read of the losses) every ``log_every`` steps, sample grids, atomic checkpoints (the
last K), a NaN/inf guard that stops without saving over the last good checkpoint, Ctrl-C
that saves and stops cleanly, and, under torchrun, one process group over all GPUs.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from dcgan import ddp
from dcgan.checkpoint import (
    GENERATOR,
    TrainConfig,
    checkpoint_path,
    config_difference,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    sample_z,
    save_checkpoint,
)
from dcgan.data import mix_seed, open_images
from dcgan.run import RunDir
from dcgan.trainer import Trainer
from pipeline.errors import UserError

__all__ = ["Trainer", "TrainingDiverged", "resolve_config", "steps_for_epochs", "train"]

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The losses became NaN or infinite: the run stopped, the last good checkpoint stays."""


def resolve_config(out: str | Path, overrides: dict[str, Any], resume: bool) -> TrainConfig:
    """The run's config: defaults (new run) or the checkpoint's (resume), plus ``overrides``.

    A resume that changes what the run computes is refused, naming the differences.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not resume:
        return TrainConfig.from_dict(overrides)
    if not list_checkpoints(out):
        raise UserError(f"--resume: {out} holds no checkpoint to resume from (looked in "
                        f"{Path(out) / 'checkpoints'})")
    path, ckpt = latest_checkpoint(out)
    missing = {"D", "opt_g", "opt_d", "step", "rng"} - set(ckpt)
    if missing:
        raise UserError(f"--resume: {path} is not a full training checkpoint (no "
                        f"{', '.join(sorted(missing))})")
    saved = TrainConfig.from_dict(ckpt["config"])
    config = saved.replace(**overrides)
    diff = config_difference(saved, config)
    if diff:
        raise UserError(f"--resume: {path} was trained with another config ("
                        f"{'; '.join(diff)}); resume with the same settings or start a new "
                        "run with another --out")
    return config


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


def train(data: str | Path, out: str | Path, config: TrainConfig, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a run in ``out`` on ``data``; returns a summary.

    Under torchrun every process calls this; process 0 writes the run directory.
    """
    dist, device = ddp.init(config.device)
    try:
        return _train(data, Path(out), config, resume, progress, dist, device)
    finally:
        ddp.shutdown(dist)


def _train(data, out: Path, config: TrainConfig, resume: bool, progress: bool,
           dist: ddp.Dist, device: torch.device) -> dict[str, Any]:
    from tqdm import tqdm

    if not resume and list_checkpoints(out):
        raise UserError(f"{out} already holds a run (checkpoints up to step "
                        f"{latest_checkpoint(out)[1]['step']}): pass --resume to continue "
                        "it, or choose another --out")
    if resume:
        resolve_config(out, config.to_dict(), resume=True)  # refuses another config
    images = open_images(data, config.resolution, progress and dist.main)
    run = RunDir(out, write=dist.main)
    trainer = Trainer(config, images, device, dist)
    if resume:
        path, ckpt = latest_checkpoint(out)
        trainer.load_state_dict(ckpt)
        if ckpt.get("n_images") != len(images):
            log.warning("the data holds %d images, the checkpoint's %s: the data order "
                        "differs from the original run's", len(images), ckpt.get("n_images"))
        log.info("resuming %s from step %d (%s)", out, trainer.step, path.name)
    run.save_config(config.to_dict(), str(data))
    run.truncate_metrics(trainer.step)
    fixed = sample_z(64, config, torch.Generator().manual_seed(mix_seed(config.seed, "fixed")))
    fid = None
    if config.fid_every and dist.main:  # real images embedded once, before the first step
        from dcgan.fid import FidEvaluator

        fid = FidEvaluator(images, n=config.fid_n, device=str(device), seed=config.seed)
    start_step, t_start = trainer.step, time.monotonic()
    last = {"step": trainer.step, "t": t_start, "saved": -1}
    status, metrics = "finished", {}

    def save() -> Path | None:
        path = checkpoint_path(out, trainer.step)
        if trainer.step in (0, last["saved"]):
            return path if trainer.step else None
        if dist.main:  # replaces a file of the same step (say, a corrupt one skipped on resume)
            save_checkpoint(trainer.state_dict(), path)
            prune_checkpoints(out, config.keep)
        last["saved"] = trainer.step
        ddp.barrier(dist)
        return path

    def check(values: dict[str, float], since: int) -> None:
        if not all(math.isfinite(v) for v in values.values()):
            ckpts = list_checkpoints(out)
            kept = f"the last good checkpoint is kept: {ckpts[0]}" if ckpts else \
                "no checkpoint had been written yet"
            raise TrainingDiverged(
                f"training diverged: the losses became NaN or infinite between steps {since} "
                f"and {trainer.step}; stopped without saving ({kept}). Try a lower --lr or "
                "check the data")

    bar = tqdm(total=config.steps, initial=trainer.step, unit="step", desc="train",
               disable=not (progress and dist.main), dynamic_ncols=True)
    try:
        with _StopOnSignal() as stop:
            while trainer.step < config.steps:
                trainer.train_step()
                bar.update(1)
                s = trainer.step
                fid_now = bool(config.fid_every) and (s % config.fid_every == 0
                                                      or s == config.steps)
                logging_now = s % config.log_every == 0 or s == config.steps or fid_now
                if logging_now:
                    since = last["step"]
                    metrics = trainer.read_metrics()
                    check(metrics, since)
                    now = time.monotonic()
                    rate = (s - since) * config.batch_size / max(now - last["t"], 1e-9)
                    last.update(step=s, t=now)
                    metrics = {"step": s, **{k: round(v, 5) for k, v in metrics.items()},
                               "img_per_s": round(rate, 1), "epoch": round(
                                   trainer.order.epoch(s), 3)}
                    if fid is not None and fid_now:
                        try:
                            metrics.update(fid(trainer.G, config))
                        finally:
                            trainer.G.train()
                    run.log(metrics)
                    bar.set_postfix(loss_d=metrics["loss_d"], loss_g=metrics["loss_g"],
                                    refresh=False)
                if s % config.sample_every == 0 or s == config.steps:
                    run.save_samples(trainer.sample(fixed), s)
                if s % config.checkpoint_every == 0:
                    if not logging_now:
                        check(trainer.read_metrics(reset=False), last["step"])
                    save()
                # Processes agree on stopping only where they already meet (the log step).
                if (stop.requested and not dist.enabled) or (
                        logging_now and ddp.any_true(stop.requested, dist, device)):
                    status = "interrupted"
                    break
        if trainer.acc_steps:
            check(trainer.read_metrics(reset=False), last["step"])
        in_sync = _same_weights(trainer, dist, device)
        ckpt = save()
        gen = None
        if dist.main and trainer.step > 0:
            gen = save_checkpoint({"format": 1, "config": config.to_dict(),
                                   "step": trainer.step, "G": trainer.G.state_dict()},
                                  out / GENERATOR)
    finally:
        bar.close()
        trainer.close()
    seconds = time.monotonic() - t_start
    done = trainer.step - start_step
    return {"status": status, "step": trainer.step, "steps_run": done,
            "seconds": round(seconds, 2),
            "img_per_s": round(done * config.batch_size / max(seconds, 1e-9), 1),
            "speed": trainer.speed, "device": str(device), "world_size": dist.world_size,
            "metrics": metrics, "checkpoint": str(ckpt) if ckpt else None,
            "generator": str(gen) if gen else None, "run": str(out), "rank": dist.rank,
            "in_sync": in_sync}


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


def steps_for_epochs(data: str | Path, config: TrainConfig, epochs: float,
                     progress: bool = True) -> int:
    """The total steps that make ``epochs`` passes over the data at the config's batch."""
    n = len(open_images(data, config.resolution, progress))
    return max(1, math.ceil(epochs * n / config.batch_size))
