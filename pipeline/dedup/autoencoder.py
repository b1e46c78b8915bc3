"""The dedup autoencoder: 32 x 32 thumbnails -> 128 ReLU units -> 32 x 32 (paper, section 4.1.1).

A 3072-128-3072 denoising autoencoder: the input is corrupted with dropout and the clean input
is reconstructed; the code layer is a ReLU whose active units (> 0) form a 128-bit semantic hash.

Two deliberate changes from the paper, both chosen on the near-duplicate benchmark's tuning
half (``benchmarks/dedup_quality.py``; the numbers are in docs/dedup.md):

- every thumbnail is standardized (its own mean removed, divided by its own standard
  deviation): brightness and contrast edits are affine in pixel values, so they vanish from
  the input instead of flipping code bits;
- the thumbnail is blurred (Gaussian, sigma 1.5 px) inside the model before encoding, and the
  dropout corruption is 0.5, so that crops and shifts of a few percent flip fewer code bits
  while distinct images stay as far apart.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.dedup.hashing import (
    KEY_BITS,
    binarize,
    choose_key_groups,
    crop_views,
    key_tables,
    keys_from_bits,
    pack_codes,
)
from pipeline.devices import resolve_device
from pipeline.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the saved layout or the input normalization changes
THUMB_SHAPE = (32, 32, 3)
MIN_TRAIN = 32  # refuse fewer: too little to learn a code from (docs/dedup.md)


@dataclass(frozen=True)
class AutoencoderConfig:
    code_bits: int = 128  # code-layer units = bits of the full hash (paper: 128)
    dropout: float = 0.5  # input corruption of the denoising autoencoder (docs/dedup.md)
    steps: int = 128  # optimizer steps, however many passes over the subset that takes
    epochs: int | None = None  # instead of ``steps``: passes over the training subset
    batch_size: int = 256  # thumbnails per optimizer step
    lr: float = 2e-3  # Adam learning rate
    train_limit: int = 20000  # random training subset when the data is larger
    seed: int = 0  # subset choice, initialization, dropout masks
    min_images: int = MIN_TRAIN  # refuse to train on fewer thumbnails (clear error)


BLUR_SIGMA = 1.5  # pixels of the 32 x 32 thumbnail; part of the FORMAT_VERSION


def _blur_matrix(sigma: float, n: int = 32) -> torch.Tensor:
    """(n, n) matrix of a 1-D Gaussian blur with reflect-101 borders (``B @ signal``)."""
    radius = int(np.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1)
    k = np.exp(-t * t / (2 * sigma * sigma))
    k /= k.sum()
    m = np.zeros((n, n), np.float32)
    for i in range(n):
        for tap, w in zip(t, k):
            j = abs(i + tap)  # reflect-101 at the start ...
            j = 2 * (n - 1) - j if j >= n else j  # ... and at the end
            m[i, j] += w
    return torch.from_numpy(m)


def standardize(x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 -> (N, 3072) float32: blurred, zero mean and unit std per image.

    The blur is separable, so it is two matrix products per chunk (rows, then columns with
    the colour channels interleaved), cheaper on the CPU than padded depthwise convolutions;
    written into one preallocated output rather than concatenated chunks. The std is floored
    so that flat images (a blank frame) stay near zero instead of amplifying encoder noise.
    """
    b = _blur_matrix(BLUR_SIGMA).to(x.device)
    cols = torch.kron(b.T.contiguous(), torch.eye(3, device=x.device))  # (96, 96)
    out = torch.empty((len(x), 3072), device=x.device)
    for s in range(0, len(x), chunk):
        img = x[s:s + chunk].reshape(-1, 32, 96).float() / 255.0  # (n, H, W*C)
        flat = out[s:s + chunk]  # written in place: nothing to concatenate
        torch.matmul(torch.matmul(b, img).reshape(-1, 96), cols, out=flat.view(-1, 96))
        flat -= flat.mean(dim=1, keepdim=True)
        std = flat.square().sum(dim=1, keepdim=True).div_(flat.shape[1] - 1).sqrt_()
        flat /= std.clamp_min_(0.02)
    return out


def _dropout(p: float, device: str, rng: np.random.Generator):
    """The denoising corruption: dropout with rate ``p`` (kept values scaled by 1/(1-p)).

    On the CPU the mask comes from NumPy's random bytes (``p`` rounded to 1/256): torch's
    CPU Bernoulli sampling is slow enough to dominate training (docs/dedup.md).
    """
    if device != "cpu":
        return nn.Dropout(p)
    level = round(p * 256)
    scale = 256 / (256 - level) if level < 256 else 0.0

    def corrupt(x: torch.Tensor) -> torch.Tensor:
        noise = np.frombuffer(rng.bytes(x.numel()), np.uint8).reshape(tuple(x.shape))
        return x * torch.from_numpy(noise >= level) * scale

    return corrupt


class Autoencoder(nn.Module):
    """3072 -> 128 (ReLU code) -> 3072; carries the key units chosen on its training data:
    (2 * code_bits / 32, 32), two partitions of the code, the first row being the primary
    32-bit key (``hashing.key_tables``)."""

    def __init__(self, code_bits: int = 128):
        super().__init__()
        n_in = int(np.prod(THUMB_SHAPE))
        self.encoder = nn.Linear(n_in, code_bits)  # (N, 3072) -> (N, 128), then ReLU
        self.decoder = nn.Linear(code_bits, n_in)  # (N, 128) -> (N, 3072), linear output
        self.register_buffer("key_units", torch.as_tensor(key_tables(
            np.arange(code_bits).reshape(-1, KEY_BITS)), dtype=torch.long))
        self.config: dict[str, Any] = {}

    @property
    def code_bits(self) -> int:
        return self.encoder.out_features

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))


def _adam(params: list[torch.Tensor], lr: float):
    """A function that takes one Adam step (default betas) on ``params`` from their grads.

    torch's functional Adam with its fused kernel, not ``torch.optim.Adam``: the optimizer
    class imports ``torch._dynamo`` at its first step (for graph-break hooks this loop never
    needs), a cost paid before the first dedup step; the same kernel through the functional
    API imports nothing (docs/dedup.md). Nothing here is saved: the optimizer state lives
    only while the model trains.
    """
    from torch.optim.adam import adam

    avgs = [torch.zeros_like(p) for p in params]
    sq_avgs = [torch.zeros_like(p) for p in params]
    steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in params]

    @torch.no_grad()
    def step() -> None:
        adam(params, [p.grad for p in params], avgs, sq_avgs, [], steps, fused=True,
             amsgrad=False, beta1=0.9, beta2=0.999, lr=lr, weight_decay=0.0, eps=1e-8,
             maximize=False)

    return step


def _check_thumbs(thumbs: np.ndarray) -> None:
    if thumbs.ndim != 4 or tuple(thumbs.shape[1:]) != THUMB_SHAPE or thumbs.dtype != np.uint8:
        raise UserError(f"expected uint8 thumbnails of shape (N, 32, 32, 3), got "
                        f"{thumbs.dtype} {tuple(thumbs.shape)}")


def train_autoencoder(thumbs: np.ndarray, config: AutoencoderConfig | None = None,
                      device: str = "auto", progress: bool = True,
                      return_activations: bool = False):
    """Train the denoising autoencoder on ``thumbs`` and choose its key units.

    Uses a random subset of ``config.train_limit`` thumbnails when there are more. Raises
    ``UserError`` when there are fewer than ``config.min_images``. With
    ``return_activations``, returns ``(model, acts)``: ``acts`` are the trained model's code
    activations of every thumbnail, exactly what ``encode_thumbs`` gives, when it trained on
    all of them (the key choice encodes them anyway), else None.
    """
    from pipeline.progress import progress_bar

    config = config or AutoencoderConfig()
    _check_thumbs(thumbs)
    n = len(thumbs)
    if n < config.min_images:
        raise UserError(f"{n} images are too few to train the dedup autoencoder: it needs at "
                        f"least {config.min_images}; pass --model PATH to reuse a trained one")
    device = resolve_device(device)
    rng = np.random.default_rng(config.seed)
    idx = np.sort(rng.choice(n, config.train_limit, replace=False)) if n > config.train_limit \
        else np.arange(n)
    x = standardize(torch.from_numpy(np.array(thumbs[idx])).to(device))
    torch.manual_seed(config.seed)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    if config.code_bits % 64:
        raise UserError("code_bits must be a multiple of 64")
    model = Autoencoder(config.code_bits).to(device)
    model.config = asdict(config)
    adam_step = _adam(list(model.parameters()), config.lr)
    corrupt = _dropout(config.dropout, device, rng)
    steps_per_epoch = max(1, int(np.ceil(len(x) / config.batch_size)))
    # A number of steps, not of passes: a few passes undertrain a small set, and many over
    # a large one cost time without gain (docs/dedup.md).
    total = config.epochs * steps_per_epoch if config.epochs else config.steps
    bar = progress_bar(total, "autoencoder", "step", progress)
    loss_value = float("nan")
    model.train()
    step = epoch = 0
    while step < total:
        order = torch.randperm(len(x), generator=gen).to(device)
        loss_sum, count = torch.zeros((), device=device), 0  # summed on the device: no sync
        for s in range(min(steps_per_epoch, total - step)):
            batch = x[order[s * config.batch_size:(s + 1) * config.batch_size]]
            loss = nn.functional.mse_loss(model(corrupt(batch)), batch)  # clean target
            model.zero_grad(set_to_none=True)
            loss.backward()
            adam_step()
            loss_sum += loss.detach() * len(batch)
            count += len(batch)
            step += 1
            bar.update(1)
        epoch += 1
        loss_value = float(loss_sum) / count
        bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
        log.debug("autoencoder pass %d: loss %.4f", epoch, loss_value)
    bar.close()
    model.eval()
    model.config["final_loss"] = round(loss_value, 5)
    model.config["trained_on"] = int(len(idx))
    model.config["steps"] = step
    log.info("autoencoder: %d thumbnails, %d steps (%d passes), reconstruction loss %.4f (per "
             "value, standardized units)", len(idx), step, epoch, loss_value)
    # Key groups: balanced, decorrelated and stable under crops of a few percent (each
    # unit's flip rate between a training image and a cropped view of it).
    acts = encode_standardized(model, x)
    bits = binarize(acts)
    sample = idx[:5000]
    views = crop_views(np.asarray(thumbs[sample]), rng)
    flips = (binarize(encode_thumbs(model, views)) != bits[:len(sample)]).mean(axis=0)
    units = key_tables(choose_key_groups(bits, KEY_BITS, flips))
    model.key_units = torch.as_tensor(units, dtype=torch.long, device=device)
    if return_activations:
        return model.cpu(), (acts if len(idx) == n else None)
    return model.cpu()


ENCODE_BATCH = 8192  # a multiple of standardize's chunk: the same rows in the same products


@torch.no_grad()
def encode_thumbs(model: Autoencoder, thumbs: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) uint8 -> (N, 128) float32 code-layer activations (post-ReLU),
    standardized a batch at a time (bounded memory)."""
    _check_thumbs(thumbs)
    dev = next(model.parameters()).device
    out = np.empty((len(thumbs), model.code_bits), np.float32)
    for s in range(0, len(thumbs), ENCODE_BATCH):
        x = standardize(torch.from_numpy(np.array(thumbs[s:s + ENCODE_BATCH])).to(dev))
        out[s:s + ENCODE_BATCH] = encode_standardized(model, x)
    return out


def hash_thumbs(model: Autoencoder, thumbs: np.ndarray, acts: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnails -> (packed 128-bit codes (N, 16) uint8, 32-bit keys (N, 8) uint32).

    ``acts``: their code activations when already computed (training encodes its data)."""
    bits = binarize(encode_thumbs(model, thumbs) if acts is None else acts)
    return pack_codes(bits), keys_from_bits(bits, model.key_units.cpu().numpy())


@torch.no_grad()
def encode_standardized(model: Autoencoder, x: torch.Tensor) -> np.ndarray:
    """``encode_thumbs`` of thumbnails already standardized (as one ``standardize`` call):
    the same batches, so the same activations, bit for bit."""
    model.eval()
    out = np.empty((len(x), model.code_bits), np.float32)
    for s in range(0, len(x), ENCODE_BATCH):
        out[s:s + ENCODE_BATCH] = model.encode(x[s:s + ENCODE_BATCH]).cpu().numpy()
    return out


def save_autoencoder(model: Autoencoder, path: str | Path) -> Path:
    """Save weights, key units and config (loadable with ``weights_only=True``), atomically."""
    from pipeline.dataset import atomic_write

    path = Path(path)
    state = {"format": "dcgan-curate-dedup-autoencoder", "version": FORMAT_VERSION,
             "code_bits": model.code_bits,
             "config": dict(model.config),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
    return path


def load_autoencoder(path: str | Path, device: str = "cpu") -> Autoencoder:
    """Load a saved autoencoder; another format, version or shape is a clear ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"autoencoder file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a dedup autoencoder file ({type(e).__name__})") from e
    if not isinstance(state, dict) or state.get("format") != "dcgan-curate-dedup-autoencoder":
        raise UserError(f"{path} is not a dedup autoencoder file")
    if state.get("version") != FORMAT_VERSION:
        raise UserError(f"{path} is a version {state.get('version')} autoencoder; this tool "
                        f"reads version {FORMAT_VERSION}: retrain it (omit --model)")
    try:
        model = Autoencoder(int(state["code_bits"]))
        model.load_state_dict(state["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: weights do not fit a 3072-{state['code_bits']}-3072 "
                        f"autoencoder ({str(e).splitlines()[0]})") from e
    broken = [name for name, t in model.state_dict().items()
              if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:  # every code would be garbage, and no error would say so
        raise UserError(f"{path}: weights hold NaN or infinite values ({', '.join(broken)}); "
                        "retrain it (omit --model)")
    groups, half = model.key_units, model.code_bits // KEY_BITS
    if model.code_bits % 64 or tuple(groups.shape) != (2 * half, KEY_BITS) \
            or any(len(g.unique()) != model.code_bits for g in (groups[:half], groups[half:])):
        raise UserError(f"{path}: unsupported code shape ({model.code_bits} bits, "
                        f"key groups {tuple(groups.shape)})")
    model.config = dict(state.get("config") or {})
    model.eval()
    return model.to(resolve_device(device))
