"""Feeding the trainer: training pixels, the data order, and batches on the device.

The pixels are a dataset directory's uint8 N x H x W x 3 array. When they fit, they go to
the device once (the GPU, or RAM on the CPU) and each batch is one gather by index there;
otherwise a background thread gathers batches from the memory map into (pinned) buffers and
copies them over while the previous step runs. Normalisation to [-1, 1] and flips happen on
the device. The data order is a pure function of (seed, step): epoch e is one permutation
seeded by (seed, e), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import UserError

log = logging.getLogger(__name__)


def mix_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and runs)."""
    text = "/".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def open_images(path: str | Path, resolution: int, progress: bool = True) -> np.ndarray:
    """The training pixels (N x res x res x 3 uint8, memory-mapped) of any image source: a
    dataset directory, or an image folder or LSUN database extracted once into the cache
    at ``resolution`` (``pipeline.extract.as_dataset``)."""
    from pipeline.dataset import is_dataset
    from pipeline.extract import as_dataset

    given = is_dataset(path)
    images = as_dataset(path, resolution, progress).images
    where = f"dataset {path}" if given else f"{path} (extracted)"
    if images.ndim != 4 or images.shape[3] != 3:
        raise UserError(f"{where} holds images of shape {images.shape[1:]}, not H x W x 3 RGB")
    if len(images) == 0:
        raise UserError(f"{where} is empty: no images to train on")
    if images.shape[1:3] != (resolution, resolution):
        raise UserError(f"{where} holds {images.shape[2]}x{images.shape[1]} images but the "
                        f"training resolution is {resolution}x{resolution}: extract it again "
                        f"with `resolution` {resolution}, or train with `resolution` "
                        f"{images.shape[1]}")
    return images


class DataOrder:
    """Which images each step trains on: successive seeded permutations, cut in batches.

    Global step ``s`` takes positions ``s*B .. (s+1)*B-1`` of the concatenated epoch
    permutations; process ``rank`` of ``world_size`` takes its slice of that batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu"):
        if batch_size % world_size:
            raise UserError(f"batch size {batch_size} does not split evenly over "
                            f"{world_size} processes")
        self.n, self.batch, self.seed = n, batch_size, seed
        self.local = batch_size // world_size
        self.offset = rank * self.local
        self.device = torch.device(device)
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(mix_seed(self.seed, "epoch", epoch))
            perm = torch.randperm(self.n, generator=g)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = perm.to(self.device, non_blocking=True)
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """This process's image indices for global step ``step`` (on ``device``)."""
        start = step * self.batch + self.offset
        stop = start + self.local
        parts, pos = [], start
        while pos < stop:
            epoch, i = divmod(pos, self.n)
            take = min(stop - pos, self.n - i)
            parts.append(self._perm(epoch)[i:i + take])
            pos += take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def epoch(self, step: int) -> float:
        return step * self.batch / self.n


def fits(nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` of images may stay resident on ``device`` (half the free GPU
    memory, a quarter of the RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes < 0.5 * free
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return False
    return nbytes < 0.25 * ram


class Feed:
    """uint8 batches (B x H x W x 3) on the device, for given steps, in order."""

    def __init__(self, images: np.ndarray, order: DataOrder, device: torch.device,
                 resident: bool | None = None, depth: int = 3):
        self.order, self.device = order, device
        self.resident = fits(images.nbytes, device) if resident is None else resident
        if self.resident:
            self.images = torch.from_numpy(np.array(images)).to(device)  # a copy: RAM or GPU
        else:
            log.info("the images (%.1f GB) do not fit on %s: streaming them from disk",
                     images.nbytes / 1e9, device)
            self._mm = images
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread: threading.Thread | None = None
            self._next = None
            self._stop = threading.Event()
            pin = device.type == "cuda"
            shape = (order.local, *images.shape[1:])
            self._buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
                             for _ in range(depth + 2)]
            self._free: queue.Queue = queue.Queue()
            for i in range(len(self._buffers)):
                self._free.put(i)

    def batch(self, step: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The batch of global step ``step`` (written into ``out`` when given)."""
        if self.resident:
            idx = self.order.indices(step)
            return torch.index_select(self.images, 0, idx, out=out) if out is not None \
                else self.images.index_select(0, idx)
        return self._streamed(step, out)

    # -- streaming ------------------------------------------------------------------------
    def _producer(self, first: int) -> None:
        step = first
        while not self._stop.is_set():
            i = self._free.get()
            if i is None:
                return
            idx = self.order.indices(step).cpu().numpy()
            np.take(self._mm, np.sort(idx), axis=0, out=self._buffers[i].numpy())
            # Sorted reads are far faster on a memory map; undo the sort to keep the order.
            inverse = np.argsort(np.argsort(idx, kind="stable"), kind="stable")
            self._buffers[i].copy_(self._buffers[i][torch.from_numpy(inverse)])
            self._queue.put((step, i))
            step += 1

    def _streamed(self, step: int, out: torch.Tensor | None) -> torch.Tensor:
        if self._thread is None or self._next != step:
            self.close()
            self._stop.clear()
            self._queue = queue.Queue(maxsize=self._queue.maxsize)
            self._free = queue.Queue()
            for i in range(len(self._buffers)):
                self._free.put(i)
            self._thread = threading.Thread(target=self._producer, args=(step,), daemon=True)
            self._thread.start()
        got, i = self._queue.get()
        assert got == step
        self._next = step + 1
        buf = self._buffers[i]
        if out is None:
            out = torch.empty(buf.shape, dtype=torch.uint8, device=self.device)
        out.copy_(buf, non_blocking=True)
        if self.device.type == "cuda":
            # The buffer is refilled only after its copy has finished (without a host sync).
            event = torch.cuda.Event()
            event.record()
            threading.Thread(target=lambda: (event.synchronize(), self._free.put(i)),
                             daemon=True).start()
        else:
            self._free.put(i)
        return out

    def close(self) -> None:
        if not self.resident and self._thread is not None:
            self._stop.set()
            self._free.put(None)
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread = None


def to_input(batch: torch.Tensor, flip: torch.Tensor | None = None,
             channels_last: bool = False) -> torch.Tensor:
    """uint8 B x H x W x 3 -> float B x 3 x H x W in [-1, 1], flipped where ``flip``."""
    x = batch.permute(0, 3, 1, 2)  # already channels-last in memory
    x = x.contiguous(memory_format=torch.channels_last if channels_last
                     else torch.contiguous_format)
    x = x.float().mul_(1 / 127.5).sub_(1.0)
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x
