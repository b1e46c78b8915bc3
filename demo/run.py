"""The end-to-end demo: every stage on photos that ship with Python packages, nothing downloaded.

1. An LSUN-format database (LMDB, WebP values, 40-hex keys) of random views of the package
   photos, with planted near-duplicates (re-encoded, rescaled, cropped, brightened,
   watermarked, byte-identical copies) and a corrupt record.
2. ``dedup lsun`` on it: extraction plus semantic-hash near-duplicate removal, then the
   quality ``filter``.
3. ``detect-faces`` on a folder of photos with and without faces.
4. ``train``: a short DCGAN run on the cleaned scenes, then a sample grid.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from demo.samples import OPENCV_DATA
from pipeline.dataset import Dataset, write_json
from pipeline.outputs import OutputDir, read_json

log = logging.getLogger(__name__)

# Photos with faces among Debian opencv-doc's examples (used when installed).
FACE_PHOTOS = ("messi5.jpg", "lena.jpg")


@dataclass(frozen=True)
class DemoConfig:
    scenes: int = 600  # distinct scene records in the generated LSUN database
    duplicates: float = 0.2  # near-duplicates planted, as a fraction of ``scenes``
    steps: int = 600  # DCGAN training steps on the cleaned scenes (about 1.5 min on 2 cores)
    batch_size: int = 64  # DCGAN batch (the paper's 128 is slow on a laptop CPU)
    resolution: int = 32  # training resolution (32 trains fastest on a CPU; 64 is the paper's)
    width: int = 32  # generator and discriminator widths (ngf, ndf)
    device: str = "auto"  # where the autoencoder and the DCGAN train: auto, cuda or cpu
    workers: int = 0  # decoding/detection processes; 0 = one per core
    seed: int = 0  # seed for the generated data and the training run


def build_scene_db(path: Path, config: DemoConfig) -> dict[str, Any]:
    """The LSUN-format database with planted near-duplicates; returns the ground truth.

    Scenes are non-overlapping tiles of the package photos (and OpenCV's sample photos when
    installed), so that no two scenes are near-duplicates except the planted ones.
    """
    import cv2

    from demo.neardup import KINDS, all_photos, near_duplicate, tiles
    from demo.samples import encode, lsun_key, write_lmdb

    rng = np.random.default_rng(config.seed)
    pool = [t for _, p in all_photos() for t in tiles(p, (1, 2, 3, 4), min_side=96)]
    chosen = rng.choice(len(pool), min(config.scenes, len(pool)), replace=False)
    records, planted, originals = [], {}, []
    for i in chosen:
        tile = pool[int(i)]
        scale = 256 / min(tile.shape[:2])  # LSUN's short side
        img = cv2.resize(tile, (round(tile.shape[1] * scale), round(tile.shape[0] * scale)),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        key, data = lsun_key(rng), encode(img, "webp", 75)
        records.append((key, data))
        originals.append((key, img, data))
    n_dup = int(round(config.duplicates * len(originals)))
    for j, i in enumerate(rng.choice(len(originals), n_dup, replace=False)):
        key, img, data = originals[int(i)]
        kind = KINDS[j % len(KINDS)]
        dup_key = lsun_key(rng)
        records.append((dup_key, near_duplicate(img, data, kind, rng)))
        planted[dup_key.decode()] = {"of": key.decode(), "kind": kind}
    records.append((b"0" * 40, b"RIFF\x10\x00\x00\x00WEBPVP8 truncated"))  # corrupt
    write_lmdb(path, records)
    return {"records": len(records), "scenes": len(originals), "planted": planted,
            "corrupt": 1}


PACKAGE_FACE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def face_photo_names() -> list[str]:
    """The files of the face folder: package photos, and OpenCV's where installed."""
    return [f"{n}.jpg" for n in PACKAGE_FACE_PHOTOS] + [
        n for n in FACE_PHOTOS if (OPENCV_DATA / n).is_file()]


def build_face_folder(path: Path) -> list[str]:
    """Photos with faces (astronaut, OpenCV's samples) and without (cat, coffee, rocket)."""
    from demo.samples import encode, package_photos

    path.mkdir(parents=True, exist_ok=True)
    photos = dict(package_photos())
    files = {f"{name}.jpg": encode(photos[name], "jpeg", 92) for name in PACKAGE_FACE_PHOTOS}
    files.update({name: (OPENCV_DATA / name).read_bytes() for name in FACE_PHOTOS
                  if (OPENCV_DATA / name).is_file()})
    for name, data in files.items():
        # Unchanged files are left alone: their times are the folder's identity, and a
        # rewrite would make detect-faces redo a finished stage.
        if not (path / name).is_file() or (path / name).read_bytes() != data:
            (path / name).write_bytes(data)
    return face_photo_names()


def run_demo(out: str | Path, config: DemoConfig = DemoConfig(),
             progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run every stage into ``out``; returns the report (also written as report.json).

    ``out`` is the demo's own folder: a rerun reuses every stage whose settings and inputs
    are unchanged and redoes the others; ``overwrite`` first deletes everything the demo
    wrote there, so that all of it is made again.
    """
    from dcgan.checkpoint import TrainConfig, list_checkpoints, load_generator
    from dcgan.sampling import sample
    from dcgan.train import train
    from pipeline.dedup.stage import DedupConfig, dedup_lsun
    from pipeline.extract import ExtractConfig
    from pipeline.faces import FacesConfig, detect_faces
    from pipeline.filter import FilterConfig, filter_dataset
    from pipeline.lsun import LsunSource
    from pipeline.quality import QualityConfig
    from pipeline.report import write_report
    from pipeline.sources import FolderSource

    times: dict[str, float] = {}
    mark = [time.monotonic()]

    def lap(name: str) -> None:
        now = time.monotonic()
        times[name] = round(now - mark[0], 1)
        mark[0] = now

    with OutputDir(out, "demo") as od:
        if overwrite:
            od.clear()
        out = od.root
        db = out / "lsun" / "demo_train_lmdb"
        truth_path = od.own("lsun/planted.json")
        settings = {"scenes": config.scenes, "duplicates": config.duplicates,
                    "seed": config.seed, "opencv_doc": OPENCV_DATA.is_dir()}
        truth = read_json(truth_path)
        # planted.json is written last (a half-built database is rebuilt), with the settings
        # that made the database (other settings make another one).
        if truth is None or truth.get("settings") != settings:
            truth_path.unlink(missing_ok=True)
            for name in ("lsun/demo_train_lmdb/data.mdb", "lsun/demo_train_lmdb/lock.mdb"):
                od.own(name).unlink(missing_ok=True)
            truth = {**build_scene_db(db, config), "settings": settings}
            write_json(truth_path, truth)
        lap("build data")

        scenes = od.own("scenes/")
        d = dedup_lsun(LsunSource([db]), scenes,
                       DedupConfig(device=config.device, seed=config.seed),
                       ExtractConfig(resolution=config.resolution, workers=config.workers),
                       overwrite=True, progress=progress)
        removed_keys = {r["key"] for r in Dataset(scenes).drops("duplicates")}
        planted = truth["planted"]
        # A planted copy counts as found when it, or the original it copies, was removed.
        found = sum(1 for k, v in planted.items()
                    if k in removed_keys or v["of"] in removed_keys)
        lap("dedup")

        # The demo trains at 32 px: a scene is `small` only below that.
        clean = od.own("clean/")
        q = filter_dataset(scenes, clean, FilterConfig(QualityConfig(
            resolution=config.resolution)), overwrite=True, progress=progress)
        lap("filter")

        photos = od.own("photos/")
        for name in face_photo_names():
            od.own(f"photos/{name}")
        build_face_folder(photos)
        faces = od.own("faces/")
        f = detect_faces(FolderSource(photos), faces,
                         FacesConfig(min_size=40, workers=config.workers), overwrite=True,
                         progress=progress)
        lap("faces")

        run = od.own("run/")
        tconfig = TrainConfig(resolution=config.resolution, ngf=config.width,
                              ndf=config.width, batch_size=config.batch_size,
                              steps=config.steps, seed=config.seed, device=config.device)
        if not q.skipped:  # new training data: a new run
            od.remove("run/")
        resume = bool(list_checkpoints(run))
        t = train(clean, run, tconfig, resume=resume, progress=progress)
        G, gconfig = load_generator(run)
        grid = sample(G, gconfig, od.own("samples.png"), n=64, seed=config.seed)["grid"]
        lap("train")

        page = od.own("report.html")
        od.own("report_files/")
        write_report([clean, faces], page)
        lap("report")

        report = {
            "out": str(out),
            "lsun": {"records": truth["records"], "planted_duplicates": len(planted),
                     "corrupt_planted": truth["corrupt"], "path": str(db),
                     "opencv_doc": settings["opencv_doc"]},
            "dedup": {"kept": d.kept, "removed": d.extra["removed"], "planted_found": found,
                      "dropped": {**d.extra.get("carried", {}), **d.dropped},
                      "review_sheet": str(scenes / "review.png"), "path": str(scenes)},
            "filter": {"kept": q.kept, "dropped": q.dropped, "path": str(clean)},
            "faces": {"photos": f.read, "faces_kept": f.kept, "dropped": f.dropped,
                      "sheet": str(faces / "kept.png"), "path": str(faces)},
            "train": {"steps": t.get("step"), "steps_run": t.get("steps_run"),
                      "device": t.get("device"),
                      "img_per_s": round(t.get("img_per_s", 0)), "samples": grid,
                      "loss_curve": str(run / "loss.png"), "path": str(run)},
            "report": str(page),
            "seconds": times,
        }
        write_json(od.own("report.json"), report)
    return report


def format_report(r: dict[str, Any]) -> str:
    """The report as a few lines a person reads."""
    d, q, f, t, s = r["dedup"], r["filter"], r["faces"], r["train"], r["seconds"]

    def drops(counts: dict[str, int] | None) -> str:
        return ", ".join(f"{n} {k}" for k, n in (counts or {}).items()) or "none"

    laps = ", ".join(f"{k} {v}s" for k, v in s.items())
    rate = f"{t['img_per_s']} img/s" if t.get("steps_run") else "already trained"
    note = [] if r["lsun"].get("opencv_doc") else [
        "   (Debian's opencv-doc is not installed: the demo used the package photos alone; "
        "`apt-get install opencv-doc` adds ~30 photos, more scenes and faces)"]
    return "\n".join([
        f"Demo finished in {sum(s.values()):.0f}s ({laps}).",
        f"1. LSUN database: {r['lsun']['records']} records, {r['lsun']['planted_duplicates']} "
        f"planted near-duplicates, {r['lsun']['corrupt_planted']} corrupt -> {r['lsun']['path']}",
        *note,
        f"2. dedup: kept {d['kept']}, removed {d['removed']} near-duplicates "
        f"({d['planted_found']} of the {r['lsun']['planted_duplicates']} planted), "
        f"dropped: {drops(d['dropped'])}.",
        f"   Review the removed/kept pairs: {d['review_sheet']}",
        f"3. filter: kept {q['kept']}, dropped for quality: {drops(q['dropped'])} -> "
        f"{q['path']}",
        f"4. detect-faces: {f['photos']} photos, {f['faces_kept']} "
        f"face{'' if f['faces_kept'] == 1 else 's'} kept, "
        f"dropped: {drops(f['dropped'])}. Faces: {f['sheet']}",
        f"5. train: {t['steps']} steps on {t['device']} ({rate}), on the filtered scenes. "
        f"Samples: {t['samples']}; losses: {t['loss_curve']}",
        "   (a few minutes of CPU training gives colour and layout, not scenes: the paper's "
        "samples take hours on a GPU)",
        f"6. report: every decision of the chain, in one page: {r['report']} (open it in a "
        "browser)",
    ])
