"""Checkpoints: written atomically and sealed with a SHA-256, verified on load, pruned to the
newest valid ones.

A checkpoint holds everything needed to resume exactly (nanoGPT's checkpoint dict): both
networks, both optimizers, the step, RNG states and the config. A file is torch's zip archive
whose zip comment holds the SHA-256 of every byte before it, so a flipped or missing byte
anywhere is found on load (torch itself reads a damaged tensor without a word); it stays a
standard zip that ``torch.load`` reads, and is loaded with ``weights_only=True`` so a
checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dcgan.config import TrainConfig
from dcgan.models import Discriminator, Generator, sample_z  # noqa: F401 (sample_z: old home)
from pipeline.dataset import atomic_write
from pipeline.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
GENERATOR = "generator.pt"
NAME = re.compile(r"^step-(\d{8,})\.pt$")  # checkpoints/step-00001000.pt

_EOCD = b"PK\x05\x06"  # a zip's end record: its last 22 bytes, the comment's length last
_SEAL = b"dcgan-curate sha256 "
_SEAL_BYTES = len(_SEAL) + 64  # the comment: the tag, then the digest in hex


def checkpoint_path(run: str | Path, step: int) -> Path:
    return Path(run) / CHECKPOINTS / f"step-{step:08d}.pt"


def list_checkpoints(run: str | Path) -> list[Path]:
    """The run's checkpoint files, newest (highest step) first."""
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(obj: dict[str, Any], path: str | Path,
                    verified: dict[Path, tuple[int, int]] | None = None) -> Path:
    """``torch.save``, sealed, under a temporary name, then renamed: a crash never leaves a
    half file under the real name. ``verified``: the memo of ``is_valid``, told of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    # torch's zip archive, its comment set to the SHA-256 of every byte before the comment.
    if bytes(data[-22:-18]) != _EOCD or bytes(data[-2:]) != b"\0\0":
        raise RuntimeError("torch.save did not end its archive with a comment-less zip record")
    head = (data[:-2], _SEAL_BYTES.to_bytes(2, "little"))
    digest = hashlib.sha256(head[0])
    digest.update(head[1])
    with atomic_write(path, "wb") as f:
        f.writelines((*head, _SEAL, digest.hexdigest().encode()))
    if verified is not None:
        st = path.stat()
        verified[path] = (st.st_size, st.st_mtime_ns)
    return path


def _check_seal(path: Path, data: bytes) -> None:
    """Raise UserError unless ``data`` is sealed and intact (or an unsealed file of an older
    version of this tool that still ends in a whole zip record)."""
    tail = data[-_SEAL_BYTES:]
    if tail.startswith(_SEAL):
        if hashlib.sha256(data[:-_SEAL_BYTES]).hexdigest().encode() != tail[len(_SEAL):]:
            raise UserError(f"checkpoint {path} is corrupt: its SHA-256 does not match the one "
                            "written with it (the file changed or was damaged since)")
    elif data[-22:-18] != _EOCD or data[-2:] != b"\0\0":
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint of this tool "
                        "(truncated, or no SHA-256 seal)")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint file safely (seal verified, ``weights_only=True``); UserError if it
    is missing, damaged or not a checkpoint of this tool."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    _check_seal(path, data)
    try:
        ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # garbage, or pickled code refused
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint of this tool "
                        f"({type(e).__name__}: {first})") from e
    if not isinstance(ckpt, dict) or "config" not in ckpt or "G" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this tool (no config or generator)")
    return ckpt


def is_valid(path: Path, verified: dict[Path, tuple[int, int]] | None = None) -> bool:
    """Whether ``path`` is an intact checkpoint of this tool. ``verified``: a memo of files
    found intact, by (size, mtime), so a run prunes after each save with a stat per file
    rather than a read of ~80 MB (a file rewritten since is verified again)."""
    memo = {} if verified is None else verified
    st = path.stat()
    if memo.get(path) == (st.st_size, st.st_mtime_ns):
        return True
    try:
        load_checkpoint(path)
    except UserError:
        return False
    memo[path] = (st.st_size, st.st_mtime_ns)
    return True


def prune_checkpoints(run: str | Path, keep: int, remove: Callable[[Path], None],
                      verified: dict[Path, tuple[int, int]] | None = None) -> list[Path]:
    """Keep the ``keep`` newest *valid* checkpoints; ``remove`` older ones and damaged ones
    (the run directory's own deletion, which touches only files the tool wrote).

    Only files named like our checkpoints in the run's checkpoints/ folder are considered
    (never a link); the newest valid checkpoint is never deleted. Returns what was removed.
    """
    valid, removed = 0, []
    for p in list_checkpoints(run):
        if p.is_symlink():
            continue
        if valid < max(1, keep):
            if is_valid(p, verified):
                valid += 1
                continue
            log.warning("removing damaged checkpoint %s", p)
        remove(p)
        removed.append(p)
    return removed


def latest_checkpoint(run: str | Path, map_location: Any = "cpu"
                      ) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of ``run`` that loads, and its contents; older ones are tried
    when newer ones are damaged."""
    run = Path(run)
    candidates = list_checkpoints(run)
    for p in candidates:
        try:
            return p, load_checkpoint(p, map_location)
        except UserError as e:
            log.warning("skipping %s", e)
    if not candidates and (run / GENERATOR).is_file():
        return run / GENERATOR, load_checkpoint(run / GENERATOR, map_location)
    what = "no valid checkpoint" if candidates else "no checkpoint"
    raise UserError(f"{run} holds {what} (looked in {run / CHECKPOINTS})")


def find_checkpoint(run_or_file: str | Path) -> Path:
    """A checkpoint file as given, or the latest valid one in a run directory."""
    p = Path(run_or_file)
    if p.is_dir():
        return latest_checkpoint(p)[0]
    if not p.exists():
        raise UserError(f"{p} does not exist")
    return p


def _load(run_or_file: str | Path, map_location: Any) -> tuple[dict[str, Any], TrainConfig]:
    p = Path(run_or_file)
    ckpt = latest_checkpoint(p, map_location)[1] if p.is_dir() else load_checkpoint(
        p, map_location)
    return ckpt, TrainConfig.from_dict(ckpt["config"])


def load_generator(run_or_file: str | Path, device: Any = "cpu") -> tuple[Generator,
                                                                          TrainConfig]:
    """The generator of a run (latest valid checkpoint) or checkpoint file, in eval mode."""
    ckpt, config = _load(run_or_file, device)
    g = Generator(config.nz, config.ngf, config.resolution).to(device)
    g.load_state_dict(ckpt["G"])
    return g.eval(), config


def load_discriminator(run_or_file: str | Path, device: Any = "cpu"
                       ) -> tuple[Discriminator, TrainConfig]:
    """The discriminator of a run or checkpoint file, in eval mode."""
    ckpt, config = _load(run_or_file, device)
    if "D" not in ckpt:
        raise UserError(f"{run_or_file} holds a generator only (no discriminator): "
                        "give the run directory or a checkpoints/step-*.pt file")
    d = Discriminator(config.ndf, config.resolution).to(device)
    d.load_state_dict(ckpt["D"])
    return d.eval(), config
