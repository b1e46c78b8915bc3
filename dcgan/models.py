"""The DCGAN generator and discriminator (Radford, Metz & Chintala 2015, §3 and Figure 1).

All-convolutional: fractionally-strided convolutions up in G, strided convolutions down in D,
no pooling and no fully connected layers; batch norm everywhere except G's output and D's
input; ReLU in G with a Tanh output, LeakyReLU(0.2) in D. D returns logits (the loss is
``BCEWithLogitsLoss``). 32, 64 and 128 px variants follow the same construction: one block
per doubling of the side between 4 px and the resolution.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

RESOLUTIONS = (32, 64, 128)  # image sides the construction below supports
Z_DISTS = ("uniform", "normal")  # z's distributions: uniform in [-1, 1] (the paper), N(0, 1)


def _blocks(resolution: int) -> int:
    """Number of resolution doublings from the 4 x 4 base to ``resolution``."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS} (got {resolution})")
    return int(math.log2(resolution)) - 2


class Generator(nn.Module):
    """z (N, nz) or (N, nz, 1, 1) -> images (N, nc, resolution, resolution) in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, resolution: int = 64, nc: int = 3):
        super().__init__()
        n = _blocks(resolution)
        self.nz, self.ngf, self.resolution, self.nc = nz, ngf, resolution, nc
        ch = ngf * 2 ** (n - 1)
        # (N, nz, 1, 1) -> (N, ngf*2^(n-1), 4, 4): the "project and reshape" step.
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(n - 1):
            # (N, ch, s, s) -> (N, ch/2, 2s, 2s)
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        # (N, ngf, res/2, res/2) -> (N, nc, res, res); no batch norm on G's output.
        layers += [nn.ConvTranspose2d(ch, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        project, *rest = self.main
        x = _project(z.flatten(1), project.weight)
        for layer in rest:
            x = layer(x)
        return x


def _channels_last(w: torch.Tensor) -> bool:
    return not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)


def _project(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """G's first layer, ConvTranspose2d(nz, C, 4, 1, 0) on a 1 x 1 input, as the matrix
    product it is: (N, nz) @ (nz, C*4*4), laid out as the weight is (channels-last or not).

    Through cuDNN a 1 x 1 input has no layout of its own and the output came back NCHW in a
    channels-last model (every later layer then converted it, and torch.compile's expected
    strides disagreed with the real ones); the product's layout is explicit."""
    n, c, k = len(z), w.shape[1], w.shape[2]
    if _channels_last(w):
        return (z @ w.permute(0, 2, 3, 1).reshape(len(w), -1)).view(n, k, k, c) \
            .permute(0, 3, 1, 2)
    return (z @ w.reshape(len(w), -1)).view(n, c, k, k)


def _head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """D's last layer, Conv2d(C, 1, 4, 1, 0) on a 4 x 4 input, as a dot product per image in
    the input's own layout (so its gradient has that layout too; see ``_project``)."""
    if x.is_contiguous():
        return x.flatten(1) @ w.flatten()
    return x.permute(0, 2, 3, 1).flatten(1) @ w.permute(0, 2, 3, 1).flatten()


class Discriminator(nn.Module):
    """images (N, nc, resolution, resolution) -> logits (N,)."""

    def __init__(self, ndf: int = 64, resolution: int = 64, nc: int = 3):
        super().__init__()
        n = _blocks(resolution)
        self.ndf, self.resolution, self.nc = ndf, resolution, nc
        # (N, nc, res, res) -> (N, ndf, res/2, res/2); no batch norm on D's input.
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
                                                 nn.LeakyReLU(0.2, True))]
        ch = ndf
        for _ in range(n - 1):
            # (N, ch, s, s) -> (N, 2ch, s/2, s/2)
            blocks.append(nn.Sequential(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                                        nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)))
            ch *= 2
        self.blocks = nn.ModuleList(blocks)
        # (N, ndf*2^(n-1), 4, 4) -> (N, 1, 1, 1): one logit, no sigmoid.
        self.head = nn.Conv2d(ch, 1, 4, 1, 0, bias=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each conv block's activations, from the input side (the paper's §5.1 features)."""
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return _head(x, self.head.weight)


def weights_init(m: nn.Module) -> None:
    """The paper's init: conv weights N(0, 0.02); batch-norm scales N(1, 0.02), shifts 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def build_models(config: Any) -> tuple[Generator, Discriminator]:
    """G and D for a ``TrainConfig`` (any object with resolution, nz, ngf, ndf), initialised."""
    g = Generator(config.nz, config.ngf, config.resolution)
    d = Discriminator(config.ndf, config.resolution)
    g.apply(weights_init)
    d.apply(weights_init)
    return g, d


def sample_z(n: int, config: Any, generator: torch.Generator | None = None,
             device: Any = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` noise vectors (n, nz) from the distribution of ``config`` (nz, z_dist).

    ``generator``: a ``torch.Generator`` (its device is used when ``device`` is None).
    ``out``: an existing (n, nz) tensor to fill in place (no allocation).
    """
    if out is None:
        if device is None:
            device = generator.device if generator is not None else "cpu"
        out = torch.empty(n, config.nz, device=device)
    if config.z_dist == "uniform":
        return out.uniform_(-1.0, 1.0, generator=generator)
    if config.z_dist == "normal":
        return out.normal_(0.0, 1.0, generator=generator)
    raise ValueError(f"z_dist must be one of {Z_DISTS} (got {config.z_dist!r})")
