"""Looking at a generator: sample grids, latent walks (paper Fig. 4), vector arithmetic (Fig. 7).

Every command draws its z from a seeded generator, so the numbered grid that ``arithmetic``
writes and the ids a person picks from it describe the same samples on a later call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.outfiles import IMAGE_SUFFIXES, Outputs, save_animation
from pipeline.sheets import save_png, save_sheet

log = logging.getLogger(__name__)


def latents(n: int, config: Any, seed: int = 0):
    """``n`` latent vectors (n, nz) from the run's prior, reproducible from ``seed``."""
    import torch

    from dcgan.checkpoint import sample_z

    return sample_z(n, config, generator=torch.Generator().manual_seed(seed))


def to_uint8(x) -> np.ndarray:
    """Images in [-1, 1] (N, C, H, W) to uint8 (N, H, W, C)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(0, 2, 3, 1).cpu().numpy()


def generate(G, z, device: str = "cpu", batch: int = 256) -> np.ndarray:
    """G(z) as uint8 (N, H, W, C), in batches, G in eval mode."""
    import torch

    G.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(z), batch):
            out.append(to_uint8(G(z[s:s + batch].to(device))))
    return np.concatenate(out)


def generate_images(G, n: int, config: Any, device: str = "cpu", seed: int = 0,
                    batch: int = 256) -> np.ndarray:
    """``n`` samples from G as uint8 (N, H, W, C)."""
    return generate(G, latents(n, config, seed), device, batch)


def grid_columns(n: int) -> int:
    """Columns for a near-square grid of ``n`` tiles."""
    return int(np.ceil(np.sqrt(n)))


def sample(G, config: Any, out: str | Path, n: int = 64, seed: int = 0,
           device: str = "cpu", numbered: bool = False) -> dict[str, Any]:
    """Write ``n`` samples: a grid when ``out`` is an image file, else a folder of single
    PNGs plus ``grid.png`` (the ``pipeline.outfiles`` rule). ``numbered`` captions each tile
    with its id (and titles the grid)."""
    outs = Outputs.resolve(out, "grid.png", IMAGE_SUFFIXES)
    singles = [] if outs.named else [outs.companion(f"{i:05d}.png") for i in range(n)]
    outs.claim([outs.main, *singles])
    images = generate_images(G, n, config, device, seed)
    captions = [str(i) for i in range(n)] if numbered else None
    title = f"Samples 0..{n - 1} (seed {seed}): ids as arithmetic takes them" \
        if numbered else None
    outs.ready()
    for im, path in zip(images, singles):
        save_png(im, path)
    grid = save_sheet(images, outs.main, captions=captions, cell=_cell(images, captions),
                      title=title)
    return {"grid": str(grid), "n": n, **({} if outs.named else {"folder": str(outs.folder)})}


def _cell(images: np.ndarray, captions: Sequence[str] | None) -> int | None:
    """Enlarge small tiles so a person can see them (and read captions under them)."""
    side = images.shape[1]
    return max(64, side) if side < 64 or captions else None


def slerp(a, b, t: float):
    """Spherical interpolation: keeps a Gaussian z's norm along the walk (linear walks pass
    near the origin, where a Gaussian prior has almost no mass)."""
    import torch

    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


def walk(points, steps: int, spherical: bool):
    """z along the segments between consecutive ``points`` (P, nz): (P-1)*steps+1 vectors."""
    import torch

    out = []
    for a, b in zip(points[:-1], points[1:]):
        for t in torch.linspace(0, 1, steps + 1)[:-1].tolist():
            out.append(slerp(a, b, t) if spherical else a + (b - a) * t)
    out.append(points[-1])
    return torch.stack(out)


def interpolate(G, config: Any, out: str | Path, rows: int = 6, steps: int = 10,
                seed: int = 0, device: str = "cpu", spherical: bool | None = None,
                frame_ms: int = 80) -> dict[str, Any]:
    """The paper's Fig. 4: ``rows`` walks between random z pairs as a grid (a row per
    walk), and one long walk through ``rows + 1`` points as an animated GIF beside it
    (``out``: the grid's image file, the GIF's .gif file, or a folder for walk.png and
    walk.gif).

    Smooth, semantically gradual rows (no sharp jumps) argue against memorisation (§6.1).
    ``spherical`` defaults to slerp for a Gaussian prior, linear for a uniform one.
    """
    outs = Outputs.resolve(out, "walk.png", {**IMAGE_SUFFIXES, ".gif": "GIF"})
    grid_path = outs.companion("walk.png") if outs.main.suffix.lower() == ".gif" else outs.main
    gif_path = outs.companion("walk.gif")
    outs.claim([grid_path, gif_path])
    if spherical is None:
        spherical = getattr(config, "z_dist", "normal") != "uniform"
    z = latents(2 * rows, config, seed)
    grid_z = [walk(z[2 * r:2 * r + 2], steps - 1, spherical) for r in range(rows)]
    import torch

    frames_z = torch.cat([walk(z[:rows + 1], steps * 2, spherical),
                          walk(z[[rows, 0]], steps * 2, spherical)[1:-1]])  # and back
    images = generate(G, torch.cat(grid_z), device)
    frames = generate(G, frames_z, device)
    outs.ready()
    save_sheet(images, grid_path, ncol=steps, cell=_cell(images, None))
    save_animation(enlarge(frames, max(128, frames.shape[1])), gif_path, frame_ms)
    return {"grid": str(grid_path), "animation": str(gif_path), "rows": rows, "steps": steps,
            "frames": len(frames_z), "spherical": spherical}


def enlarge(frames: np.ndarray, side: int) -> np.ndarray:
    """Frames (N, H, W, C) resized to ``side`` with nearest neighbours (crisp pixels)."""
    import cv2

    if frames.shape[1] == side:
        return frames
    return np.stack([cv2.resize(np.ascontiguousarray(f), (side, side),
                                interpolation=cv2.INTER_NEAREST).reshape(side, side, -1)
                     for f in frames])


def parse_ids(text: str | Sequence[int], n: int, name: str) -> list[int]:
    """'3,17,40' to [3, 17, 40], each checked against the grid's ``n`` samples."""
    if isinstance(text, str):
        try:
            ids = [int(t) for t in text.replace(" ", "").split(",") if t]
        except ValueError:
            raise UserError(f"--{name} must be comma-separated sample ids, got {text!r}") \
                from None
    else:
        ids = list(text)
    if not ids:
        raise UserError(f"--{name} needs at least one sample id")
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise UserError(f"--{name}: sample id(s) {bad} out of range: the grid has ids "
                        f"0..{n - 1}")
    return ids


def arithmetic(G, config: Any, out: str | Path, a: str | None = None, b: str | None = None,
               c: str | None = None, n: int = 64, seed: int = 0, variants: int = 8,
               noise: float = 0.25, device: str = "cpu") -> dict[str, Any]:
    """The paper's Fig. 7: mean z of samples ``a`` - mean of ``b`` + mean of ``c``.

    Always writes ``candidates.png`` (the ``n`` seeded samples, numbered); with ids, also
    ``arithmetic.png``: one row per input group (its samples, then the image of their mean
    z), and a last row with the result and ``variants`` results with uniform noise of
    +-``noise`` added to z, as in the paper. ``out`` is a folder for both, or the file for
    the result with ``<name>-candidates.png`` beside it.
    """
    import torch

    outs = Outputs.resolve(out, "arithmetic.png", IMAGE_SUFFIXES)
    cand_path = outs.companion("candidates.png")
    given = [g is not None for g in (a, b, c)]
    if any(given) and not all(given):
        raise UserError("give all of --a, --b and --c (ids from candidates.png), or none")
    groups = [parse_ids(g, n, name) for g, name in ((a, "a"), (b, "b"), (c, "c"))] \
        if all(given) else []
    outs.claim([cand_path, *([outs.main] if groups else [])])
    z = latents(n, config, seed)
    candidates = generate(G, z, device)
    outs.ready()
    cand_png = save_sheet(candidates, cand_path, captions=[str(i) for i in range(n)],
                          cell=_cell(candidates, ["0"]),
                          title=f"Arithmetic candidates 0..{n - 1} (seed {seed}): pick ids "
                          "for a, b and c from these (e.g. --a 3,5 --b 7 --c 12, same seed); "
                          "G(mean a - mean b + mean c) is then drawn.")
    result: dict[str, Any] = {"candidates": str(cand_png), "n": n}
    if not groups:
        return result
    means = torch.stack([z[g].mean(0) for g in groups])
    target = means[0] - means[1] + means[2]
    gen = torch.Generator().manual_seed(seed + 1)
    jitter = (torch.rand(variants, z.shape[1], generator=gen) * 2 - 1) * noise
    outs_images = generate(G, torch.cat([target[None], target[None] + jitter]), device)
    mean_images = generate(G, means, device)
    width = max(max(len(g) for g in groups) + 1, variants + 1)
    blank = np.full_like(candidates[0], 255)
    tiles, captions = [], []
    for label, g, mean_im in zip("abc", groups, mean_images):
        tiles += [candidates[i] for i in g] + [blank] * (width - 1 - len(g)) + [mean_im]
        captions += [f"#{i}" for i in g] + [""] * (width - 1 - len(g)) + [f"mean {label}"]
    tiles += list(outs_images) + [blank] * (width - len(outs_images))
    captions += ["a-b+c"] + [f"+noise{i}" for i in range(1, len(outs_images))] + \
        [""] * (width - len(outs_images))
    title = ["Vector arithmetic on z (paper Fig. 7): rows a, b, c show the chosen candidates "
             "(#id) and, at the right, G(mean z) of each group.",
             f"Last row: G(mean a - mean b + mean c), then {variants} results with uniform "
             f"noise of +-{noise:g} added to that z."]
    grid = save_sheet(tiles, outs.main, ncol=width, captions=captions,
                      cell=_cell(candidates, ["0"]), title=title,
                      row_labels=["a", "b", "c", "a-b+c"])
    return {**result, "grid": str(grid), "a": groups[0], "b": groups[1], "c": groups[2]}
