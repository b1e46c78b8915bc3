"""Face stage benchmark: detection quality on hand-checked package photos, and throughput.

Quality: recall at IoU >= 0.4 and false detections, on the photos in
``tests/data/faces/boxes.json`` (scikit-image, scikit-learn and Debian opencv-doc photos),
plus "scaled copies": each face photo shrunk so its faces are 44-80 px and pasted into a
face-free scene (group-photo-sized faces). Throughput: photos/s on JPEGs of 500-2000 px
(package photos rescaled), ``detect_faces`` against a plain single-process loop that reads
each file and runs OpenCV's Haar cascade with its default parameters, measured in this run.

    python benchmarks/faces.py [--photos 24] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.face_eval import evaluate, load_annotations, load_photo  # noqa: E402
from demo.samples import encode  # noqa: E402
from pipeline.face_detectors import DetectorSpec, build_detector  # noqa: E402
from pipeline.faces import FacesConfig, crop_face, detect_faces  # noqa: E402
from pipeline.sources import open_source  # noqa: E402


class PlainHaar:
    """What a first script does: default cascade, default parameters, full resolution."""

    def __init__(self):
        import cv2

        self.c = cv2.CascadeClassifier(cv2.data.haarcascades +
                                       "haarcascade_frontalface_default.xml")

    def detect(self, rgb):
        import cv2

        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        return [type("D", (), {"box": tuple(b)}) for b in self.c.detectMultiScale(grey)]


def scaled_copies(photos, ann, rng):
    """Face photos shrunk (faces 44-80 px) and pasted into face-free scenes."""
    import cv2

    negatives = [r for r, a in ann.items() if not a["faces"] and not a.get("small")]
    out_img, out_ann = {}, {}
    for k, ref in enumerate([r for r, a in ann.items() if a["faces"]] * 2):
        faces = ann[ref]["faces"]
        s = rng.uniform(44, 80) / min(f[2] for f in faces)
        small = cv2.resize(photos[ref], None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        scene = cv2.resize(photos[negatives[k % len(negatives)]], (900, 650),
                           interpolation=cv2.INTER_AREA)
        small = small[:650, :900]
        h, w = small.shape[:2]
        y, x = int(rng.integers(0, 651 - h)), int(rng.integers(0, 901 - w))
        scene[y:y + h, x:x + w] = small
        key = f"{ref}@{k}"
        out_img[key] = scene
        out_ann[key] = {"faces": [[f[0] * s + x, f[1] * s + y, f[2] * s, f[3] * s]
                                  for f in faces
                                  if (f[0] + f[2]) * s <= w and (f[1] + f[3]) * s <= h]}
    return out_img, out_ann


def tilted_copies(photos, ann, rng):
    """Face photos turned by +-8 to 12 degrees, mirrored, darker or brighter, and shrunk
    so faces are 40-120 px: heads as they come in group photos."""
    import cv2

    out_img, out_ann = {}, {}
    for ref in [r for r, a in ann.items() if a["faces"]]:
        img = photos[ref]
        h, w = img.shape[:2]
        for k, (angle, flip, gain) in enumerate([(8, 0, 1.0), (-8, 1, 1.0), (0, 1, 0.55),
                                                 (0, 0, 1.5), (12, 0, 0.8), (-12, 1, 1.2)]):
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            x = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
            x = np.clip(x * gain, 0, 255).astype(np.uint8)
            faces = []
            for f in ann[ref]["faces"]:
                cx, cy = m @ np.array([f[0] + f[2] / 2, f[1] + f[3] / 2, 1.0])
                faces.append([cx - f[2] / 2, cy - f[3] / 2, f[2], f[3]])
            if flip:
                x = np.ascontiguousarray(x[:, ::-1])
                faces = [[w - f[0] - f[2], *f[1:]] for f in faces]
            s = rng.uniform(40, 120) / min(f[2] for f in faces)
            if s < 1:
                x = cv2.resize(x, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
                faces = [[v * s for v in f] for f in faces]
            out_img[f"{ref}/{k}"], out_ann[f"{ref}/{k}"] = x, {"faces": faces}
    return out_img, out_ann


def quality(detector, photos, ann) -> tuple[dict, float]:
    t = time.perf_counter()
    found = {r: [list(d.box) for d in detector.detect(photos[r])] for r in ann}
    return evaluate(found, ann), time.perf_counter() - t


def make_folder(root: Path, n: int, rng) -> int:
    """``n`` JPEGs (q90) of package photos rescaled to a long side of 500-2000 px."""
    import cv2

    refs = list(load_annotations())
    pixels = 0
    for i in range(n):
        img = load_photo(refs[i % len(refs)])
        side = rng.uniform(500, 2000)
        s = side / max(img.shape[:2])
        img = cv2.resize(img, None, fx=s, fy=s,
                         interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
        (root / f"{i:03d}.jpg").write_bytes(encode(img, "jpeg", 90))
        pixels += img.shape[0] * img.shape[1]
    return pixels


def plain_loop(root: Path, threads: int) -> float:
    """Photos/s of the plain loop: read, detect at full resolution, crop each face."""
    import cv2

    cv2.setNumThreads(threads)
    det = PlainHaar()
    files = sorted(root.glob("*.jpg"))
    t = time.perf_counter()
    for f in files:
        img = cv2.imread(str(f))[..., ::-1]
        for d in det.detect(img):
            crop_face(img, d.box, 64)
    return len(files) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    import cv2

    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    if not args.skip_quality:
        quality_table(rng)
    throughput_table(args, rng)


def quality_table(rng) -> None:
    ann = load_annotations()
    photos = {r: load_photo(r) for r in ann}
    copies, copies_ann = scaled_copies(photos, ann, rng)
    tilted, tilted_ann = tilted_copies(photos, ann, rng)
    print(f"Quality: {len(ann)} hand-checked photos "
          f"({sum(len(a['faces']) for a in ann.values())} faces >= 40 px, "
          f"{sum(not a['faces'] for a in ann.values())} photos without faces); "
          f"{len(copies)} scaled copies ({sum(len(a['faces']) for a in copies_ann.values())} "
          f"faces of 44-80 px); {len(tilted)} tilted copies "
          f"({sum(len(a['faces']) for a in tilted_ann.values())} faces of 40-120 px, turned "
          "+-8-12 deg, mirrored, darker/brighter). IoU >= 0.4, one thread.\n")
    print("| detector | recall | false / photo without faces | false, all photos | "
          "recall, scaled copies | false, scaled copies | recall, tilted | false, tilted | "
          "seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [("plain Haar (default cascade, 1.1/3, full res)", PlainHaar()),
            ("tuned Haar, upright only (alt2, 1.2/5, equalised)",
             build_detector(DetectorSpec(min_face=40, rotations=()))),
            ("tuned Haar, default (+ passes turned 15 deg, eye-confirmed)",
             build_detector(DetectorSpec(min_face=40)))]
    for name, det in rows:
        q, t1 = quality(det, photos, ann)
        c, t2 = quality(det, copies, copies_ann)
        r, t3 = quality(det, tilted, tilted_ann)
        print(f"| {name} | {q['recall']:.3f} | {q['false_per_photo_without_faces']:.3f} | "
              f"{q['false_detections']} | {c['recall']:.3f} | {c['false_detections']} | "
              f"{r['recall']:.3f} | {r['false_detections']} | {t1 + t2 + t3:.1f} |")



def throughput_table(args, rng) -> None:
    import cv2

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        root.mkdir()
        pixels = make_folder(root, args.photos, rng)
        print(f"\nThroughput: {args.photos} JPEGs, 500-2000 px long side "
              f"({pixels / args.photos / 1e6:.2f} Mpx mean), min-size 64 (faces searched "
              "down to 48 px), 64 px crops.\n")
        base = plain_loop(root, 1)
        base_mt = plain_loop(root, 0)
        cv2.setNumThreads(1)
        print("| run | photos/s | vs plain loop |")
        print("|---|---|---|")
        print(f"| plain single-process loop (1 OpenCV thread) | {base:.2f} | 1.00x |")
        print(f"| plain single-process loop (OpenCV's own threads) | {base_mt:.2f} | "
              f"{base_mt / base:.2f}x |")
        for tilt in (True, False):
            spec = DetectorSpec() if tilt else DetectorSpec(rotations=())
            for w in sorted({1, args.workers}):
                out = Path(tmp) / f"out{w}{tilt}"
                stats = detect_faces(open_source(root), out,
                                     FacesConfig(detector=spec, workers=w), progress=False)
                rate = stats.read / stats.seconds
                print(f"| detect-faces{'' if tilt else ' --no-tilt'}, {w} worker"
                      f"{'s' if w > 1 else ''} | {rate:.2f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
