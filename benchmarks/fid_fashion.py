"""Our trainer vs a reference-style fp32 loop on Fashion-MNIST: FID after the same steps.

The reference is the loop of pytorch/examples' dcgan (eager fp32, one D step on a real and
a fake batch, one G step with the "real" label, Adam 2e-4 / 0.5), over the same networks,
initialisation, data, batch size and number of steps. Both generators are then scored with
the same Inception features against the same real images (FID and KID), and the table
prints our/reference ratios. Small on the CPU by default; pass ``--device cuda`` and larger
``--steps`` / ``--n`` on a GPU.

    python benchmarks/fid_fashion.py                          # CPU, ~10 min on 2 cores
    python benchmarks/fid_fashion.py --device cuda --steps 3000 --n 10000 --resolution 64
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def reference_train(images: np.ndarray, config, device: str) -> tuple[torch.nn.Module, float]:
    """pytorch/examples-style DCGAN loop in fp32; returns (G, seconds)."""
    from dcgan.checkpoint import sample_z
    from dcgan.models import build_models

    torch.manual_seed(config.seed)
    G, D = build_models(config)
    G, D = G.to(device), D.to(device)
    opt_d = torch.optim.Adam(D.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    opt_g = torch.optim.Adam(G.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    bce = torch.nn.BCEWithLogitsLoss()
    data = torch.from_numpy(np.array(images))  # a writable copy of the memory map
    gen = torch.Generator().manual_seed(config.seed)
    bs = config.batch_size
    ones, zeros = torch.ones(bs, device=device), torch.zeros(bs, device=device)
    perm, pos = torch.randperm(len(data), generator=gen), 0
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(config.steps):
        if pos + bs > len(perm):
            perm, pos = torch.randperm(len(data), generator=gen), 0
        real = data[perm[pos:pos + bs]].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        pos += bs
        z = sample_z(bs, config, gen).to(device)
        fake = G(z)
        opt_d.zero_grad()
        loss_d = bce(D(real), ones) + bce(D(fake.detach()), zeros)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        bce(D(fake), ones).backward()
        opt_g.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return G.eval(), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--width", type=int, default=32, help="ngf = ndf")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-images", type=int, default=10000)
    p.add_argument("--n", type=int, default=500, help="FID samples on each side")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from dcgan.checkpoint import TrainConfig, load_generator
    from dcgan.fid import FidEvaluator
    from dcgan.labelled import fashion_mnist
    from dcgan.train import train
    from demo.samples import write_fashion_mnist

    tmp = Path(tempfile.mkdtemp(prefix="fid_fashion_"))
    data = write_fashion_mnist(tmp / "fm", args.resolution, "train", args.train_images,
                               args.seed)
    from pipeline.dataset import Dataset

    images = np.asarray(Dataset(data).images)
    config = TrainConfig(resolution=args.resolution, ngf=args.width, ndf=args.width,
                         batch_size=args.batch_size, steps=args.steps, seed=args.seed,
                         device="cuda" if args.device.startswith("cuda") else "cpu",
                         log_every=max(1, args.steps // 10), sample_every=args.steps,
                         checkpoint_every=args.steps)
    t0 = time.perf_counter()
    summary = train(data, tmp / "ours", config, progress=False)
    ours_s = time.perf_counter() - t0
    ours, _ = load_generator(tmp / "ours", args.device)
    ref, ref_s = reference_train(images, config, args.device)

    # Real side: held-out test images, so neither generator is scored on what it saw.
    real = fashion_mnist("test", args.resolution, args.n, args.seed).images
    evaluator = FidEvaluator(real, args.n, args.device, seed=args.seed)
    ours_m, ref_m = evaluator(ours, config), evaluator(ref, config)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU ({torch.get_num_threads()} threads)"
    rows = [("ours", ours_m, ours_s, summary.get("speed")), ("reference fp32", ref_m, ref_s,
                                                               "eager fp32")]
    print(f"Fashion-MNIST {args.resolution}px, width {args.width}, {args.steps} steps x "
          f"{args.batch_size}, FID/KID on {args.n} samples vs {args.n} test images, "
          f"{device_name}")
    print(f"{'loop':<16}{'FID':>9}{'KID x1000':>11}{'train s':>9}{'img/s':>9}  step")
    for name, m, secs, how in rows:
        print(f"{name:<16}{m['fid']:>9.2f}{m['kid_x1000']:>11.2f}{secs:>9.1f}"
              f"{args.steps * args.batch_size / secs:>9.0f}  {how}")
    print(f"ratio ours/reference: FID {ours_m['fid'] / ref_m['fid']:.3f}, "
          f"time {ours_s / ref_s:.3f} (ours includes checkpoint and sample writing)")
    print(json.dumps({"ours": ours_m, "reference": ref_m, "ours_s": round(ours_s, 1),
                      "reference_s": round(ref_s, 1), "args": vars(args)}))


if __name__ == "__main__":
    main()
