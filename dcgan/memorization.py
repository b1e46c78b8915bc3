"""Does the generator copy its training images? The paper's §6.1 argument, measured.

Generated samples are resized to the dedup stage's 32 x 32 thumbnails and hashed with its
denoising autoencoder (trained on the training data's thumbnails, or given with
``--model``). Reported: samples whose 32-bit bucket key equals a training image's (a hash
collision: what dedup would call a candidate duplicate), each sample's Hamming distance to
its nearest training image over the full 128-bit code and in pixels (RMS over the
thumbnail), and, as the yardstick, the same distances from held-out training images to their
nearest *other* training image. A sheet shows each sample beside its nearest training images
with the distances. On low-diversity data (Fashion-MNIST) the 128-bit hash is coarse (training
images share codes with each other): then the pixel distances carry the argument.

The verdict counts near-copies: samples nearer a training image than half the distance
within which 5% of training images find another training image. Being nearer the training
set *on median* than training images are to each other is not counted: flat or blurry
samples sit near many images in pixel space without copying any of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.outfiles import IMAGE_SUFFIXES, Outputs, save_json
from pipeline.sheets import save_sheet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemorizationConfig:
    n: int = 1000  # generated samples to hash
    k: int = 4  # nearest training images shown per sample on the sheet
    rows: int = 16  # samples on the sheet (those closest to the training set first)
    reference: int = 500  # training images whose nearest other image is the yardstick
    model: str | None = None  # a dedup autoencoder (.pt, or a dedup output folder) to reuse
    epochs: int | None = None  # autoencoder passes when none is given; None: ~300 steps
    seed: int = 0  # the samples' z and the reference subset


def training_thumbs(dataset: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(32 x 32 thumbnails, training images) of a dataset directory, read through
    ``Dataset``; thumbnails are made from the images when the dataset has none."""
    from pipeline.dataset import Dataset
    from pipeline.decode import THUMB, resize

    ds = Dataset(dataset)
    images = ds.images
    try:
        return ds.array("thumbs"), images
    except UserError as e:  # Dataset's answer for a dataset without that array
        log.info("%s: making 32 x 32 thumbnails from its images", e)
    return np.stack([resize(np.asarray(im), THUMB) for im in images]), images


def autoencoder_for(thumbs: np.ndarray, config: MemorizationConfig, device: str,
                    progress: bool):
    """The given dedup autoencoder, or one trained here on the training thumbnails."""
    from pipeline.dedup.autoencoder import AutoencoderConfig, load_autoencoder, train_autoencoder

    if config.model:
        path = Path(config.model)
        if path.is_dir():
            path = path / "hash" / "autoencoder.pt"
        return load_autoencoder(path, device)
    # More steps than dedup's 128: with too few, most code bits stay dead on a small
    # training set and every image hashes alike (measured on 1,000 Fashion-MNIST thumbnails:
    # 71 distinct codes after 32 steps, 159 after 120).
    ae = AutoencoderConfig(steps=300, epochs=config.epochs, seed=config.seed)
    return train_autoencoder(thumbs, ae, device=device, progress=progress)


def nearest_codes(query: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming k-NN of packed codes (faiss binary flat index): (distances, ids)."""
    import faiss

    index = faiss.IndexBinaryFlat(base.shape[1] * 8)
    index.add(np.ascontiguousarray(base))
    dist, ids = index.search(np.ascontiguousarray(query), min(k, len(base)))
    return dist, ids


def nearest_pixels(query: np.ndarray, base: np.ndarray, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN of thumbnails by pixel distance: (RMS difference per value 0..255, ids)."""
    import faiss

    def flat(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(x).reshape(len(x), -1), dtype=np.float32)

    index = faiss.IndexFlatL2(int(np.prod(base.shape[1:])))
    index.add(flat(base))
    dist, ids = index.search(flat(query), min(k, len(base)))
    return np.sqrt(np.maximum(dist, 0) / index.d), ids


def _summary(d: np.ndarray) -> dict[str, float]:
    return {"min": round(float(d.min()), 2), "p5": round(float(np.percentile(d, 5)), 2),
            "median": round(float(np.median(d)), 2), "mean": round(float(d.mean()), 2)}


def contrast(thumbs: np.ndarray) -> np.ndarray:
    """Each thumbnail's pixel standard deviation (0..255): low for flat or blurry images."""
    x = np.asarray(thumbs, np.float32).reshape(len(thumbs), -1)
    return x.std(axis=1)


CAVEAT = ("Nearest neighbours of whole 32x32 thumbnails find copies of whole images, not "
          "copied parts, shifted or flipped copies; and flat or blurry samples sit near many "
          "training images without copying any. Look at the sheet: a copy looks like its "
          "neighbour.")


def verdict(sample_rms: np.ndarray, training_rms: np.ndarray, sample_bits: np.ndarray,
            training_bits: np.ndarray, sample_contrast: np.ndarray,
            training_contrast: np.ndarray) -> dict[str, Any]:
    """Copies or not, from the nearest-training-image distances of samples and of training
    images (to their nearest other one) in pixels (RMS) and code bits (Hamming), with the
    reason in words and the caveat.

    A near-copy is a sample nearer a training image (in pixels) than half the distance
    within which 5% of training images find another one; copies are claimed when their share
    is more than twice the share of training images that close to another (near-duplicates
    in the data).
    """
    threshold = max(1.0, 0.5 * float(np.percentile(training_rms, 5)))
    copies = int((sample_rms < threshold).sum())
    share, data_share = copies / len(sample_rms), float((training_rms < threshold).mean())
    found = copies > 0 and share > 2 * data_share
    counted = (f"{copies} of {len(sample_rms)} samples ({share:.1%}) are within pixel RMS "
               f"{threshold:.1f} of a training image")
    if found:
        reason = (f"{counted}, against {data_share:.1%} of training images that close to "
                  "another training image.")
    else:
        reason = counted + (f", no more than the {data_share:.1%} of training images that "
                            "close to another one (near-duplicates in the data)."
                            if copies else ".")
        med = [float(np.median(x)) for x in (sample_rms, training_rms, sample_bits,
                                             training_bits)]
        c_s, c_t = float(np.median(sample_contrast)), float(np.median(training_contrast))
        if med[0] < med[1] or med[2] < med[3]:
            reason += (f" Samples are nearer the training set on median (pixel RMS "
                       f"{med[0]:.1f}, Hamming {med[2]:.0f}) than training images are to each "
                       f"other ({med[1]:.1f}, {med[3]:.0f}), but "
                       + (f"they have less contrast (pixel std {c_s:.1f} vs {c_t:.1f}): flat "
                          "or blurry images are near many images, and hash alike, without "
                          "copying any." if c_s < 0.8 * c_t else
                          "none is a near-copy: look at the sheet for partial copies."))
        else:
            reason += (f" Samples are as far from the training set (median pixel RMS "
                       f"{med[0]:.1f}) as training images are from each other ({med[1]:.1f}).")
    return {"copies_found": found, "near_copies": copies,
            "copy_threshold_rms": round(threshold, 2),
            "training_near_copy_rate": round(data_share, 4),
            "summary": ("copies found: the generator reproduces training images" if found
                        else "no copies found"),
            "reason": reason, "caveat": CAVEAT}


def memorization(G, gconfig: Any, dataset: str | Path, out: str | Path,
                 config: MemorizationConfig = MemorizationConfig(), device: str = "cpu",
                 progress: bool = True) -> dict[str, Any]:
    """Hash samples and training images; report collisions, nearest neighbours and a
    verdict; write the sheet and the numbers (``out``: the sheet's image file with a .json
    beside it, or a folder for memorization.png and memorization.json)."""
    from dcgan.sampling import generate_images
    from pipeline.decode import THUMB, resize
    from pipeline.dedup.autoencoder import hash_thumbs
    from pipeline.dedup.hashing import hamming

    outs = Outputs.resolve(out, "memorization.png", IMAGE_SUFFIXES)
    json_path = outs.companion("memorization.json")
    outs.claim([outs.main, json_path])
    thumbs, images = training_thumbs(dataset)
    if len(thumbs) < 2:
        raise UserError(f"{dataset} holds {len(thumbs)} image(s): too few to compare with")
    model = autoencoder_for(thumbs, config, device, progress).to(device)
    samples = generate_images(G, config.n, gconfig, device, config.seed)
    sample_thumbs = np.stack([resize(s, THUMB) for s in samples])
    train_codes, train_keys = hash_thumbs(model, np.asarray(thumbs))
    codes, keys = hash_thumbs(model, sample_thumbs)
    train_keys, keys = train_keys[:, 0], keys[:, 0]  # the primary 32-bit key (the design's)

    collide = np.isin(keys, train_keys)
    dist, _ = nearest_codes(codes, train_codes, 1)
    pix, ids = nearest_pixels(sample_thumbs, thumbs, max(config.k, 1))
    # Yardstick: held-out training images against the rest (the 2nd neighbour skips itself).
    rng = np.random.default_rng(config.seed)
    ref = rng.choice(len(thumbs), min(config.reference, len(thumbs)), replace=False)
    ref_thumbs = np.asarray(thumbs)[ref]
    ref_dist, _ = nearest_codes(train_codes[ref], train_codes, 2)
    ref_pix, _ = nearest_pixels(ref_thumbs, thumbs, 2)
    ref_keys = np.array([np.count_nonzero(train_keys == train_keys[i]) > 1 for i in ref])
    judged = verdict(pix[:, 0], ref_pix[:, 1], dist[:, 0], ref_dist[:, 1],
                     contrast(sample_thumbs), contrast(ref_thumbs))

    # The sheet: samples closest to a training image first, each beside its nearest ones
    # (by pixels), captioned with the RMS pixel difference and the Hamming distance.
    order = np.argsort(pix[:, 0], kind="stable")[:config.rows]
    tiles, captions = [], []
    for i in order:
        tiles.append(samples[i])
        captions.append(f"#{i}" + (" KEY" if collide[i] else ""))
        ham = hamming(codes[i], train_codes[ids[i]])
        for j in range(ids.shape[1]):
            tiles.append(np.asarray(images[ids[i, j]]))
            captions.append(f"d{pix[i, j]:.0f} h{ham[j]}")
    bits = train_codes.shape[1] * 8
    title = [f"Memorization check (paper 6.1): {judged['summary']}.",
             f"Each row: a generated sample (#id; KEY: its 32-bit hash key equals a training "
             f"image's), then its {ids.shape[1]} nearest training images, nearest first. "
             f"dN: RMS pixel difference (0-255) of the 32x32 thumbnails; hN: Hamming distance "
             f"of the {bits}-bit codes. The {len(order)} of {config.n} samples nearest the "
             f"training set are shown.",
             f"Yardstick: a training image's nearest other is at median "
             f"d{np.median(ref_pix[:, 1]):.0f} h{np.median(ref_dist[:, 1]):.0f}; "
             f"near-copies are below d{judged['copy_threshold_rms']:.1f}."]
    outs.ready()
    save_sheet(tiles, outs.main, ncol=ids.shape[1] + 1, captions=captions,
               cell=max(64, samples.shape[1]), title=title)
    result = {
        "sheet": str(outs.main), "json": str(json_path),
        "shown": [int(i) for i in order],  # the sheet's rows: sample ids, nearest first
        "samples": int(config.n), "training_images": int(len(thumbs)),
        "code_bits": int(bits),
        "distinct_training_codes": int(len(np.unique(train_codes, axis=0))),
        "key_collisions": int(collide.sum()),
        "exact_code_matches": int((dist[:, 0] == 0).sum()),
        "nearest_hamming_generated": _summary(dist[:, 0]),
        "nearest_hamming_training": _summary(ref_dist[:, 1]),
        "nearest_pixel_rms_generated": _summary(pix[:, 0]),
        "nearest_pixel_rms_training": _summary(ref_pix[:, 1]),
        "contrast_generated": _summary(contrast(sample_thumbs)),
        "contrast_training": _summary(contrast(ref_thumbs)),
        "training_key_collision_rate": round(float(ref_keys.mean()), 4),
        "generated_key_collision_rate": round(float(collide.mean()), 4),
        "verdict": judged,
    }
    save_json(result, json_path)
    return result
