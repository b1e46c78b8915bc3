"""Contact sheets: grids of images with optional captions, saved as PNG.

Every picture the tool writes for a person (review sheets of duplicate pairs, kept and
rejected faces, sample grids) goes through ``save_sheet`` so they look alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.dataset import atomic_write


def make_sheet(images: Sequence[np.ndarray], ncol: int | None = None,
               captions: Sequence[str] | None = None, cell: int | None = None,
               pad: int = 2, background: int = 255) -> np.ndarray:
    """Tile RGB (or grey) uint8 images into one RGB image; captions go under each tile.

    ``cell``: resize every tile to this square size (nearest-neighbour when enlarging, so
    small images stay crisp); default: the largest tile's size, smaller ones centred.
    """
    import cv2

    if len(images) == 0:
        raise ValueError("no images to tile")
    tiles = [np.repeat(im[..., None], 3, 2) if im.ndim == 2 else im[..., :3] for im in images]
    if cell:
        tiles = [cv2.resize(np.ascontiguousarray(t), (cell, cell), interpolation=(
            cv2.INTER_NEAREST if t.shape[0] < cell else cv2.INTER_AREA)) for t in tiles]
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    ncol = ncol or int(np.ceil(np.sqrt(len(tiles))))
    nrow = int(np.ceil(len(tiles) / ncol))
    cap_h = 0
    if captions:
        scale = max(0.3, min(0.5, tw / 200))
        cap_h = int(22 * scale / 0.5) + 2
    sheet = np.full((nrow * (th + cap_h + pad) + pad, ncol * (tw + pad) + pad, 3),
                    background, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncol)
        y = pad + r * (th + cap_h + pad) + (th - t.shape[0]) // 2
        x = pad + c * (tw + pad) + (tw - t.shape[1]) // 2
        sheet[y:y + t.shape[0], x:x + t.shape[1]] = t
        if captions and i < len(captions) and captions[i]:
            ty = pad + r * (th + cap_h + pad) + th + cap_h - 4
            cv2.putText(sheet, str(captions[i])[: max(4, tw // 7)], (x, ty),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return sheet


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an RGB uint8 image as PNG, atomically."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError(f"could not encode {path}")
    with atomic_write(path, "wb") as f:
        f.write(buf.tobytes())
    return path


def save_sheet(images: Sequence[np.ndarray], path: str | Path, **kwargs) -> Path:
    """``make_sheet`` then ``save_png``."""
    return save_png(make_sheet(images, **kwargs), path)
