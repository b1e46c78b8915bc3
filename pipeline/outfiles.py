"""Files the tool writes for a person (pictures, animations, numbers): where they go, and
proof that they are ours.

The ``--out`` rule of every command that writes such files: a path with a known suffix is a
file and the suffix says its format; a path without one (or an existing folder) is a
folder, created with its parents because the user named it. A file's folder must exist
already (a typo should not grow a tree). Every file is tagged as written by the tool (an
EXIF ``Software`` field, a GIF comment, a ``"tool"`` key in JSON); an existing file is
replaced only when it carries that tag, so a person's own photo or notes are never
overwritten, and nothing is ever deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset import atomic_write
from pipeline.errors import UserError

TAG = "dcgan-curate"
_EXIF_SOFTWARE = 0x0131
# Suffix -> Pillow format; .jpeg is .jpg.
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
ANIMATION_SUFFIXES = {".gif": "GIF", ".webp": "WEBP"}
JSON_SUFFIXES = {".json": "JSON"}
_MAX_JSON_CHECK = 16 << 20  # a bigger .json is not one of ours


def _suffix_list(suffixes: Iterable[str]) -> str:
    return ", ".join(sorted(set(suffixes)))


@dataclass(frozen=True)
class Outputs:
    """Where one command writes: a file the user named (companions go beside it, named
    after it) or a folder that holds each file under its default name."""

    main: Path  # the command's main file
    named: bool  # True when the user named ``main``; False in folder mode
    default: str  # the main file's name in folder mode, e.g. "walk.png"

    @classmethod
    def resolve(cls, out: str | Path, default: str, suffixes: Iterable[str]) -> Outputs:
        """Apply the rule to ``out``; ``suffixes`` are those a named file may have."""
        out = Path(out)
        suffix = out.suffix.lower()
        if not suffix or out.is_dir():
            if out.exists() and not out.is_dir():
                raise UserError(f"{out} is a file, not a folder")
            return cls(out / default, False, default)
        if suffix not in set(suffixes):
            raise UserError(f"{out}: unknown file type {out.suffix!r}: give a file ending in "
                            f"{_suffix_list(suffixes)}, or a folder (a name without a suffix)")
        if not out.parent.is_dir():
            raise UserError(f"{out}: folder {out.parent} does not exist (create it first, or "
                            "give a folder name without a suffix: folders are created)")
        return cls(out, True, default)

    @property
    def folder(self) -> Path:
        return self.main.parent

    def companion(self, name: str) -> Path:
        """A further file of the command, ``name`` in folder mode. Beside a named file it
        takes that file's name: ``walk.gif`` beside ``x.png`` is ``x.gif``, another name
        ``candidates.png`` beside ``x.png`` is ``x-candidates.png``."""
        if not self.named:
            return self.folder / name
        if Path(name).stem == Path(self.default).stem:
            return self.main.with_suffix(Path(name).suffix)
        return self.main.with_name(f"{self.main.stem}-{name}")

    def claim(self, paths: Iterable[Path]) -> None:
        """Refuse, before any work, if a path holds something the tool did not write."""
        for path in paths:
            check_replaceable(path)

    def ready(self) -> None:
        """Create the folder (folder mode) just before the first file is written, so a
        command that fails earlier leaves nothing behind."""
        if not self.named:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create folder {self.folder}: {e.strerror or e}") from e


def is_ours(path: str | Path) -> bool:
    """True if ``path`` is a regular file carrying the tool's tag (see the module doc)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    if path.suffix.lower() in JSON_SUFFIXES:
        if path.stat().st_size > _MAX_JSON_CHECK:
            return False
        try:
            obj = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        return isinstance(obj, dict) and obj.get("tool") == TAG
    from PIL import Image

    try:
        with Image.open(path) as im:
            comment = im.info.get("comment", b"")
            if isinstance(comment, bytes):
                comment = comment.decode("latin-1")
            return comment == TAG or im.getexif().get(_EXIF_SOFTWARE) == TAG
    except Exception:  # not an image Pillow reads: certainly not one we wrote
        return False


def check_replaceable(path: str | Path) -> None:
    """A one-line error if ``path`` exists and is not a file this tool wrote."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"{path} is a folder: give another output name")
    if not is_ours(path):
        raise UserError(f"{path} exists and was not written by {TAG}: it is left as it is; "
                        "move it or choose another output")


def _exif() -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[_EXIF_SOFTWARE] = TAG
    return exif.tobytes()


def save_image(image: np.ndarray, path: str | Path) -> Path:
    """Write an RGB (or grey) uint8 image, atomically and tagged; the suffix says the format
    (PNG, JPEG quality 95, lossless WebP)."""
    from PIL import Image

    path = Path(path)
    fmt = IMAGE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: not one of {_suffix_list(IMAGE_SUFFIXES)}")
    image = np.ascontiguousarray(image)
    im = Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1
                         else image)
    options: dict[str, Any] = {"exif": _exif()}
    if fmt == "JPEG":
        options["quality"] = 95
    elif fmt == "WEBP":
        options["lossless"] = True
    with atomic_write(path, "wb") as f:
        im.save(f, format=fmt, **options)
    return path


def save_animation(frames: Sequence[np.ndarray] | np.ndarray, path: str | Path,
                   frame_ms: int = 80) -> Path:
    """Frames (N, H, W, C) uint8 as a looping animation, atomically and tagged (GIF or
    WebP by suffix)."""
    from PIL import Image

    path = Path(path)
    fmt = ANIMATION_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: not one of {_suffix_list(ANIMATION_SUFFIXES)}")
    ims = [Image.fromarray(f.squeeze(-1) if f.shape[-1] == 1 else f) for f in frames]
    tag = {"comment": TAG.encode()} if fmt == "GIF" else {"exif": _exif(), "lossless": True}
    with atomic_write(path, "wb") as f:
        ims[0].save(f, format=fmt, save_all=True, append_images=ims[1:], duration=frame_ms,
                    loop=0, **tag)
    return path


def save_json(obj: dict[str, Any], path: str | Path) -> Path:
    """Write a command's numbers as indented JSON, atomically, with the tool's tag."""
    path = Path(path)
    with atomic_write(path) as f:
        json.dump({**obj, "tool": TAG}, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    return path
