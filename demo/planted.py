"""Real photos with planted quality issues, for the quality benchmark and the tests.

Clean images are random views of photos that ship with packages (scikit-image, scikit-learn
and, where installed, Debian's opencv-doc), cropped and scaled down (never up: upscaling is
itself blur) to realistic sizes and encoded as JPEG, WebP or PNG. Each planted image is another
random view with one issue applied the way cameras and the web make it. The photos are split
in two halves by source photo, so rules tuned on one half are judged on photos never seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from demo.samples import OPENCV_DATA, package_photos

ISSUE_KINDS = ("dark", "bright", "blurry", "low_information", "grayscale", "small",
               "odd_aspect")
WORK = 128  # blur strengths are given in pixels at this short side (quality.WORK_SIDE)
MIN_SIDE = 72  # short side of every view but the shrunk ones (above the training 64)

# Each half holds some hard clean photos: naturally dark (hubble, rocket, flower, night-like),
# bright (ihc on white), low-saturation or soft ones. scikit-image's colorwheel is a drawing,
# not a photo, and is left out.
_HALVES = ({"astronaut", "chelsea", "hubble_deep_field", "china", "immunohistochemistry",
            "camera", "moon", "grass"},
           {"coffee", "rocket", "retina", "flower", "motorcycle", "coins", "gravel", "brick"})
# Real photos among OpenCV's sample data (drawings, renders and screenshots left out; of each
# stereo or before/after pair only one). Its defocused and motion-blurred photos are left
# out too: they are genuinely blurry, so neither clean nor a planted issue.
_OPENCV_HALVES = (("apple.jpg", "board.jpg", "butterfly.jpg", "home.jpg", "leuvenA.jpg",
                   "orange.jpg", "rubberwhale1.png", "starry_night.jpg", "sudoku.png",
                   "aloeL.jpg", "chicky_512.png"),
                  ("baboon.jpg", "building.jpg", "fruits.jpg", "left.jpg", "messi5.jpg",
                   "pca_test1.jpg", "squirrel_cls.jpg", "stuff.jpg", "aero1.jpg",
                   "ela_original.jpg", "graf1.png"))
# Studio shots on a white backdrop among OpenCV's sample data, in neither half: a clean class
# of the tuning half only (the demo's scenes called them over-exposed; see docs/quality.md).
STUDIO = ("smarties.png", "cards.png", "ml.png")


@dataclass
class Item:
    """One benchmark image: its encoded bytes, the truth ('clean', an issue or 'corrupt')."""

    data: bytes
    truth: str
    photo: str  # the source photo's name
    detail: str  # how it was made, e.g. 'ev-3.6 webp75'


def photo_halves() -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """Two disjoint lists of (name, RGB uint8 or single-channel uint8 for grey photos)."""
    import cv2
    from skimage import data

    photos = {name: img for name, img in package_photos() if name != "colorwheel"}
    photos["motorcycle"] = data.stereo_motorcycle()[0]
    for name in ("camera", "moon", "coins", "grass", "gravel", "brick"):
        photos[name] = getattr(data, name)()
    halves: tuple[list, list] = ([], [])
    for half, names in enumerate(_HALVES):
        halves[half].extend((n, photos[n]) for n in sorted(names) if n in photos)
    for half, names in enumerate(_OPENCV_HALVES):
        for name in names:
            path = OPENCV_DATA / name
            img = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
            if img is not None:
                halves[half].append((name, np.ascontiguousarray(img[..., ::-1])))
    return halves


def _view(img: np.ndarray, rng: np.random.Generator, aspect: float, short: int | None = None
          ) -> np.ndarray:
    """A random crop of long/short ``aspect`` (either orientation), maybe flipped, scaled
    down to a short side of ``short`` (default: a random realistic size, never upscaled)."""
    import cv2

    h, w = img.shape[:2]
    if rng.random() < 0.3:  # portrait
        cw = min(w, h / aspect)
        ch = cw * aspect
    else:
        ch = min(h, w / aspect)
        cw = ch * aspect
    frac = rng.uniform(0.45, 1.0)
    ch, cw = max(1, int(ch * frac)), max(1, int(cw * frac))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = np.ascontiguousarray(img[y:y + ch, x:x + cw])
    if rng.random() < 0.5:
        crop = np.ascontiguousarray(crop[:, ::-1])
    native = min(ch, cw)
    if short is None:  # LSUN's 256, or a random size up to the crop's own
        short = 256 if rng.random() < 0.4 else int(rng.uniform(0.5, 1.0) * native)
        short = max(min(short, native), min(native, 72))
    s = short / native
    size = (max(1, round(cw * s)), max(1, round(ch * s)))
    if size == (cw, ch):
        return crop
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)


def _encode(img: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """JPEG (q 70-95), WebP (q 70-90) or PNG, as photo collections hold them."""
    import cv2

    u = rng.random()
    if u < 0.5:
        fmt, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))]
    elif u < 0.9:
        fmt, params = ".webp", [cv2.IMWRITE_WEBP_QUALITY, int(rng.integers(70, 91))]
    else:
        fmt, params = ".png", []
    arr = img if img.ndim == 2 else img[..., ::-1]
    ok, buf = cv2.imencode(fmt, np.ascontiguousarray(arr), params)
    assert ok
    return buf.tobytes(), f"{fmt[1:]}{params[1] if params else ''}"


def _to_linear(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float32) / 255
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _to_srgb(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin, 0, 1)
    x = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.round(x * 255).astype(np.uint8)


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(img[..., None], 3, -1)) if img.ndim == 2 else img


def plant(issue: str, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Apply ``issue`` to an RGB view; returns the image and how it was made."""
    import cv2

    short = min(img.shape[:2])
    if issue in ("dark", "bright"):  # exposure error, in stops from an averaged metering
        lin = _to_linear(img)
        metered = 0.18 / max(float(lin.mean()), 1e-4)
        ev = -rng.uniform(3, 5.5) if issue == "dark" else rng.uniform(1.7, 3.5)
        return _to_srgb(lin * metered * 2 ** ev), f"ev{ev:+.1f}"
    if issue == "blurry":  # 2-5 px at the working scale: out of focus, or camera shake
        s = rng.uniform(2, 5) * short / WORK
        u = rng.random()
        if u < 0.4:
            return cv2.GaussianBlur(img, (0, 0), s), f"gauss{s * WORK / short:.1f}"
        if u < 0.7:  # a disc of radius 2s (the same standard deviation as the Gaussian)
            r = max(1, round(2 * s))
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            return cv2.filter2D(img, -1, k.astype(np.float32) / k.sum()), \
                f"defocus{s * WORK / short:.1f}"
        n = max(3, round(3.5 * s)) | 1  # a line of length 3.5s (the same deviation along it)
        k = np.zeros((n, n), np.float32)
        k[n // 2] = 1
        rot = cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5), rng.uniform(0, 180), 1)
        k = cv2.warpAffine(k, rot, (n, n))
        return cv2.filter2D(img, -1, k / k.sum()), f"motion{s * WORK / short:.1f}"
    if issue == "low_information":  # near-uniform: contrast cut to 0-6 %, slight noise
        c, sigma = rng.uniform(0, 0.06), rng.uniform(0.5, 3)
        mean = img.reshape(-1, 3).mean(0)
        level = rng.uniform(0.25, 0.75) * 255 / max(mean.mean(), 1)
        base = np.clip(mean * level, 0, 255)
        out = base + c * (img - mean) + rng.normal(0, sigma, img.shape)
        return np.clip(np.round(out), 0, 255).astype(np.uint8), f"contrast{c:.2f}+noise{sigma:.1f}"
    if issue == "grayscale":  # desaturated: R=G=B (kept as 3 channels or one)
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), "desaturated"
    raise ValueError(issue)


def make_set(half: int, seed: int = 0, n_clean: int = 400, n_issue: int = 60,
             n_corrupt: int = 3) -> list[Item]:
    """The planted set of one half of the photos (clean, each issue, corrupt), in random order."""

    rng = np.random.default_rng([seed, half])
    photos = photo_halves()[half]
    colour = [(n, p) for n, p in photos if p.ndim == 3]
    grey = [(n, p) for n, p in photos if p.ndim == 2]
    items = []

    def pick(pool):
        name, img = pool[int(rng.integers(len(pool)))]
        return name, img

    def take(img, aspect, short=None):  # a view, at least MIN_SIDE unless shrunk on purpose
        for _ in range(100):
            v = _view(img, rng, aspect, short)
            if short is not None or min(v.shape[:2]) >= MIN_SIDE:
                break
        return v

    for _ in range(n_clean):
        name, img = pick(colour)
        view = take(img, rng.uniform(1, 16 / 9))
        data, enc = _encode(view, rng)
        items.append(Item(data, "clean", name, f"{view.shape[1]}x{view.shape[0]} {enc}"))
    for issue in ISSUE_KINDS:
        for i in range(n_issue):
            name, img = pick(colour)
            if issue == "grayscale" and grey and i % 2:  # a black-and-white photograph
                name, img = pick(grey)
            if issue == "small":
                view, how = take(img, rng.uniform(1, 16 / 9), int(rng.integers(16, 64))), "shrunk"
            elif issue == "odd_aspect":
                view, how = take(img, rng.uniform(2.3, 6)), "strip"
            else:
                view = take(img, rng.uniform(1, 16 / 9))
                view, how = (view, "grey photo") if view.ndim == 2 else plant(issue, view, rng)
            if view.ndim == 2 and rng.random() < 0.5:
                view = _rgb(view)  # grey kept as R=G=B colour
            data, enc = _encode(view, rng)
            ch = "1ch" if view.ndim == 2 else "3ch"
            items.append(Item(data, issue, name,
                              f"{how} {view.shape[1]}x{view.shape[0]} {ch} {enc}"))
    for i in range(n_corrupt):
        name, img = pick(colour)
        data, enc = _encode(_view(img, rng, 4 / 3), rng)
        bad = (data[:len(data) // 2], b"", rng.bytes(2000))[i % 3]
        items.append(Item(bad, "corrupt", name, ("truncated", "empty", "random bytes")[i % 3]))
    order = rng.permutation(len(items))
    return [items[i] for i in order]


def make_tiles(half: int) -> list[Item]:
    """Clean scenes made as the demo makes them (``demo.run.build_scene_db``): every
    non-flat tile of each colour photo of ``half`` on 1x1 to 4x4 grids, scaled to a short
    side of 256 and encoded as WebP 75; on the tuning half, the ``STUDIO`` shots too.

    Tiles are harder than the views of ``make_set``: a corner of the night sky, a tile that is
    all white backdrop, a small tile enlarged (itself soft at the working scale).
    """
    import cv2

    from demo.neardup import tiles
    from demo.samples import encode

    photos = [(n, p) for n, p in photo_halves()[half] if p.ndim == 3]
    if half == 0:
        for name in STUDIO:
            img = cv2.imread(str(OPENCV_DATA / name), cv2.IMREAD_COLOR)
            if img is not None:
                photos.append((name, np.ascontiguousarray(img[..., ::-1])))
    items = []
    for name, photo in photos:
        for i, t in enumerate(tiles(photo, (1, 2, 3, 4), min_side=96)):
            s = 256 / min(t.shape[:2])
            img = cv2.resize(t, (round(t.shape[1] * s), round(t.shape[0] * s)),
                             interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
            items.append(Item(encode(img, "webp", 75), "clean", name, f"tile {i}"))
    return items
