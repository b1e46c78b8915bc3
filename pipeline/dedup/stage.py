"""The dedup stage: a dataset directory in, the same directory without near-duplicates out.

Outputs in ``out``: the cleaned dataset (every pixel array of the input, rows of removed
items left out; the manifest keeps the input's fields plus ``source_id``),
``duplicates.jsonl`` (one line per removed image: ``key``, ``reason: "duplicate"``,
``duplicate_of`` (a kept key), ``distance`` (code bits), ``similarity`` (pixel check)),
``review.png`` (random removed/kept pairs side by side, the paper's way of estimating false
positives), and ``stats.json`` with the summary (removed count, group sizes).
``hash/`` keeps the trained ``autoencoder.pt``, the packed ``codes.npy`` and the eight 32-bit
keys ``keys.npy`` of every input item, so a rerun with other thresholds (``--overwrite``)
does not re-encode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset import (
    Dataset,
    DatasetWriter,
    atomic_write,
    is_dataset,
    read_jsonl,
    write_json,
)
from pipeline.dedup.search import SearchConfig
from pipeline.errors import UserError

log = logging.getLogger(__name__)

HASH_DIR = "hash"  # cached model, codes and keys (kept across --overwrite)
EXTRACTED_DIR = "extracted"  # the extraction cache of `dedup lsun`
_WRITE_BLOCK = 1024  # items written at once, then a commit point (per item: 60 us)


@dataclass(frozen=True)
class DedupConfig:
    model: str | None = None  # a saved autoencoder to reuse instead of training one
    steps: int = 128  # autoencoder optimizer steps (batches of 256 thumbnails)
    epochs: int | None = None  # instead of steps: passes over the training (sub)set
    train_limit: int = 20000  # random training subset size when the data is larger
    device: str = "auto"  # auto | cuda | cpu, for training and hashing
    seed: int = 0  # training subset, initialization, review-sheet sample
    limit: int | None = None  # only the first N items of the dataset
    search: SearchConfig = field(default_factory=SearchConfig)  # probing and thresholds
    review_pairs: int = 24  # removed/kept pairs on the review sheet
    overwrite: bool = False  # replace a different finished result in the output

    def identity(self, dataset: Path) -> dict[str, Any]:
        """What determines the output (the device and review sheet do not)."""
        return {"input": str(dataset.resolve()), "limit": self.limit,
                "model": str(Path(self.model).resolve()) if self.model else None,
                "steps": self.steps, "epochs": self.epochs,
                "train_limit": self.train_limit, "seed": self.seed,
                "search": asdict(self.search)}


def _hash(ds: Dataset, thumbs: np.ndarray, config: DedupConfig, hash_dir: Path,
          progress: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """Codes and keys of every item: from the cache, else trained/loaded model + encoding."""
    from pipeline.dedup.autoencoder import (
        FORMAT_VERSION,
        AutoencoderConfig,
        load_autoencoder,
        save_autoencoder,
        train_autoencoder,
    )
    from pipeline.dedup.hashing import hash_thumbs
    from pipeline.devices import resolve_device

    ident = {k: v for k, v in config.identity(ds.root).items() if k != "search"}
    ident["input_finished"] = (ds.root / "COMPLETE").read_text().strip()
    ident["format"] = FORMAT_VERSION  # codes and keys of another layout are recomputed
    meta_path = hash_dir / "hash.json"
    if meta_path.exists() and (hash_dir / "codes.npy").exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("identity") == ident:
            log.info("reusing codes from %s", hash_dir)
            return np.load(hash_dir / "codes.npy"), np.load(hash_dir / "keys.npy"), meta
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    acts = None
    if config.model:
        model = load_autoencoder(config.model, device)
        trained = False
    else:
        ae = AutoencoderConfig(steps=config.steps, epochs=config.epochs,
                               train_limit=config.train_limit,
                               seed=config.seed)
        # Trained on every thumbnail (up to train_limit), it has encoded them all already.
        model, acts = train_autoencoder(thumbs, ae, device, progress, return_activations=True)
        model = model.to(device)
        trained = True
    t1 = time.perf_counter()
    codes, keys = hash_thumbs(model, thumbs, acts)
    t2 = time.perf_counter()
    hash_dir.mkdir(parents=True, exist_ok=True)
    save_autoencoder(model, hash_dir / "autoencoder.pt")
    for name, arr in (("codes.npy", codes), ("keys.npy", keys)):
        with atomic_write(hash_dir / name, "wb") as f:
            np.save(f, arr)
    meta = {"identity": ident, "trained": trained, "device": device,
            "loss": model.config.get("final_loss"),
            "train_seconds": round(t1 - t0, 3), "hash_seconds": round(t2 - t1, 3)}
    write_json(meta_path, meta)
    return codes, keys, meta


def _review_sheet(path: Path, pictures: np.ndarray, manifest: list[dict],
                  dup_of: np.ndarray, n_pairs: int, seed: int) -> None:
    """Random removed/kept pairs side by side (removed left), captioned with the pair's ids."""
    from pipeline.sheets import save_sheet

    removed = np.flatnonzero(dup_of >= 0)
    if len(removed) == 0:
        return
    pick = np.sort(np.random.default_rng(seed).choice(
        removed, min(n_pairs, len(removed)), replace=False))
    tiles, captions = [], []
    for i in pick:
        j = int(dup_of[i])
        tiles += [pictures[i], pictures[j]]
        captions += [f"x{manifest[i]['id']}", f"={manifest[j]['id']}"]
    save_sheet(tiles, path, ncol=8, captions=captions, cell=max(64, pictures.shape[1]))


def dedup(dataset: str | Path, out: str | Path, config: DedupConfig = DedupConfig(),
          progress: bool = True, preserve: tuple[str, ...] = ()) -> dict[str, Any]:
    """Remove near-duplicates from ``dataset`` into ``out``; returns the stats (summary).

    A rerun with the same input and config is a no-op. ``preserve``: other entries of
    ``out`` to keep (``dedup_lsun``'s extraction cache).
    """
    from tqdm import tqdm

    from pipeline.dedup.search import find_duplicates

    dataset, out = Path(dataset), Path(out)
    if dataset.resolve() == out.resolve():
        raise UserError("--out must differ from the input dataset")
    ds = Dataset(dataset)
    names = sorted(p.stem for p in dataset.glob("*.npy"))
    if "thumbs" not in names:
        raise UserError(f"{dataset} has no thumbs.npy (32x32 thumbnails): make it with "
                        "`python cli.py extract`")
    arrays = {n: ds.array(n) for n in names}
    n = len(arrays["thumbs"]) if config.limit is None else min(config.limit,
                                                                len(arrays["thumbs"]))
    arrays = {k: a[:n] for k, a in arrays.items()}
    manifest = ds.manifest[:n]
    writer = DatasetWriter(out, "dedup", config.identity(dataset),
                           {k: a.shape[1:] for k, a in arrays.items()},
                           overwrite=config.overwrite, preserve=(HASH_DIR, *preserve))
    if writer.done:
        log.info("%s is already finished with this config: nothing to do", out)
        return {**Dataset(out).stats, "skipped": True}
    try:
        if n == 0:
            raise UserError(f"{dataset} holds no images to deduplicate")
        thumbs = np.ascontiguousarray(arrays["thumbs"])
        codes, keys, meta = _hash(ds, thumbs, config, out / HASH_DIR, progress)
        t0 = time.perf_counter()
        result = find_duplicates(codes, keys, thumbs, config.search)
        t_search = time.perf_counter() - t0
        dup_of = result.duplicate_of
        # Drops the input already recorded (corrupt records) stay counted and listed.
        carried = 0 if writer.position else _carry_drops(writer, dataset)
        bar = tqdm(total=n, initial=writer.position, desc="write", unit="img",
                   disable=not progress, dynamic_ncols=True)
        sources = {k: ds.array(k) for k in arrays}  # whole memory maps: copied file to file
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
        pictures = arrays.get("images", arrays["thumbs"])
        _review_sheet(writer.path("review.png"), pictures, manifest, dup_of,
                      config.review_pairs, config.seed)
        groups = result.groups()
        sizes = Counter(len(v) + 1 for v in groups.values())
        summary = {
            "removed": int((dup_of >= 0).sum()), "groups": len(groups),
            "group_sizes": {str(k): v for k, v in sorted(sizes.items())},
            "largest_group": max(sizes) if sizes else 1,
            "candidates": result.candidates, "confirmed": result.confirmed,
            "carried_drops": carried, "trained": meta.get("trained"),
            "autoencoder_loss": meta.get("loss"), "device": meta.get("device"),
            "train_seconds": meta.get("train_seconds"),
            "hash_seconds": meta.get("hash_seconds"), "search_seconds": round(t_search, 3),
        }
    except BaseException:
        writer.abort()
        raise
    return writer.finish(**summary)


def _carry_drops(writer: DatasetWriter, dataset: Path) -> int:
    """Copy the input's drop records (e.g. corrupt records) into the output's drop files."""
    count = 0
    for path in sorted(dataset.glob("*.jsonl")):
        if path.name == "manifest.jsonl":
            continue
        for rec in read_jsonl(path):
            rest = {k: v for k, v in rec.items() if k not in ("key", "reason")}
            writer.drop(rec["key"], rec.get("reason", "rejected"), file=path.stem, **rest)
            count += 1
    return count


def _warm_up_torch(device: str) -> threading.Thread:
    """Import torch and start CUDA (unless ``device`` is cpu) in a background thread, while
    the extraction's worker processes decode and this process mostly waits on them.

    These fixed costs come before any training: importing torch takes ~2 s on the 2-core VM
    and a CUDA context a second or more. Measured on 5,000 records (VM): ``dedup lsun``
    14.9 s before, 12.5-13.9 s after; there the imports compete with the two decoding
    processes for the two cores, so more cores hide them whole. Any failure here is
    ignored: the same steps run again in the foreground, where an error is reported.
    """
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
               extract_config=None, progress: bool = True) -> dict[str, Any]:
    """Extract an LSUN source once into ``out/extracted`` (cached, resumable), then dedup it."""
    from pipeline.extract import ExtractConfig, extract

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / EXTRACTED_DIR).exists() \
            and not (out / "COMPLETE").exists() and not config.overwrite:
        raise UserError(f"output {out} is not empty and is not a dedup output; choose an "
                        "empty or new --out, or pass --overwrite")
    if config.device not in ("auto", "cpu"):
        # An explicit --device cuda is checked before decoding, not after hours of it (this
        # imports torch in the foreground: the warm-up below then finds it loaded).
        from pipeline.devices import resolve_device

        resolve_device(config.device)
    extract_config = extract_config or ExtractConfig(overwrite=config.overwrite)
    warm = _warm_up_torch(config.device)
    cache = out / EXTRACTED_DIR
    if extract_config.overwrite and is_dataset(cache):
        # --overwrite replaces a different result; an extraction of this very source with
        # these settings is still valid (and is the expensive part): keep it.
        same = json.loads(json.dumps(extract_config.identity(source), default=str))
        if Dataset(cache).config.get("config") == same:
            extract_config = replace(extract_config, overwrite=False)
    # Worker processes, not threads: the warm-up thread holds this process's GIL for
    # seconds at a time (module imports), which would stall decoding threads.
    ext = extract(source, cache, extract_config, progress=progress, threads=False)
    warm.join()
    stats = dedup(cache, out, config, progress, preserve=(EXTRACTED_DIR,))
    return {**stats, "extract_seconds": ext.get("seconds"),
            "extract_skipped": bool(ext.get("skipped"))}
