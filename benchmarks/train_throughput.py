"""DCGAN training throughput: our trainer vs a pytorch/examples-style loop, in one run.

Both train the same 64 px DCGAN (dcgan.models, ngf = ndf = 64, Adam 2e-4/0.5) on the same
photos (random views of the photos that ship with scikit-image/-learn, short side 256, saved as
JPEG q90, as an LSUN-like image folder):

- reference: ``torchvision.datasets.ImageFolder`` (Resize(64), CenterCrop(64), ToTensor,
  Normalize) -> ``DataLoader`` (shuffle, ``--ref-workers`` processes, persistent) -> eager
  fp32 step, reading the losses every step with ``.item()`` as pytorch/examples' dcgan does;
- ours: the folder extracted once by the pipeline (timed separately), then
  ``dcgan.train.Trainer`` steps for each ``--modes`` entry (on CUDA: uint8 images resident on
  the GPU, bf16, channels-last, fused Adam; ``graph`` replays the whole step as a CUDA graph,
  ``compile`` adds torch.compile), losses read every 50 steps as the training loop does.

img/s counts timed steps only, after warm-up (capture/compile time shown apart), end to end:
data feeding included. Losses are means over the same steps (the first timed ones, as many as
the reference times) with the same seed, to compare the loops' behaviour.
Usage: ``python benchmarks/train_throughput.py [--batches 128 1024 2048]
[--modes eager graph compile]`` (those are the CUDA defaults; about 2 minutes on an H100).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WARM = 5  # untimed steps before timing starts (loader start-up, cuDNN autotuning, capture)


def _write_one(args: tuple[int, str]) -> None:
    import cv2
    import numpy as np

    from demo.samples import package_photos, random_view

    i, root = args
    photos = _write_one.photos if hasattr(_write_one, "photos") else None
    if photos is None:
        photos = _write_one.photos = [p for _, p in package_photos()]
    rng = np.random.default_rng(i)
    img = random_view(photos[i % len(photos)], rng, short_side=256)
    cv2.imwrite(f"{root}/{i:06d}.jpg", np.ascontiguousarray(img[..., ::-1]),
                [cv2.IMWRITE_JPEG_QUALITY, 90])


def make_folder(work: Path, n: int) -> Path:
    """``n`` JPEGs under work/jpeg-N/all/ (ImageFolder wants one class folder); cached."""
    root = work / f"jpeg-{n}" / "all"
    if root.is_dir() and len(list(root.iterdir())) == n:
        return root.parent
    root.mkdir(parents=True, exist_ok=True)
    with mp.Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_write_one, [(i, str(root)) for i in range(n)], chunksize=32)
    return root.parent


def reference(folder: Path, batch: int, steps: int, workers: int, device) -> dict:
    """pytorch/examples dcgan/main.py's loop (logit D, BCEWithLogitsLoss), timed."""
    import torch
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, RandomSampler
    from torchvision.datasets import ImageFolder

    from dcgan.checkpoint import TrainConfig
    from dcgan.models import build_models

    torch.manual_seed(0)
    ds = ImageFolder(str(folder), transform=T.Compose([
        T.Resize(64), T.CenterCrop(64), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)]))
    # One long shuffled pass, as over LSUN's millions of images: a small folder's short
    # epochs would otherwise idle most workers at every epoch boundary.
    sampler = RandomSampler(ds, num_samples=(WARM + steps) * batch)
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                        drop_last=True, pin_memory=device.type == "cuda")
    g, d = build_models(TrainConfig())
    g, d = g.to(device), d.to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    crit = torch.nn.BCEWithLogitsLoss()
    losses, done, t0 = [], 0, None
    for real, _ in loader:
        if done == WARM:
            _sync(device)
            t0 = time.perf_counter()
        real = real.to(device)
        b = real.size(0)
        d.zero_grad()
        err_real = crit(d(real), torch.full((b,), 1.0, device=device))
        err_real.backward()
        fake = g(torch.rand(b, 100, 1, 1, device=device) * 2 - 1)
        out = d(fake.detach())
        err_fake = crit(out, torch.full((b,), 0.0, device=device))
        err_fake.backward()
        opt_d.step()
        g.zero_grad()
        err_g = crit(d(fake), torch.full((b,), 1.0, device=device))
        err_g.backward()
        opt_g.step()
        loss = [(err_real + err_fake).item(), err_g.item()]  # the example prints every step
        if done >= WARM:
            losses.append(loss)
        done += 1
        if done == WARM + steps:
            break
    _sync(device)
    seconds = time.perf_counter() - t0
    return _row("reference", batch, steps, seconds, 0.0, losses)


def ours(images, batch: int, steps: int, mode: str, device, compare: int) -> dict:
    """Our trainer's steps; the losses are the means over the first ``compare`` timed steps
    (the reference's window), read once there."""
    import torch

    from dcgan.checkpoint import TrainConfig
    from dcgan.train import Trainer

    config = TrainConfig(batch_size=batch, speed=mode, device=device.type)
    t_setup = time.perf_counter()
    trainer = Trainer(config, images, device)
    for _ in range(WARM):  # warm-up: cuDNN autotuning, compile, graph capture
        trainer.train_step()
    trainer.read_metrics()
    _sync(device)
    setup = time.perf_counter() - t_setup
    losses = []
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        trainer.train_step()
        if i == compare:
            m = trainer.read_metrics()
            losses.append([m["loss_d"], m["loss_g"]])
        elif i % 50 == 0:  # as the training loop reads them
            trainer.read_metrics()
    _sync(device)
    seconds = time.perf_counter() - t0
    row = _row(f"ours ({trainer.speed})", batch, steps, seconds, setup, losses)
    trainer.close()
    del trainer
    if mode == "compile":  # the next batch size compiles afresh (not as a dynamic shape)
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _row(name: str, batch: int, steps: int, seconds: float, setup: float, losses) -> dict:
    import numpy as np

    mean = np.mean(losses, 0) if losses else [float("nan")] * 2
    return {"loop": name, "batch": batch, "steps": steps, "img_per_s": steps * batch / seconds,
            "setup_s": setup, "loss_d": float(mean[0]), "loss_g": float(mean[1])}


def main() -> None:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+",
                   default=[128, 1024, 2048] if cuda else [16, 64])
    p.add_argument("--images", type=int, default=4096 if cuda else 256)
    p.add_argument("--steps", type=int, nargs="+", default=None,
                   help="timed steps of ours per batch size (default: ~60k images each)")
    p.add_argument("--ref-images", type=int, default=None, help="images timed in the "
                   "reference loop per batch size (default 8 batches of 1024 on CUDA)")
    p.add_argument("--ref-workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--modes", nargs="+",
                   default=["eager", "graph", "compile"] if cuda else ["eager"])
    p.add_argument("--skip-reference", action="store_true",
                   help="time ours only (ratios then read n/a)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs only)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dcgan-bench")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {args.images} JPEG photos; "
          f"reference loader workers: {args.ref_workers}", flush=True)

    from pipeline.dataset import Dataset
    from pipeline.extract import ExtractConfig, extract
    from pipeline.sources import FolderSource

    t = time.perf_counter()
    folder = make_folder(args.work, args.images)
    print(f"JPEG folder ready in {time.perf_counter() - t:.1f}s", flush=True)
    t = time.perf_counter()
    stats = extract(FolderSource(folder), args.work / f"data-{args.images}-64",
                    ExtractConfig(resolution=64), progress=False)
    print(f"extraction (once, cached): {time.perf_counter() - t:.1f}s, "
          f"{stats.kept} images", flush=True)
    images = Dataset(args.work / f"data-{args.images}-64").images

    rows = []
    for i, batch in enumerate(args.batches):
        steps = args.steps[min(i, len(args.steps) - 1)] if args.steps else \
            max(20, 60_000 // batch) if cuda else 3
        ref_steps = max(2, (args.ref_images or (8192 if cuda else 2 * batch)) // batch)
        base = {"img_per_s": float("nan")}
        if not args.skip_reference:
            base = reference(folder, batch, ref_steps, args.ref_workers, device)
            rows.append(base)
            _print(base, base["img_per_s"])
        for mode in args.modes:
            try:
                row = ours(images, batch, steps, mode, device, min(ref_steps, steps))
            except Exception as e:  # one mode failing must not hide the others' numbers
                print(f"  ours ({mode}) at batch {batch} failed: {type(e).__name__}: {e}",
                      flush=True)
                continue
            rows.append(row)
            _print(row, base["img_per_s"])
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=2))


def _print(row: dict, base: float) -> None:
    print(f"batch {row['batch']:5d}  {row['loop']:18s} {row['img_per_s']:10.0f} img/s  "
          f"x{row['img_per_s'] / base:6.2f}  setup {row['setup_s']:5.1f}s  "
          f"loss_d {row['loss_d']:.3f}  loss_g {row['loss_g']:.3f}  ({row['steps']} steps)",
          flush=True)


if __name__ == "__main__":
    main()
