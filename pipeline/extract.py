"""The extraction stage: any image source to a dataset directory of centre crops.

Each record is decoded once into the training-resolution crop (``images``), the 32 x 32
thumbnail the dedup stage needs (``thumbs``) and the quality measures of the crop (the
``measures`` table: ``quality.MEASURES``, the source's width and height included), which the
filter stage reads instead of decoding again. Unreadable records are dropped with reason
``corrupt`` (``too_large`` for decompression bombs) into the ``rejected`` list.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset import Dataset, DatasetWriter, StageResult, is_dataset
from pipeline.decode import THUMB, DecodeError, prepare_measured
from pipeline.errors import UserError, at_least
from pipeline.outputs import OutputDir, cache_key, cache_root
from pipeline.quality import MEASURES, WORK_SIDE, measure_batch
from pipeline.runner import worker_state
from pipeline.sources import DatasetSource, Source, open_source
from pipeline.stage import HOW, check_parallelism, identity, run_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractConfig:
    resolution: int = 64  # side of the stored square images (centre crop, anti-aliased)
    workers: int = field(default=0, metadata=HOW)  # decoding threads; 0 = one per core
    # Records per task handed to a worker (small: less idle tail at the end).
    chunk: int = field(default=64, metadata=HOW)
    rank: int = 0  # this shard's index when the source is split over machines
    world_size: int = 1  # number of shards (each writes its own dataset directory)

    def __post_init__(self) -> None:
        at_least(self, resolution=8)
        check_parallelism(self)


@dataclass
class Chunk:
    """One task's results, in record order: ``status[i]`` is None (kept) or a drop reason."""

    keys: list[str]
    status: list[str | None]
    details: list[str]
    images: np.ndarray
    thumbs: np.ndarray
    measures: np.ndarray  # N x len(MEASURES) float32, one row per kept record


def prepare_chunk(task: tuple[int, int]) -> Chunk:
    """Decode records ``start..stop-1`` of the worker's source (the per-task function)."""
    state = worker_state()
    source, res = state["source"], state["resolution"]
    keys, status, details, images, thumbs, works, sizes = [], [], [], [], [], [], []
    for key, data in source.read_range(*task):
        keys.append(key)
        try:
            if data is None:
                why = getattr(source, "why_unreadable", None)
                raise DecodeError("corrupt", why(key) if why else "unreadable record")
            image, thumb, work, size = prepare_measured(data, res, WORK_SIDE)
        except DecodeError as e:
            status.append(e.reason)
            details.append(e.detail)
            continue
        status.append(None)
        details.append("")
        images.append(image)
        thumbs.append(thumb)
        works.append(work)
        sizes.append(size)
    empty = np.zeros((0, res, res, 3), np.uint8)
    # The chunk's crops measured together: a few OpenCV calls for all of them.
    return Chunk(keys, status, details,
                 np.stack(images) if images else empty,
                 np.stack(thumbs) if thumbs else np.zeros((0, THUMB, THUMB, 3), np.uint8),
                 measure_batch(works, sizes, bgr=True))


def extract(source: Source, out: str | Path, config: ExtractConfig = ExtractConfig(), *,
            overwrite: bool = False, progress: bool = True, threads: bool = True,
            engine: Any = None) -> StageResult:
    """Write ``source`` as a dataset directory at ``out``.

    A rerun with the same source and config does nothing; an interrupted run resumes.
    ``threads``: decode in threads of this process (no pool to start), else in worker
    processes, which leave this process's GIL to other work running meanwhile. ``engine``:
    a Ray engine (``stage.open_engine``) to decode on instead; the output is the same.
    """
    if isinstance(source, DatasetSource):
        raise UserError(f"{source.paths[0]} is already a dataset directory: extraction "
                        "reads image folders and LSUN databases")
    res = config.resolution
    with DatasetWriter(out, "extract", identity(config),
                       {"images": (res, res, 3), "thumbs": (THUMB, THUMB, 3),
                        "measures": ((len(MEASURES),), "float32")},
                       lineage=[source.describe()], inputs=source.paths,
                       overwrite=overwrite, columns={"measures": list(MEASURES)}) as writer:
        if not writer.done:
            workers = run_stage(writer, prepare_chunk, write_chunk,
                                {"source": source, "resolution": res}, len(source), config,
                                desc="extract", unit="img", progress=progress,
                                threads=threads, engine=engine, parts=True)
            writer.finish(workers=workers)
    result = writer.result
    if result.kept == 0 and result.read:
        raise UserError(f"nothing was kept: all {result.read} records were dropped "
                        f"({_reasons(result.dropped)}); see the list in {out}")
    return result


EXTRACTED = "extracted"  # a stage's extraction of its image source, inside its output


def extract_within(held: OutputDir, source: Source, config: ExtractConfig, *,
                   overwrite: bool = False, progress: bool = True, threads: bool = True,
                   engine: Any = None) -> tuple[Dataset, StageResult]:
    """Extract ``source`` into ``EXTRACTED/`` inside the output ``held`` (a stage given an
    LSUN database or a folder instead of a dataset directory): the tool's own nested dataset,
    resumable, and finished once: a rerun of the stage (other thresholds, ``--overwrite``)
    finds it and decodes nothing. An extraction there made with other settings or from
    another source is replaced only with ``overwrite`` (it is the expensive part)."""
    cache = held.own(EXTRACTED + "/")
    try:
        result = extract(source, cache, config, progress=progress, threads=threads,
                         engine=engine)
    except UserError as e:
        if e.param != "overwrite" or not overwrite:
            raise
        result = extract(source, cache, config, overwrite=True, progress=progress,
                         threads=threads, engine=engine)
    return Dataset(cache), result


def _reasons(dropped: dict[str, int]) -> str:
    return ", ".join(f"{n} {r}" for r, n in Counter(dropped).most_common())


def write_chunk(writer: DatasetWriter, chunk: Chunk) -> int:
    """Add a chunk's kept records and drop its failed ones, in record order; its size."""
    writer.add_many([k for k, s in zip(chunk.keys, chunk.status) if s is None],
                    {"images": chunk.images, "thumbs": chunk.thumbs,
                     "measures": chunk.measures})
    for key, status, detail in zip(chunk.keys, chunk.status, chunk.details):
        if status is not None:
            writer.drop(key, status, detail=detail)
    return len(chunk.keys)


def as_dataset(path: str | Path, resolution: int, progress: bool = True) -> Dataset:
    """Any image source as a dataset directory: itself when it is one, else its extraction
    at ``resolution`` in the cache (made once; a rerun finds it finished)."""
    if is_dataset(path):
        return Dataset(path)
    source = open_source(path)
    out = cache_root() / "datasets" / f"{Path(path).name}-{cache_key(path)}-{resolution}"
    config = ExtractConfig(resolution=resolution)
    log.info("extracting %s at %d px into %s (cached)", path, resolution, out)
    try:
        r = extract(source, out, config, progress=progress)
    except UserError as e:
        if e.param != "overwrite":
            raise
        # The cache is the tool's own: an extraction of an older state of the source is
        # replaced (the source changed since).
        r = extract(source, out, config, overwrite=True, progress=progress)
    if r.skipped:
        log.info("reusing the extraction in %s", out)
    return Dataset(out)
