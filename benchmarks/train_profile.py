"""Where a DCGAN training step's time goes, and how throughput moves with batch size and layout.

Two parts, on the GPU (the CPU works too, with small sizes):

- ``--profile B``: the eager step at batch B under torch.profiler; prints the kernels that
  take the most device time (summed over the profiled steps) and the share of the step that
  convolutions, batch norm and element-wise work take.
- ``--batches B…``: img/s of the trainer at each batch size and ``--modes`` (graph, eager,
  compile) and ``--layouts`` (channels-last as the trainer uses it, or plain NCHW), on
  synthetic uint8 images resident on the device (the data feed is measured by
  ``train_throughput.py``; here only the step is).

Usage: ``python benchmarks/train_profile.py --profile 1024 --batches 1024 2048 --modes graph``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WARM = 5


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainer(images, batch: int, mode: str, layout: str, device):
    import torch

    from dcgan.checkpoint import TrainConfig
    from dcgan.train import Trainer

    t = Trainer(TrainConfig(batch_size=batch, speed=mode, device=device.type), images, device)
    if layout == "nchw" and t.channels_last:
        # Before the first step: the optimizers keep the same parameter objects.
        t.G.to(memory_format=torch.contiguous_format)
        t.D.to(memory_format=torch.contiguous_format)
        t.channels_last = False
    return t


def profile(images, batch: int, steps: int, device, top: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    t = _trainer(images, batch, "eager", "cl", device)
    for _ in range(WARM):
        t.train_step()
    _sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with tprofile(activities=acts) as prof:
        for _ in range(steps):
            t.train_step()
        _sync(device)
    cuda = device.type == "cuda"
    events = list(prof.key_averages())
    if cuda:  # the kernels themselves (device-side events); their names say what they do
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        events = kernels or [e for e in events if not e.cpu_children]
    attr = "device_time_total" if cuda else "self_cpu_time_total"

    def key(e) -> float:
        return getattr(e, attr)

    events = [e for e in events if key(e) > 0]
    events.sort(key=key, reverse=True)
    total = sum(key(e) for e in events)
    print(f"profile: batch {batch}, {steps} eager steps, {total / steps / 1e3:.2f} ms of "
          f"{'kernel' if cuda else 'CPU'} time per step "
          f"({batch * steps / (total / 1e6):.0f} img/s if back to back)")
    groups = {"conv/gemm": 0.0, "batch norm": 0.0, "other": 0.0}
    for e in events:
        name = e.key.lower()
        g = ("conv/gemm" if any(s in name for s in ("conv", "gemm", "cudnn", "sm90", "xmma",
                                                     "cutlass", "dgrad", "wgrad", "fprop"))
             else "batch norm" if "norm" in name or "bn_" in name or "welford" in name
             else "other")
        groups[g] += key(e)
    print("  shares: " + ", ".join(f"{k} {v / total:.0%}" for k, v in groups.items()))
    for e in events[:top]:
        print(f"  {key(e) / total:6.1%} {key(e) / steps / 1e3:7.3f} ms/step "
              f"x{e.count // steps:<3d} {e.key[:110]}")
    t.close()


def throughput(images, batch: int, mode: str, layout: str, device, steps: int) -> None:
    import torch

    t0 = time.perf_counter()
    t = _trainer(images, batch, mode, layout, device)
    for _ in range(WARM):
        t.train_step()
    t.read_metrics()
    _sync(device)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        t.train_step()
        if i % 50 == 0:
            t.read_metrics()
    m = t.read_metrics()
    _sync(device)
    s = time.perf_counter() - t0
    print(f"batch {batch:5d}  {t.speed:8s} {layout:5s} {steps * batch / s:9.0f} img/s  "
          f"setup {setup:5.1f}s  loss_d {m['loss_d']:.3f} loss_g {m['loss_g']:.3f}", flush=True)
    t.close()
    del t
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    import numpy as np
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", type=int, default=None, metavar="BATCH")
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--batches", type=int, nargs="*", default=[])
    p.add_argument("--modes", nargs="+", default=["graph"])
    p.add_argument("--layouts", nargs="+", default=["cl"], choices=["cl", "nchw"])
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--timed-images", type=int, default=120_000)
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    rng = np.random.default_rng(0)
    # Smooth random images (not noise): upsampled 8x8 colour fields.
    small = rng.integers(0, 256, (args.images, 8, 8, 3), dtype=np.uint8)
    images = np.ascontiguousarray(small.repeat(8, 1).repeat(8, 2))
    if args.profile:
        profile(images, args.profile, args.profile_steps, device, args.top)
    for batch in args.batches:
        for mode in args.modes:
            for layout in args.layouts:
                try:
                    throughput(images, batch, mode, layout, device,
                               max(10, args.timed_images // batch))
                except Exception as e:  # one variant failing must not hide the others
                    print(f"batch {batch} {mode} {layout} failed: {type(e).__name__}: "
                          f"{str(e)[:300]}", flush=True)
                if mode == "compile":
                    torch._dynamo.reset()


if __name__ == "__main__":
    main()
