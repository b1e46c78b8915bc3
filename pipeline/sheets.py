"""Contact sheets: grids of images with optional captions, row labels and a title.

Every picture the tool writes for a person (review sheets of duplicate pairs, kept and
rejected faces, sample grids, the experiments' sheets) goes through ``save_sheet`` so they
look alike; a sheet whose tiles carry labels says in its title what they mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

_FONT_SCALE = 0.42  # title and row labels (captions scale with the tile)
_LINE_H = 17  # pixels per title line at that scale
_MIN_TITLED_WIDTH = 420  # a titled sheet is at least this wide, so its lines stay readable


def _text_width(text: str, scale: float) -> int:
    import cv2

    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]


def _fit(text: str, width: int, scale: float) -> str:
    """``text`` cut (with an ellipsis) to ``width`` pixels: captions never overlap."""
    if _text_width(text, scale) <= width:
        return text
    while len(text) > 1 and _text_width(text + "..", scale) > width:
        text = text[:-1]
    return text + ".."


def wrap(text: str, width: int, scale: float = _FONT_SCALE) -> list[str]:
    """``text`` broken into lines of at most ``width`` pixels (a word never breaks)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}" if line else word
            if line and _text_width(trial, scale) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def make_sheet(images: Sequence[np.ndarray], ncol: int | None = None,
               captions: Sequence[str] | None = None, cell: int | None = None,
               pad: int = 2, background: int = 255, title: str | Sequence[str] | None = None,
               row_labels: Sequence[str] | None = None) -> np.ndarray:
    """Tile RGB (or grey) uint8 images into one RGB image; captions go under each tile.

    ``cell``: resize every tile to this square size (nearest-neighbour when enlarging, so
    small images stay crisp); default: the largest tile's size, smaller ones centred.
    ``row_labels`` go in a column left of the rows; ``title`` (a string or paragraphs,
    wrapped to the sheet's width) goes above the grid.
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
    row_h = th + cap_h + pad
    label_w = 0
    if row_labels:
        label_w = max(_text_width(str(s), _FONT_SCALE) for s in row_labels) + 2 * pad + 4
    grid_w = label_w + ncol * (tw + pad) + pad
    lines: list[str] = []
    width = grid_w
    if title:
        width = max(grid_w, _MIN_TITLED_WIDTH)
        for paragraph in [title] if isinstance(title, str) else title:
            lines += wrap(paragraph, width - 2 * pad - 4)
    top = len(lines) * _LINE_H + (4 if lines else 0)
    sheet = np.full((top + nrow * row_h + pad, width, 3), background, np.uint8)
    for k, line in enumerate(lines):
        cv2.putText(sheet, line, (pad + 2, (k + 1) * _LINE_H - 4), cv2.FONT_HERSHEY_SIMPLEX,
                    _FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    x0 = (width - grid_w) // 2 + label_w
    for r, label in enumerate(row_labels or []):
        if r < nrow and label:
            y = top + pad + r * row_h + th // 2 + 5
            cv2.putText(sheet, str(label), (x0 - label_w + pad + 2, y),
                        cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncol)
        y = top + pad + r * row_h + (th - t.shape[0]) // 2
        x = x0 + pad + c * (tw + pad) + (tw - t.shape[1]) // 2
        sheet[y:y + t.shape[0], x:x + t.shape[1]] = t
        if captions and i < len(captions) and captions[i]:
            ty = top + pad + r * row_h + th + cap_h - 4
            cv2.putText(sheet, _fit(str(captions[i]), tw, scale), (x, ty),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return sheet


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an RGB uint8 image, atomically and tagged as the tool's; the suffix says the
    format (.png, .jpg, .webp). The folder is created (run directories' ``samples/``)."""
    from pipeline.outfiles import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_image(image, path)


def save_sheet(images: Sequence[np.ndarray], path: str | Path, **kwargs) -> Path:
    """``make_sheet`` then ``save_png``."""
    return save_png(make_sheet(images, **kwargs), path)
