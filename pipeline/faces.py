"""The face stage: any pile of photos to a dataset directory of square face crops.

As the paper's face set (section 4.2: OpenCV face detection on web photos, keeping the
sufficiently high-resolution faces): every photo is decoded once, faces are detected (on a
downscaled copy when the photo is larger than needed), overlapping detections are suppressed
and each face is kept as a square crop with a margin when its box is at least ``min_size``
source pixels. Every detection that is not kept goes to the ``rejected`` list with its box and a
reason (``too_small``, ``low_score``, ``overlap``); unreadable photos go there as ``corrupt``
(``too_large`` for decompression bombs). Each kept face's quality measures are those of its
crop region (what the trainer sees; width and height: the region's side in source pixels), in
the ``measures`` table, as extraction's. Contact sheets of kept and rejected faces are
written next to the dataset.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset import DatasetWriter, StageResult
from pipeline.decode import MAX_PIXELS, THUMB, DecodeError, decode, resize
from pipeline.errors import UserError, at_least
from pipeline.face_detectors import (
    Detection,
    DetectorSpec,
    FaceDetector,
    build_detector,
    iou,
)
from pipeline.quality import MEASURES, WORK_SIDE, measure_batch
from pipeline.runner import worker_state
from pipeline.sources import Source
from pipeline.stage import HOW, check_parallelism, identity, run_stage

log = logging.getLogger(__name__)

BORDERS = ("pad", "clamp")
PHOTO_REASONS = ("corrupt", "too_large")  # drops of a whole photo, not of a face


@dataclass(frozen=True)
class FacesConfig:
    detector: DetectorSpec = field(default_factory=DetectorSpec)  # which one (min_face: set)
    min_size: int = 64  # smallest face box side kept, in source pixels
    resolution: int = 64  # side of the stored square crops
    # 0.25 of the box side added on each side (a 1.5x square): Haar/YuNet boxes span brows
    # to chin, so this frames hair, chin and a little background, like aligned CelebA crops.
    margin: float = 0.25
    border: str = "pad"  # crops past the photo edge: 'pad' (mirror) or 'clamp' (slide inside)
    nms_iou: float = 0.3  # a detection overlapping a better one by more is dropped
    min_score: float = 0.0  # detections scoring lower are dropped (YuNet: try 0.9)
    max_pixels: int = MAX_PIXELS  # larger photos are refused unread (decompression bombs)
    # Faces on each contact sheet (kept.png, rejected.png); 0 = none.
    sheet: int = field(default=64, metadata=HOW)
    workers: int = field(default=0, metadata=HOW)  # detection processes; 0 = one per core
    chunk: int = field(default=8, metadata=HOW)  # photos per task handed to a worker
    rank: int = 0  # this shard's index when the source is split over machines
    world_size: int = 1  # number of shards (each writes its own dataset directory)

    def __post_init__(self) -> None:
        """Settings that cannot work are refused before any photo is read."""
        at_least(self, resolution=8, min_size=1)
        if self.border not in BORDERS:
            raise UserError(f"border must be one of {', '.join(BORDERS)} (got "
                            f"{self.border!r})", param="border")
        if not 0 <= self.margin <= 2:
            raise UserError(f"margin must be between 0 and 2 (got {self.margin})",
                            param="margin")
        check_parallelism(self)
        self.detector_spec().check()

    def detector_spec(self) -> DetectorSpec:
        """The detector, looking for faces down to 3/4 of ``min_size``: near misses are
        recorded as ``too_small``, and searching lower costs time for nothing kept."""
        return replace(self.detector, min_face=max(20, round(self.min_size * 0.75)))

    def identity(self) -> dict[str, Any]:
        """What determines the output (not how fast it is made)."""
        return {**identity(self), "detector": asdict(self.detector_spec())}


# -- the per-photo logic ---------------------------------------------------------------------
def square_box(box: tuple[int, int, int, int], margin: float, shape: tuple[int, ...],
               border: str) -> tuple[int, int, int]:
    """(x, y, side) of the square crop around ``box``; 'clamp' keeps it inside the photo."""
    x, y, w, h = box
    side = max(1, round(max(w, h) * (1 + 2 * margin)))
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    if border == "clamp":
        H, W = shape[:2]
        side = min(side, H, W)
        x0 = min(max(0, x0), W - side)
        y0 = min(max(0, y0), H - side)
    return x0, y0, side


def crop_face(img: np.ndarray, box: tuple[int, int, int, int], size: int,
              margin: float = 0.25, border: str = "pad") -> np.ndarray:
    """The face in ``box`` as a ``size`` x ``size`` crop (area-averaged when shrinking)."""
    import cv2

    H, W = img.shape[:2]
    x0, y0, side = square_box(box, margin, img.shape, border)
    x1, y1 = x0 + side, y0 + side
    crop = img[max(0, y0):min(H, y1), max(0, x0):min(W, x1)]
    pads = (max(0, -y0), max(0, y1 - H), max(0, -x0), max(0, x1 - W))
    if any(pads):
        # Mirror the photo into the missing part: no hard black bars for the GAN to learn.
        # REFLECT_101 cannot reach past one image width; replicate covers the rest.
        kind = cv2.BORDER_REFLECT_101 if max(pads) < min(crop.shape[:2]) else \
            cv2.BORDER_REPLICATE
        crop = cv2.copyMakeBorder(np.ascontiguousarray(crop), *pads, kind)
    return resize(crop, size)


def suppress(detections: list[Detection], iou_threshold: float) -> list[bool]:
    """Non-maximum suppression: True for detections kept (best score, then largest first)."""
    order = sorted(range(len(detections)),
                   key=lambda i: (-detections[i].score, -detections[i].box[2]))
    keep = [False] * len(detections)
    chosen: list[int] = []
    for i in order:
        if all(iou(detections[i].box, detections[j].box) <= iou_threshold for j in chosen):
            keep[i] = True
            chosen.append(i)
    return keep


@dataclass
class Face:
    """One detection: its box, score, crop at the stored resolution and drop reason (or None);
    a kept face also has its quality measures (a ``MEASURES`` row)."""

    box: tuple[int, int, int, int]
    score: float
    reason: str | None
    crop: np.ndarray
    measures: np.ndarray | None = None


def find_faces(img: np.ndarray, detector: FaceDetector, config: FacesConfig) -> list[Face]:
    """Detect, suppress overlaps, judge size and score, and crop every face of one photo."""
    dets = detector.detect(img)
    keep = suppress(dets, config.nms_iou)
    faces = []
    for d, k in zip(dets, keep):
        if not k:
            reason = "overlap"
        elif d.score < config.min_score:
            reason = "low_score"
        elif min(d.box[2], d.box[3]) < config.min_size:
            reason = "too_small"
        else:
            reason = None
        crop = crop_face(img, d.box, config.resolution, config.margin, config.border)
        faces.append(Face(tuple(int(v) for v in d.box), d.score, reason, crop))
    faces.sort(key=lambda f: (f.box[1], f.box[0]))  # reading order: stable, ids make sense
    kept = [f for f in faces if f.reason is None]
    # The crop region at the measures' working scale (never enlarged), measured together.
    sides = [square_box(f.box, config.margin, img.shape, config.border)[2] for f in kept]
    works = [crop_face(img, f.box, min(side, WORK_SIDE), config.margin, config.border)
             for f, side in zip(kept, sides)]
    for f, row in zip(kept, measure_batch(works, [(s, s) for s in sides])):
        f.measures = row
    return faces


@dataclass
class PhotoResult:
    key: str
    error: str | None  # a drop reason for the whole photo (corrupt, too_large)
    detail: str
    faces: list[Face]


def detect_chunk(task: tuple[int, int]) -> list[PhotoResult]:
    """Decode and search photos ``start..stop-1`` of the worker's source (the task function)."""
    state = worker_state()
    config: FacesConfig = state["config"]
    if "detector" not in state:  # built once per worker process
        state["detector"] = build_detector(config.detector_spec())
    out = []
    for key, data in state["source"].read_range(*task):
        try:
            if data is None:
                why = getattr(state["source"], "why_unreadable", None)
                raise DecodeError("corrupt", why(key) if why else "unreadable file")
            img = data if isinstance(data, np.ndarray) else decode(
                data, max_pixels=config.max_pixels)
        except DecodeError as e:
            out.append(PhotoResult(key, e.reason, e.detail, []))
            continue
        out.append(PhotoResult(key, None, "", find_faces(img, state["detector"], config)))
    return out


# -- the stage ----------------------------------------------------------------------------
def detect_faces(source: Source, out: str | Path, config: FacesConfig = FacesConfig(), *,
                 overwrite: bool = False, progress: bool = True,
                 engine: Any = None) -> StageResult:
    """Write the faces found in ``source`` as a dataset directory at ``out``.

    A rerun with the same source and config does nothing; an interrupted run resumes.
    ``engine``: a Ray engine to detect on (results come back here: the contact sheets are
    drawn from them).
    """
    res = config.resolution
    with DatasetWriter(out, "faces", config.identity(),
                       {"images": (res, res, 3), "thumbs": (THUMB, THUMB, 3),
                        "measures": ((len(MEASURES),), "float32")},
                       lineage=[source.describe()], inputs=source.paths,
                       overwrite=overwrite, columns={"measures": list(MEASURES)}) as writer:
        if writer.done:
            return writer.result
        sheets = Sheets(config.sheet, source.paths[0].name if source.paths else "the source",
                        config.min_size)

        def write(writer: DatasetWriter, chunk: list[PhotoResult]) -> int:
            for photo in chunk:
                write_photo(writer, photo, sheets)
            return len(chunk)

        workers = run_stage(writer, detect_chunk, write, {"source": source, "config": config},
                            len(source), config, desc="faces", unit="photo",
                            progress=progress, engine=engine)
        sheets.save(writer)
        return writer.finish(workers=workers)


def write_photo(writer: DatasetWriter, photo: PhotoResult, sheets: Sheets) -> None:
    """Add a photo's kept faces and drop the rest (or the unreadable photo), in order."""
    if photo.error:
        writer.drop(photo.key, photo.error, source=photo.key, detail=photo.detail)
        return
    for j, f in enumerate(photo.faces):
        meta = {"source": photo.key, "box": list(f.box), "score": f.score}
        key = f"{photo.key}#{j}"
        if f.reason is None:
            writer.add(key, {"images": f.crop, "thumbs": resize(f.crop, THUMB),
                             "measures": f.measures}, **meta)
        else:
            writer.drop(key, f.reason, **meta)
        sheets.add(f, photo.key)


class Sheets:
    """Collects the first kept and rejected crops of this run for the contact sheets."""

    def __init__(self, limit: int, source: str = "", min_size: int = 0):
        self.limit, self.source, self.min_size = limit, source, min_size
        self.kept: list[tuple[np.ndarray, str]] = []
        self.rejected: list[tuple[np.ndarray, str]] = []
        self.counts = {"kept": 0, "rejected": 0}

    def add(self, face: Face, photo: str) -> None:
        which = "kept" if face.reason is None else "rejected"
        self.counts[which] += 1
        faces = self.kept if face.reason is None else self.rejected
        if len(faces) < self.limit:
            faces.append((face.crop, Path(photo).name if face.reason is None else face.reason))

    def save(self, writer: DatasetWriter) -> None:
        from pipeline.sheets import save_sheet

        cell = max(96, writer.arrays_spec["images"][0][0])
        for which, faces, what in (
                ("kept", self.kept, f"box side >= {self.min_size} px; under each, its photo"),
                ("rejected", self.rejected, "under each, why: too_small, low_score or "
                                            "overlap")):
            if not faces:
                continue
            shown = (f"the first {len(faces)} of {self.counts[which]}"
                     if self.counts[which] > len(faces) else f"all {len(faces)}")
            save_sheet([c for c, _ in faces], writer.path(f"{which}.png"), cell=cell,
                       captions=[t for _, t in faces],
                       title=f"Faces {which} by detect-faces from {self.source}: {shown} "
                             f"({what}).")
