"""The extraction stage: any image source to a dataset directory of centre crops.

Each record is decoded once into the training-resolution crop (``images.npy``) and the 32 x 32
thumbnail the dedup stage needs (``thumbs.npy``). Unreadable records are dropped with reason
``corrupt`` (``too_large`` for decompression bombs) into ``rejected.jsonl``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset import DatasetWriter
from pipeline.decode import THUMB, DecodeError, prepare
from pipeline.errors import UserError
from pipeline.runner import worker_state
from pipeline.sources import Source
from pipeline.stage import run_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractConfig:
    resolution: int = 64  # side of the stored square images (centre crop, anti-aliased)
    workers: int = 0  # decoding threads; 0 = one per core
    chunk: int = 64  # records per task handed to a worker (small: less idle tail at the end)
    rank: int = 0  # this shard's index when the source is split over machines
    world_size: int = 1  # number of shards (each writes its own dataset directory)
    overwrite: bool = False  # replace a different finished dataset in the output

    def identity(self, source: Source) -> dict[str, Any]:
        """What determines the output (not how fast it is made)."""
        return {"source": source.describe(), "resolution": self.resolution,
                "rank": self.rank, "world_size": self.world_size}


@dataclass
class Chunk:
    """One task's results, in record order: ``status[i]`` is None (kept) or a drop reason."""

    keys: list[str]
    status: list[str | None]
    details: list[str]
    images: np.ndarray
    thumbs: np.ndarray


def prepare_chunk(task: tuple[int, int]) -> Chunk:
    """Decode records ``start..stop-1`` of the worker's source (the per-task function)."""
    state = worker_state()
    source, res = state["source"], state["resolution"]
    keys, status, details, images, thumbs = [], [], [], [], []
    for key, data in source.read_range(*task):
        keys.append(key)
        try:
            if data is None:
                raise DecodeError("corrupt", "unreadable record")
            image, thumb = prepare(data, res)
        except DecodeError as e:
            status.append(e.reason)
            details.append(e.detail)
            continue
        status.append(None)
        details.append("")
        images.append(image)
        thumbs.append(thumb)
    empty = np.zeros((0, res, res, 3), np.uint8)
    return Chunk(keys, status, details,
                 np.stack(images) if images else empty,
                 np.stack(thumbs) if thumbs else np.zeros((0, THUMB, THUMB, 3), np.uint8))


def extract(source: Source, out: str | Path, config: ExtractConfig = ExtractConfig(),
            progress: bool = True, threads: bool = True) -> dict[str, Any]:
    """Write ``source`` as a dataset directory at ``out``; returns its stats.

    A rerun with the same source and config is a no-op; an interrupted run resumes.
    ``threads``: decode in threads of this process (the default: no pool to start, see
    ``runner._run_in_threads``), else in worker processes, which leave this process's GIL
    to other work running meanwhile (``dedup_lsun`` imports torch while it extracts).
    """
    if config.resolution < 8:
        raise UserError(f"resolution must be at least 8 (got {config.resolution})")
    writer = DatasetWriter(out, "extract", config.identity(source),
                           {"images": (config.resolution, config.resolution, 3),
                            "thumbs": (THUMB, THUMB, 3)}, overwrite=config.overwrite)
    if writer.done:
        log.info("%s is already finished with this config: nothing to do", out)
        from pipeline.dataset import Dataset

        return {**Dataset(out).stats, "skipped": True}
    workers = run_stage(writer, prepare_chunk, write_chunk,
                        {"source": source, "resolution": config.resolution}, len(source),
                        config, desc="extract", unit="img", progress=progress,
                        threads=threads)
    return writer.finish(source=source.describe(), workers=workers,
                         config=asdict(config))


def write_chunk(writer: DatasetWriter, chunk: Chunk) -> int:
    """Add a chunk's kept records and drop its failed ones, in record order; its size."""
    writer.add_many([k for k, s in zip(chunk.keys, chunk.status) if s is None],
                    {"images": chunk.images, "thumbs": chunk.thumbs})
    for key, status, detail in zip(chunk.keys, chunk.status, chunk.details):
        if status is not None:
            writer.drop(key, status, detail=detail)
    return len(chunk.keys)
