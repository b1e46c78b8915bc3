"""One DCGAN training step and everything it touches: models, optimizers, feed, state.

One code path serves the CPU and the GPU. On CUDA it adds: the images resident on the GPU as
uint8 (dcgan.data.Feed), bf16 autocast, channels-last, fused Adam, and the whole step
(forward, backward, both optimizer updates) captured once as a CUDA graph and replayed, so a
step is a handful of launches; optionally torch.compile inside it. Losses accumulate on the
device and are read back only when asked. Every random draw of step ``s`` (the batch, z,
flips) comes from (seed, rank, s), so resuming from a checkpoint is exact.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dcgan import ddp
from dcgan.config import TrainConfig
from dcgan.data import DataOrder, Feed, fits, mix_seed, to_input
from dcgan.models import build_models, sample_z

log = logging.getLogger(__name__)

_WARMUP = 3  # eager steps before a CUDA graph is captured (cuDNN autotuning, lazy state)


class Trainer:
    """Models, optimizers, data feed and the step; ``step`` counts finished global steps."""

    def __init__(self, config: TrainConfig, images: np.ndarray, device: torch.device,
                 dist: ddp.Dist = ddp.Dist(), resident: bool | None = None):
        self.config, self.device, self.dist = config, device, dist
        cuda = device.type == "cuda"
        speed = config.speed
        if speed == "auto":
            speed = "graph" if cuda and not dist.enabled else "eager"
        if speed != "eager" and (not cuda or dist.enabled):
            log.info("speed %r needs one CUDA process: running eager", speed)
            speed = "eager"
        self.speed = speed
        self.channels_last = cuda
        self.amp = config.amp and cuda
        if cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

        torch.manual_seed(mix_seed(config.seed, "init"))  # same weights on every process
        G, D = build_models(config)
        fmt = torch.channels_last if cuda else torch.contiguous_format
        self.G, self.D = G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)
        opt = {"lr": config.lr, "betas": (config.beta1, config.beta2)}
        if cuda:  # one fused kernel per optimizer; capturable so it can live in a CUDA graph
            opt.update(fused=True, capturable=True)
        self.opt_g = torch.optim.Adam(self.G.parameters(), **opt)
        self.opt_d = torch.optim.Adam(self.D.parameters(), **opt)
        self.g_run, self.d_run = self.G, self.D  # what the step calls
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if cuda else None
            self.g_run, self.d_run = DDP(self.G, device_ids=ids), DDP(self.D, device_ids=ids)
        if speed == "compile":
            self.g_run, self.d_run = torch.compile(self.G), torch.compile(self.D)

        self.n_images = len(images)
        if resident is None:
            resident = fits(images.nbytes, device)
        # The order lives where the gather happens: on the device, or on the host to stream.
        self.order = DataOrder(len(images), config.batch_size, config.seed, dist.rank,
                               dist.world_size, device if resident else "cpu")
        self.feed = Feed(images, self.order, device, resident)
        b = self.order.local
        self.real = torch.empty((b, *images.shape[1:]), dtype=torch.uint8, device=device)
        self.z = torch.empty(b, config.nz, device=device)
        self.flip = torch.zeros(b, device=device)
        self.ones = torch.ones(b, device=device)
        self.zeros = torch.zeros(b, device=device)
        self.acc = torch.zeros(4, device=device)  # loss_d, loss_g, D(x), D(G(z)) sums
        self.acc_steps = 0
        self.rng = torch.Generator(device)
        self.step = 0
        self.graph: Any = None
        self._eager_steps = 0

    # -- the step ---------------------------------------------------------------------------
    def _inputs(self, step: int) -> None:
        self.feed.batch(step, out=self.real)
        self.rng.manual_seed(mix_seed(self.config.seed, self.dist.rank, step))
        sample_z(len(self.z), self.config, self.rng, out=self.z)
        if self.config.flip:
            self.flip.bernoulli_(0.5, generator=self.rng)

    def _autocast(self):
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.amp,
                              cache_enabled=False)

    def _compute(self) -> None:
        """One step: D on real and fake (§3: separate batches), then G (non-saturating)."""
        flip = self.flip > 0.5 if self.config.flip else None
        x = to_input(self.real, flip, self.channels_last)
        with self._autocast():
            fake = self.g_run(self.z)
            d_real = self.d_run(x).float()
            d_fake = self.d_run(fake.detach()).float()
            loss_d = (F.binary_cross_entropy_with_logits(d_real, self.ones)
                      + F.binary_cross_entropy_with_logits(d_fake, self.zeros))
        self.opt_d.zero_grad(set_to_none=False)
        loss_d.backward()
        self.opt_d.step()
        self.D.requires_grad_(False)  # G's step needs D's input gradient, not its weights'
        try:
            with self._autocast():
                # D itself, not its DDP wrapper: no D gradients to average here.
                d_run = self.D if self.dist.enabled else self.d_run
                loss_g = F.binary_cross_entropy_with_logits(d_run(fake).float(), self.ones)
            self.opt_g.zero_grad(set_to_none=False)
            loss_g.backward()
            self.opt_g.step()
        finally:  # also when this raises (a compile failure): the fallback step trains D
            self.D.requires_grad_(True)
        self.acc.add_(torch.stack([loss_d.detach(), loss_g.detach(),
                                   torch.sigmoid(d_real.detach()).mean(),
                                   torch.sigmoid(d_fake.detach()).mean()]))

    def train_step(self) -> None:
        self._inputs(self.step)
        if self.graph is not None:
            self.graph.replay()
        elif self.speed in ("graph", "compile"):
            self._warmup_or_capture()
        else:
            self._compute()
        self.step += 1
        self.acc_steps += 1

    def _warmup_or_capture(self) -> None:
        if self._eager_steps < _WARMUP:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            try:
                with torch.cuda.stream(side):
                    self._compute()
            except Exception as e:  # a torch.compile failure surfaces at the first call
                if self.speed != "compile" or self._eager_steps:
                    raise
                log.warning("torch.compile failed (%s): continuing with a CUDA graph of "
                            "the eager step", str(e).splitlines()[0][:200] if str(e) else e)
                self.speed, self.g_run, self.d_run = "graph", self.G, self.D
                with torch.cuda.stream(side):
                    self._compute()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._eager_steps += 1
            return
        # Capture records kernels without running them: run this step eagerly, then capture.
        self._compute()
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize(self.device)
            with torch.cuda.graph(graph):
                self._compute()
        except Exception as e:
            log.warning("CUDA graph capture failed (%s): continuing without a graph",
                        str(e).splitlines()[0][:200] if str(e) else e)
            self.speed = "eager" if self.g_run is self.G else "compile-nograph"
            return
        self.graph = graph

    # -- metrics and checks -----------------------------------------------------------------
    def read_metrics(self, reset: bool = True) -> dict[str, float]:
        """Mean losses and D outputs since the last read (one host sync)."""
        n = max(1, self.acc_steps)
        acc = self.acc.clone()
        if self.dist.enabled:
            torch.distributed.all_reduce(acc)
            acc /= self.dist.world_size
        vals = (acc / n).tolist()
        if reset:
            self.acc.zero_()
            self.acc_steps = 0
        return dict(zip(("loss_d", "loss_g", "d_real", "d_fake"), vals))

    @torch.no_grad()
    def sample(self, z: torch.Tensor) -> np.ndarray:
        """G (eval mode) on ``z``: uint8 N x H x W x 3."""
        self.G.eval()
        try:
            out = self.G(z.to(self.device)).float()
        finally:
            self.G.train()
        out = ((out.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return out.permute(0, 2, 3, 1).cpu().numpy()

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 1, "config": self.config.to_dict(), "step": self.step,
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "world_size": self.dist.world_size, "n_images": self.n_images,
            # The step's own draws are re-derived from (seed, rank, step); these are kept so
            # that nothing else drawn from the global generators changes after a resume.
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                    else []},
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        if self.graph is not None:
            raise RuntimeError("load a checkpoint before the first step")
        self.G.load_state_dict(ckpt["G"])
        self.D.load_state_dict(ckpt["D"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        self.step = int(ckpt["step"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["rng"]["cuda"] and torch.cuda.is_available():
            with contextlib.suppress(RuntimeError, IndexError):
                torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])

    def close(self) -> None:
        self.feed.close()
