"""The dedup stage: a dataset directory in, the same directory without near-duplicates out.

Outputs besides the cleaned dataset (every pixel array of the input, rows of removed items
left out; the manifest keeps the input's fields plus ``source_id``): the ``duplicates`` drop
list (``key``, ``duplicate_of`` (a kept key), ``distance`` (code bits), ``similarity``
(pixel check)), ``review.png`` (random removed/kept pairs side by side, the paper's way of
estimating false positives) and ``hash/``: the trained ``autoencoder.pt``, the packed
``codes.npy`` and the eight 32-bit ``keys.npy`` of every input item, so that a rerun with
other thresholds does not encode again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset import Dataset, DatasetWriter, StageResult, atomic_write, write_json
from pipeline.dedup.search import SearchConfig
from pipeline.devices import DEVICES
from pipeline.errors import UserError, at_least
from pipeline.outputs import OutputDir, check_separate
from pipeline.progress import progress_bar
from pipeline.stage import HOW, carry_drops, identity

log = logging.getLogger(__name__)

HASH_DIR = "hash"  # cached model, codes and keys (kept when the stage starts again)
_WRITE_BLOCK = 1024  # items written at once, then a commit point (one per item is slow)


@dataclass(frozen=True)
class DedupConfig:
    model: str | None = None  # a saved autoencoder to reuse instead of training one
    steps: int = 128  # autoencoder optimizer steps (batches of 256 thumbnails)
    epochs: int | None = None  # instead of steps: passes over the training (sub)set
    train_limit: int = 20000  # random training subset size when the data is larger
    device: str = field(default="auto", metadata=HOW)  # auto | cuda | cpu: train and hash
    seed: int = 0  # training subset, initialization, review-sheet sample
    limit: int | None = None  # only the first N items of the dataset
    search: SearchConfig = field(default_factory=SearchConfig)  # probing and thresholds
    review_pairs: int = field(default=24, metadata=HOW)  # pairs on the review sheet

    def __post_init__(self) -> None:
        at_least(self, steps=1, epochs=1, train_limit=1, limit=1)
        if self.device not in DEVICES:
            raise UserError(f"device must be one of {', '.join(DEVICES)} (got "
                            f"{self.device!r})", param="device")
        if self.model is not None and not Path(self.model).is_file():
            raise UserError(f"autoencoder file {self.model} does not exist", param="model")

    def identity(self) -> dict[str, Any]:
        """What determines the output (the device and the review sheet do not)."""
        model = str(Path(self.model).resolve()) if self.model else None
        return {**identity(self), "model": model}


def _hash(ds: Dataset, thumbs: np.ndarray, config: DedupConfig, writer: DatasetWriter,
          progress: bool, engine: Any) -> tuple[np.ndarray, np.ndarray, dict]:
    """Codes and keys of every item: from the cache, else trained/loaded model + encoding."""
    from pipeline.dedup.autoencoder import (
        FORMAT_VERSION,
        AutoencoderConfig,
        hash_thumbs,
        load_autoencoder,
        save_autoencoder,
        train_autoencoder,
    )
    from pipeline.devices import resolve_device

    ident = {k: v for k, v in config.identity().items() if k != "search"}
    ident["input"] = ds.identity()
    ident["format"] = FORMAT_VERSION  # codes and keys of another layout are recomputed
    paths = {n: writer.path(f"{HASH_DIR}/{n}")
             for n in ("hash.json", "codes.npy", "keys.npy", "autoencoder.pt")}
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads(paths["hash.json"].read_text())
        if meta.get("identity") == json.loads(json.dumps(ident)):
            codes, keys = np.load(paths["codes.npy"]), np.load(paths["keys.npy"])
            if len(codes) == len(keys) == len(thumbs):
                log.info("reusing the codes in %s", paths["codes.npy"].parent)
                return codes, keys, meta
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    acts = None
    if config.model:
        model = load_autoencoder(config.model, device)
        trained = False
    else:
        ae = AutoencoderConfig(steps=config.steps, epochs=config.epochs,
                               train_limit=config.train_limit, seed=config.seed)
        # Trained on every thumbnail (up to train_limit), it has encoded them all already.
        model, acts = train_autoencoder(thumbs, ae, device, progress, return_activations=True)
        model = model.to(device)
        trained = True
    t1 = time.perf_counter()
    if acts is None and engine is not None:  # encoded by the engine's actors
        on_disk = ds.array("thumbs").filename if engine.cluster else thumbs
        acts = engine.encode_thumbs(model, on_disk)[:len(thumbs)]
    codes, keys = hash_thumbs(model, thumbs, acts)
    t2 = time.perf_counter()
    save_autoencoder(model, paths["autoencoder.pt"])
    for name, arr in (("codes.npy", codes), ("keys.npy", keys)):
        with atomic_write(paths[name], "wb") as f:
            np.save(f, arr)
    meta = {"identity": ident, "trained": trained, "device": device,
            "loss": model.config.get("final_loss"),
            "train_seconds": round(t1 - t0, 3), "hash_seconds": round(t2 - t1, 3)}
    write_json(paths["hash.json"], meta)
    return codes, keys, meta


def _review_sheet(path: Path, pictures: np.ndarray, manifest: list[dict],
                  dup_of: np.ndarray, distance: np.ndarray, similarity: np.ndarray,
                  n_pairs: int, seed: int) -> None:
    """Random removed | kept pairs side by side, captioned with their ids and the pair's
    evidence: the paper's way of estimating false positives by eye."""
    from pipeline.sheets import save_sheet

    removed = np.flatnonzero(dup_of >= 0)
    if len(removed) == 0:
        return
    pick = np.sort(np.random.default_rng(seed).choice(
        removed, min(n_pairs, len(removed)), replace=False))
    gap = np.full((pictures.shape[1], 3, 3), 255, np.uint8)
    tiles, captions = [], []
    for i in pick:
        j = int(dup_of[i])
        tiles.append(np.concatenate([pictures[i], gap, pictures[j]], axis=1))
        captions.append(f"x{manifest[i]['id']} = {manifest[j]['id']}  d{int(distance[i])} "
                        f"s{similarity[i]:.2f}")
    title = [f"Near-duplicates removed by dedup: {len(pick)} of {len(removed)} pairs, drawn "
             "at random. In each pair the removed image (x, left) stands beside the kept "
             "image it duplicates (=, right).",
             "Under each pair: the two ids (rows of the input; the keys are in the "
             "duplicates list), d = code distance in bits (of 128), s = pixel similarity "
             "(1 = identical)."]
    scale = max(1, 96 // pictures.shape[1])
    if scale > 1:  # small images enlarged, pixels kept crisp
        tiles = [np.repeat(np.repeat(t, scale, 0), scale, 1) for t in tiles]
    save_sheet(tiles, path, ncol=4, captions=captions, title=title, pad=6)


def dedup(dataset: str | Path, out: str | Path, config: DedupConfig = DedupConfig(), *,
          overwrite: bool = False, progress: bool = True, engine: Any = None) -> StageResult:
    """Remove near-duplicates from the dataset directory ``dataset`` into ``out``.

    A rerun with the same input and config does nothing; an interrupted run resumes.
    ``engine``: a Ray engine whose actors encode the thumbnails; the model is trained and
    the search runs here, over every code.
    """
    inputs = [dataset, *([config.model] if config.model else [])]
    check_separate(out, inputs)
    ds = Dataset(dataset)
    _check_size(ds, config)
    with DatasetWriter(out, "dedup", config.identity(), _arrays(ds), lineage=[ds.identity()],
                       inputs=inputs, overwrite=overwrite, keep=(HASH_DIR,),
                       columns=ds.stats.get("columns")) as writer:
        return writer.result if writer.done else _dedup(ds, writer, config, progress, engine)


def _arrays(ds: Dataset) -> dict[str, tuple[int, ...]]:
    if "thumbs" not in ds.array_names:
        raise UserError(f"{ds.root} has no 32x32 thumbnails (a dataset made by an older "
                        "version?): extract it again")
    return {n: (ds.array(n).shape[1:], ds.array(n).dtype.name) for n in ds.array_names}


def _check_size(ds: Dataset, config: DedupConfig) -> None:
    """Refuse data too small to train on before anything is written."""
    n = len(ds) if config.limit is None else min(config.limit, len(ds))
    if n == 0:
        raise UserError(f"{ds.root} holds no images to deduplicate")
    _check_trainable(n, config)


def _check_trainable(n: int, config: DedupConfig) -> None:
    from pipeline.dedup.autoencoder import MIN_TRAIN

    if not config.model and n < MIN_TRAIN:
        raise UserError(f"{n} images are too few to train the dedup autoencoder: it needs at "
                        f"least {MIN_TRAIN}, or a trained model", param="model")


def _dedup(ds: Dataset, writer: DatasetWriter, config: DedupConfig, progress: bool,
           engine: Any) -> StageResult:
    from pipeline.dedup.search import find_duplicates

    n = len(ds) if config.limit is None else min(config.limit, len(ds))
    sources = {k: ds.array(k) for k in ds.array_names}  # whole memory maps: copied file to file
    manifest = ds.manifest[:n]
    thumbs = np.ascontiguousarray(sources["thumbs"][:n])
    codes, keys, meta = _hash(ds, thumbs, config, writer, progress, engine)
    t0 = time.perf_counter()
    result = find_duplicates(codes, keys, thumbs, config.search)
    t_search = time.perf_counter() - t0
    dup_of = result.duplicate_of
    # Drops the input already recorded (corrupt records) stay listed, counted apart.
    if writer.position == 0:
        carry_drops(writer, ds)
    t0 = time.perf_counter()
    bar = progress_bar(n, "write", "img", progress, initial=writer.position)
    for start in range(writer.position, n, _WRITE_BLOCK):
        block = np.arange(start, min(n, start + _WRITE_BLOCK))
        kept = block[dup_of[block] < 0]
        writer.copy_many([manifest[i]["key"] for i in kept], sources, kept,
                         [{**{k: v for k, v in manifest[i].items() if k not in ("id", "key")},
                           "source_id": int(i)} for i in kept])
        for i in block[dup_of[block] >= 0]:
            writer.drop(manifest[i]["key"], "duplicate", file="duplicates",
                        duplicate_of=manifest[dup_of[i]]["key"],
                        distance=int(result.distance[i]),
                        similarity=round(float(result.similarity[i]), 4))
        writer.advance(len(block))  # a commit point per block, not per item
        bar.update(len(block))
    bar.close()
    pictures = sources.get("images", sources["thumbs"])
    _review_sheet(writer.path("review.png"), pictures, manifest, dup_of, result.distance,
                  result.similarity, config.review_pairs, config.seed)
    groups = result.groups()
    sizes = Counter(len(v) + 1 for v in groups.values())
    return writer.finish(
        removed=int((dup_of >= 0).sum()), groups=len(groups),
        group_sizes={str(k): v for k, v in sorted(sizes.items())},
        largest_group=max(sizes) if sizes else 1,
        candidates=result.candidates, confirmed=result.confirmed,
        trained=meta.get("trained"), autoencoder_loss=meta.get("loss"),
        device=meta.get("device"), train_seconds=meta.get("train_seconds"),
        hash_seconds=meta.get("hash_seconds"), search_seconds=round(t_search, 3),
        write_seconds=round(time.perf_counter() - t0, 3))


def _warm_up_torch(device: str) -> threading.Thread:
    """Import torch and start CUDA (unless ``device`` is cpu) in a background thread, while
    the extraction's worker processes decode and this process mostly waits on them: these
    fixed costs come before any training. Any failure here is ignored: the same steps run
    again in the foreground, where an error is reported."""
    import concurrent.futures.process  # noqa: F401  the extraction's modules are imported
    import multiprocessing.forkserver  # noqa: F401  first: no import races with the thread

    def warm() -> None:
        with contextlib.suppress(Exception):
            import torch

            import pipeline.dedup.autoencoder  # noqa: F401

            if device != "cpu" and torch.cuda.is_available():
                torch.zeros(1, device="cuda")

    thread = threading.Thread(target=warm, name="warm-up-torch", daemon=True)
    thread.start()
    return thread


def dedup_lsun(source, out: str | Path, config: DedupConfig = DedupConfig(),
               extract_config=None, *, overwrite: bool = False, progress: bool = True,
               engine: Any = None) -> StageResult:
    """Extract an LSUN source once into ``out/extracted`` (cached, resumable), then dedup it.

    The whole run holds ``out``: the extraction is the tool's own nested dataset there.
    """
    from pipeline.extract import EXTRACTED, ExtractConfig, extract_within

    if config.device not in ("auto", "cpu"):
        # An explicit cuda device is checked before decoding, not after hours of it.
        from pipeline.devices import resolve_device

        resolve_device(config.device)
    extract_config = extract_config or ExtractConfig()
    inputs = [*source.paths, *([config.model] if config.model else [])]
    check_separate(out, inputs)
    _check_trainable(len(source), config)  # before anything is decoded or written
    with OutputDir(out, "dataset", inputs) as held:
        warm = _warm_up_torch(config.device)
        # Worker processes, not threads: the warm-up thread holds this process's GIL for
        # seconds at a time (module imports), which would stall decoding threads.
        ds, ext = extract_within(held, source, extract_config, overwrite=overwrite,
                                 progress=progress, threads=False, engine=engine)
        warm.join()
        _check_size(ds, config)
        with DatasetWriter(held, "dedup", config.identity(), _arrays(ds),
                           lineage=[ds.identity()], overwrite=overwrite,
                           keep=(HASH_DIR, EXTRACTED),
                           columns=ds.stats.get("columns")) as writer:
            result = writer.result if writer.done else _dedup(ds, writer, config, progress,
                                                              engine)
    return replace(result, extra={**result.extra, "extract_seconds": ext.seconds,
                                  "extract_skipped": ext.skipped})
