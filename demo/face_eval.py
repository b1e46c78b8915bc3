"""Detection quality on photos with hand-checked boxes: recall and false detections.

Annotations (``tests/data/faces/boxes.json``) name photos that ship with installed packages
(``skimage:astronaut``, ``opencv-data:messi5.jpg``, ...), so nothing is downloaded. A
detection matches a face at IoU >= 0.4 (one detection per face, greedy by IoU); faces under
40 px are listed as ``small`` and neither counted as misses nor as false detections.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from demo.samples import OPENCV_DATA
from pipeline.errors import UserError
from pipeline.face_detectors import iou

ROOTS = {"opencv-data": OPENCV_DATA,
         "opencv-html": Path("/usr/share/doc/opencv-doc/opencv4/html")}
ANNOTATIONS = Path(__file__).resolve().parent / "data" / "faces" / "boxes.json"


def photo_path(ref: str) -> Path | None:
    """The file behind ``root:name`` (None for photos that skimage/sklearn hold in code)."""
    root, _, name = ref.partition(":")
    if root in ROOTS:
        return ROOTS[root] / name
    if root == "sklearn":
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "images" / name
    if root == "skimage":
        import skimage.data

        matches = sorted(Path(skimage.data.__file__).parent.glob(f"{name}.*"))
        return matches[0] if matches else None
    raise ValueError(f"unknown photo root in {ref!r}")


def load_photo(ref: str) -> np.ndarray:
    """RGB uint8 pixels of an annotated photo."""
    from pipeline.decode import decode

    root, _, name = ref.partition(":")
    if root == "skimage":
        import skimage.data

        return np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
    path = photo_path(ref)
    if path is None or not path.is_file():
        raise UserError(f"annotated photo {ref} is not installed ({path})")
    return decode(path.read_bytes())


def load_annotations(path: str | Path = ANNOTATIONS,
                     available_only: bool = True) -> dict[str, dict]:
    """``{ref: {"faces": [...], "small": [...]}}``; photos not installed are skipped."""
    photos = json.loads(Path(path).read_text())["photos"]
    if available_only:
        photos = {r: a for r, a in photos.items()
                  if r.startswith("skimage:") or (p := photo_path(r)) and p.is_file()}
    return photos


def match(truth: list[list[float]], found: list[list[float]],
          threshold: float = 0.4) -> tuple[int, list[int]]:
    """(faces matched, indices of unmatched detections), greedy by IoU."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth)
                    for j, f in enumerate(found)), reverse=True)
    used_t, used_f = set(), set()
    for v, i, j in pairs:
        if v < threshold:
            break
        if i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
    return len(used_t), [j for j in range(len(found)) if j not in used_f]


def score_photo(annotation: dict, found: list[list[float]],
                threshold: float = 0.4) -> tuple[int, int, int]:
    """(faces, faces found, false detections) on one photo; ``small`` faces are ignored."""
    faces = annotation.get("faces", [])
    hits, extra = match(faces, found, threshold)
    small = annotation.get("small", [])
    false = [j for j in extra if not any(iou(s, found[j]) >= threshold for s in small)]
    return len(faces), hits, len(false)


def evaluate(boxes_by_photo: dict[str, list[list[float]]], annotations: dict[str, dict],
             threshold: float = 0.4) -> dict:
    """Recall on faces, false detections per face-free photo and per photo, misses listed."""
    faces = hits = false_neg = false_all = negatives = 0
    misses, false_on = [], []
    for ref, ann in annotations.items():
        n, h, f = score_photo(ann, boxes_by_photo.get(ref, []), threshold)
        faces, hits, false_all = faces + n, hits + h, false_all + f
        if n > h:
            misses.append(ref)
        if f:
            false_on.append(ref)
        if not ann.get("faces"):
            negatives += 1
            false_neg += f
    return {"photos": len(annotations), "faces": faces, "found": hits,
            "recall": round(hits / faces, 3) if faces else None,
            "photos_without_faces": negatives,
            "false_per_photo_without_faces": round(false_neg / negatives, 3)
            if negatives else None,
            "false_detections": false_all, "missed_on": misses, "false_on": false_on}
