"""OpenCV face detectors behind one small interface: RGB photo in, boxes and scores out.

``HaarDetector`` (the default) uses the frontal-face cascade that ships with OpenCV 4.x
(``cv2.data.haarcascades``), as the paper's face set did; ``YuNetDetector`` runs OpenCV's
DNN face detector from a user-supplied ONNX file (``cv2.FaceDetectorYN``). Nothing is
downloaded. Detectors are described by a picklable ``DetectorSpec`` and built with
``build_detector`` once per worker process, never in default arguments.

Both detect on a downscaled copy when the photo is larger than the smallest face wanted
needs, and map boxes back to source pixels. Haar's turned passes warp copies of the photo;
OpenCV cannot warp a side of 32,767 px or more (a panorama), so such copies are turned in
overlapping windows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.errors import UserError

DETECTORS = ("haar", "yunet")
TURNED_FACE = 24  # turned passes: smallest face in the turned copy, px
EYES = "haarcascade_eye_tree_eyeglasses.xml"  # confirms hits on turned copies
WARP_LIMIT = 32767  # OpenCV's warpAffine (remap) refuses images with a side this long
WARP_WINDOW = 16384  # side of the windows turned separately in larger detection copies


@dataclass(frozen=True)
class Detection:
    """A face box in source-image pixels, with the detector's confidence."""

    box: tuple[int, int, int, int]  # x, y, w, h
    score: float  # Haar: the last cascade stage's weight (levelWeights); YuNet: probability


class FaceDetector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Detection]: ...


@dataclass(frozen=True)
class DetectorSpec:
    """Which detector to build in each worker, and how to run it (picklable)."""

    kind: str = "haar"  # 'haar' or 'yunet'
    model: str | None = None  # yunet: path of the ONNX file (face_detection_yunet_*.onnx)
    cascade: str = "haarcascade_frontalface_alt2.xml"  # haar: file in cv2.data.haarcascades
    scale_factor: float = 1.2  # haar: image pyramid step
    min_neighbors: int = 5  # haar: overlapping raw hits a face needs
    detect_face: int = 36  # smallest face, in detection-copy pixels (copy scaled to fit)
    min_face: int = 40  # smallest face looked for, in source pixels (the stage: 3/4 min_size)
    max_side: int = 0  # cap on the detection copy's longer side (0: none)
    rotations: tuple[float, ...] = (15.0, -15.0)  # haar: extra passes on turned copies (deg)
    score_threshold: float = 0.5  # yunet: candidates below are not reported at all

    def check(self) -> None:
        """Raise ``UserError`` for a spec that cannot be built (before any work starts)."""
        if self.kind not in DETECTORS:
            raise UserError(f"unknown detector {self.kind!r}; choose one of {DETECTORS}")
        if self.kind == "yunet":
            if not self.model:
                raise UserError("--detector yunet needs --model face_detection_yunet.onnx "
                                "(nothing is downloaded)")
            if not Path(self.model).is_file():
                raise UserError(f"model file {self.model} does not exist")
        if self.kind == "haar":
            import cv2

            if not (Path(cv2.data.haarcascades) / self.cascade).is_file() and \
                    not Path(self.cascade).is_file():
                raise UserError(f"Haar cascade {self.cascade} not found")
        build_detector(self)  # a file that is not a model fails here, with one line


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x, y, w, h] boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def build_detector(spec: DetectorSpec) -> FaceDetector:
    """The detector ``spec`` describes (call once per process)."""
    if spec.kind == "yunet":
        return YuNetDetector(spec)
    return HaarDetector(spec)


def detection_scale(shape: tuple[int, ...], spec: DetectorSpec) -> float:
    """Factor (<= 1) for the detection copy: faces of ``min_face`` px stay ``detect_face``."""
    s = min(1.0, spec.detect_face / spec.min_face)
    if spec.max_side:
        s = min(s, spec.max_side / max(shape[:2]))
    return s


def warpable_windows(img: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """(x, y, view) of overlapping windows of ``img`` that OpenCV can warp (sides under
    ``WARP_LIMIT``), or the whole image when it fits. Windows overlap by the short side
    (at most half a window), so a face fits whole in one of them."""
    h, w = img.shape[:2]
    if max(h, w) < WARP_LIMIT:
        yield 0, 0, img
        return
    size = WARP_WINDOW
    overlap = min(min(h, w), size // 2)

    def spans(n: int) -> list[slice]:
        if n < WARP_LIMIT:
            return [slice(0, n)]
        count = -(-(n - overlap) // (size - overlap))
        return [slice(a, a + size) for a in
                (min(i * (size - overlap), n - size) for i in range(count))]

    for ys in spans(h):
        for xs in spans(w):
            yield xs.start, ys.start, img[ys, xs]


def upright_view(grey: np.ndarray, cx: float, cy: float, side: float,
                 angle: float) -> np.ndarray:
    """The ``side`` px square centred on (cx, cy), turned by ``angle``, as 100 x 100 px.

    From an image too large to warp (``WARP_LIMIT``), the view is warped from the
    neighbourhood that holds its pixels (mirrored borders included): the same view within
    interpolation rounding.
    """
    import cv2

    x0 = y0 = 0
    if max(grey.shape) >= WARP_LIMIT:
        r = int(side) + 2  # the view reaches side / sqrt(2) from the centre, + interpolation
        (x0, x1), (y0, y1) = _reach(cx, r, grey.shape[1]), _reach(cy, r, grey.shape[0])
        grey, cx, cy = grey[y0:y1, x0:x1], cx - x0, cy - y0
    m = cv2.getRotationMatrix2D((cx, cy), angle, 100 / side)
    m[:, 2] += [50 - cx, 50 - cy]  # the face centre lands at (50, 50)
    return cv2.warpAffine(grey, m, (100, 100), borderMode=cv2.BORDER_REFLECT)


def _reach(c: float, r: int, n: int) -> tuple[int, int]:
    """The index range of a side of ``n`` px holding every pixel within ``r`` of ``c``,
    where positions past an end read the mirrored pixels (``BORDER_REFLECT``)."""
    lo, hi = int(c) - r, int(c) + r + 1
    return max(0, min(lo, 2 * n - hi)), min(n, max(hi, -lo))


def _downscale(img: np.ndarray, s: float) -> np.ndarray:
    import cv2

    if s >= 1.0:
        return img
    h, w = img.shape[:2]
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                      interpolation=cv2.INTER_AREA)


def _to_source(x: float, y: float, w: float, h: float, s: float,
               shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """A box on the detection copy, in source pixels, clipped to the image."""
    H, W = shape[:2]
    x0, y0 = max(0, round(x / s)), max(0, round(y / s))
    x1, y1 = min(W, round((x + w) / s)), min(H, round((y + h) / s))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


class HaarDetector:
    """OpenCV's Viola-Jones cascade on a grey, histogram-equalised, downscaled copy."""

    def __init__(self, spec: DetectorSpec):
        import cv2

        path = Path(spec.cascade)
        if not path.is_file():
            path = Path(cv2.data.haarcascades) / spec.cascade
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise UserError(f"cannot load Haar cascade {path}")
        self.eyes = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / EYES))
        self.spec = spec

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        import cv2

        spec = self.spec
        s = detection_scale(rgb.shape, spec)
        grey = cv2.cvtColor(_downscale(rgb, s), cv2.COLOR_RGB2GRAY)
        grey = cv2.equalizeHist(grey)
        side = max(1, round(spec.min_face * s))
        found = self._search(grey, side)
        # Tilted heads: search turned copies, smaller (faces from the cascade's own 24 px
        # window) and with a coarser pyramid to keep the cost down; map centres back.
        t = min(1.0, TURNED_FACE / side)
        for angle in spec.rotations:
            for x0, y0, window in warpable_windows(grey):
                h, w = window.shape
                m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, t)
                m[:, 2] -= [w * (1 - t) / 2, h * (1 - t) / 2]  # the turned copy's own origin
                turned = cv2.warpAffine(window, m, (round(w * t), round(h * t)),
                                        borderMode=cv2.BORDER_REFLECT)
                back = cv2.invertAffineTransform(m)
                for x, y, bw, bh, score in self._search(turned, round(side * t), 1.3):
                    cx, cy = back @ np.array([x + bw / 2, y + bh / 2, 1.0]) + [x0, y0]
                    box = (cx - bw / t / 2, cy - bh / t / 2, bw / t, bh / t)
                    if not self._confirmed(grey, cx, cy, bw / t, angle):
                        continue
                    if all(iou(box, f[:4]) <= 0.3 for f in found):  # upright hits win
                        found.append((*box, score))
        return [Detection(_to_source(x, y, w, h, s, rgb.shape), round(float(score), 3))
                for x, y, w, h, score in found]

    def _confirmed(self, grey: np.ndarray, cx: float, cy: float, side: float,
                   angle: float) -> bool:
        """An eye in the upper part of the face, turned upright and enlarged to 100 px so
        the eye cascade's 20 px window fits (turned passes only: measured to cut their false
        hits, e.g. a camera lens, while keeping tilted faces)."""
        face = upright_view(grey, cx, cy, side, angle)
        eyes = self.eyes.detectMultiScale(face[10:60], 1.1, 3, minSize=(12, 12),
                                          maxSize=(40, 40))
        return len(eyes) >= 1

    def _search(self, grey: np.ndarray, side: int,
                scale_factor: float = 0.0) -> list[tuple[float, ...]]:
        """(x, y, w, h, score) of the faces of at least ``side`` px in ``grey``."""
        spec = self.spec
        boxes, _, weights = self.cascade.detectMultiScale3(
            grey, scaleFactor=scale_factor or spec.scale_factor, minNeighbors=spec.min_neighbors,
            minSize=(side, side), outputRejectLevels=True)
        return [(*(float(v) for v in b), float(w))
                for b, w in zip(np.asarray(boxes).reshape(-1, 4),
                                np.asarray(weights).reshape(-1))]


class YuNetDetector:
    """OpenCV's YuNet CNN (``cv2.FaceDetectorYN``) from a user-supplied ONNX file."""

    def __init__(self, spec: DetectorSpec):
        import cv2

        try:
            self.net = cv2.FaceDetectorYN.create(str(spec.model), "", (320, 320),
                                                 spec.score_threshold, 0.3, 5000)
        except cv2.error as e:
            raise UserError(f"cannot load YuNet model {spec.model}: not a YuNet ONNX file "
                            f"({str(e).strip().splitlines()[-1][:120]})") from e
        self.spec = spec

    def detect(self, rgb: np.ndarray) -> list[Detection]:

        s = detection_scale(rgb.shape, self.spec)
        small = _downscale(rgb, s)
        self.net.setInputSize((small.shape[1], small.shape[0]))
        _, faces = self.net.detect(np.ascontiguousarray(small[..., ::-1]))  # BGR in
        if faces is None:
            return []
        return [Detection(_to_source(*f[:4], s, rgb.shape), round(float(f[-1]), 3))
                for f in faces]
