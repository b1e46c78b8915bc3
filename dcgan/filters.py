"""What the discriminator's last conv features respond to (paper Fig. 5): guided backprop.

For each of the first ``features`` channels of D's last conv block, the images where that
channel's strongest response is highest are found, and the gradient of that response with
respect to the input is taken through "guided" activations (only positive gradients pass,
and only where the unit was active; Springenberg et al. 2014). A trained D shows object
parts; the same network with random weights, shown beneath it, shows texture noise.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.outfiles import IMAGE_SUFFIXES, Outputs
from pipeline.sheets import save_sheet


def _guided_function():
    import torch

    class GuidedLeakyReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, slope):
            ctx.save_for_backward(x)
            return torch.nn.functional.leaky_relu(x, slope)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad.clamp(min=0) * (x > 0), None

    return GuidedLeakyReLU


def guided_copy(D):
    """A copy of D whose (Leaky)ReLUs pass gradients the guided way (the original is kept)."""
    import torch

    fn = _guided_function()

    class Guided(torch.nn.Module):
        def __init__(self, slope: float):
            super().__init__()
            self.slope = slope

        def forward(self, x):
            return fn.apply(x, self.slope)

    g = copy.deepcopy(D).eval()
    for parent in list(g.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.LeakyReLU):
                setattr(parent, name, Guided(child.negative_slope))
            elif isinstance(child, torch.nn.ReLU):
                setattr(parent, name, Guided(0.0))
    return g


def guided_backprop(D, images: np.ndarray, features: int = 6, per_feature: int = 6,
                    device: str = "cpu") -> tuple[np.ndarray, list[int]]:
    """(features * per_feature, H, W, 3) uint8 visualisations and the channels shown."""
    import torch

    g = guided_copy(D).to(device)
    x = torch.from_numpy(np.array(images)).to(device).permute(0, 3, 1, 2)  # a writable copy
    x = x.float() / 127.5 - 1
    with torch.no_grad():
        last = g.features(x)[-1]  # (N, C, 4, 4) for every resolution
    channels = list(range(min(features, last.shape[1])))
    out = []
    for ch in channels:
        peak = last[:, ch].flatten(1).max(1).values
        top = peak.argsort(descending=True)[:per_feature]
        xi = x[top].clone().requires_grad_(True)
        g.features(xi)[-1][:, ch].flatten(1).max(1).values.sum().backward()
        out.append(_visualise(xi.grad))
    return np.concatenate(out), channels


def _visualise(grad) -> np.ndarray:
    """Gradients to images: each centred, scaled by its own spread, around mid-grey."""
    g = grad.detach().float()
    g = g - g.mean(dim=(1, 2, 3), keepdim=True)
    g = g / (g.std(dim=(1, 2, 3), keepdim=True) + 1e-12) * 0.15 + 0.5
    return (g.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def filters(D, images: np.ndarray, out: str | Path, features: int = 6, per_feature: int = 6,
            device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """One sheet (``out``: an image file, or a folder for ``filters.png``): a row per
    feature of the trained D, then the same features of a random-weight D, each row the
    images that excite the feature most, strongest first; titled and row-labelled."""
    import torch

    from dcgan.models import Discriminator, weights_init

    outs = Outputs.resolve(out, "filters.png", IMAGE_SUFFIXES)
    outs.claim([outs.main])
    torch.manual_seed(seed)
    rand = Discriminator(D.ndf, D.resolution, D.nc).to(device)
    rand.apply(weights_init)
    trained, channels = guided_backprop(D, images, features, per_feature, device)
    random, _ = guided_backprop(rand, images, features, per_feature, device)
    per = min(per_feature, len(images))
    title = ["Guided backprop (paper Fig. 5): what D's last conv features respond to.",
             f"Rows: features {channels[0]}..{channels[-1]} of the trained D (\"trained "
             "f<k>\"), then the same features of a random-weight D (\"random f<k>\"). "
             f"Columns: the {per} of {len(images)} images that excite the feature most, "
             "strongest first, as the input gradient (grey = 0). Object parts on the "
             "trained rows, texture noise on the random ones, are what the paper shows."]
    labels = [f"trained f{c}" for c in channels] + [f"random f{c}" for c in channels]
    outs.ready()
    save_sheet(np.concatenate([trained, random]), outs.main, ncol=per,
               cell=max(64, images.shape[1]), title=title, row_labels=labels)
    return {"sheet": str(outs.main), "features": channels, "per_feature": per,
            "images": len(images)}
