"""The filter stage on real photos with planted issues, through real codecs and a real LMDB:
every source kind, evidence in each rejected row, --drop and --flag-only, re-thresholding
without decoding, carried drops, reruns, datasets without a measures table, the CLI."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from demo.planted import _to_linear, _to_srgb
from demo.samples import encode, package_photos, write_lmdb
from pipeline.dataset import Dataset, DatasetWriter
from pipeline.decode import prepare, prepare_measured
from pipeline.errors import UserError
from pipeline.extract import ExtractConfig, extract
from pipeline.filter import FilterConfig, filter_dataset, filter_source
from pipeline.lsun import LsunSource
from pipeline.quality import ISSUES, MEASURES, RULES, WORK_SIDE, QualityConfig, measure_batch
from pipeline.sources import FolderSource, open_source

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = {n: p for n, p in package_photos()}
# Photos whose views are clean (no night sky, no drawing): what must be kept.
CLEAN = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")


def _view(img: np.ndarray, rng: np.random.Generator, short: int = 200,
          aspect: float = 4 / 3) -> np.ndarray:
    """A random crop (long side / short side ``aspect``, landscape) of 60-90% of the photo,
    scaled down to a short side of ``short``."""
    h, w = img.shape[:2]
    cw = int(w * rng.uniform(0.6, 0.9))
    ch = min(h, int(cw / aspect))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = img[y:y + ch, x:x + cw]
    s = short / ch
    return cv2.resize(crop, (round(cw * s), short), interpolation=cv2.INTER_AREA)


def _plant(issue: str, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A clear case of each issue (the benchmark covers the mild ones)."""
    if issue == "dark":  # -5 stops
        return _to_srgb(_to_linear(img) * 2.0 ** -5)
    if issue == "bright":  # +3 stops from an averaged metering
        lin = _to_linear(img)
        return _to_srgb(lin * 0.18 / lin.mean() * 2.0 ** 3)
    if issue == "blurry":  # 4 px at the 128 px working scale
        return cv2.GaussianBlur(img, (0, 0), 4 * min(img.shape[:2]) / WORK_SIDE)
    if issue == "low_information":  # a near-flat frame with sensor noise
        flat = np.full_like(img, 120) + 0.02 * (img.astype(np.float32) - 120)
        return np.clip(flat + rng.normal(0, 1.5, img.shape), 0, 255).astype(np.uint8)
    if issue == "grayscale":
        return np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, -1)
    if issue == "small":
        return cv2.resize(img, (48, 36), interpolation=cv2.INTER_AREA)
    if issue == "odd_aspect":  # the view is already a strip
        return img
    raise ValueError(issue)


def _items(seed: int, per_issue: int = 2, clean: int = 12) -> list[tuple[str, str, bytes]]:
    """(key, truth, encoded bytes): clean views and planted copies, JPEG/WebP/PNG."""
    rng = np.random.default_rng(seed)
    out = []
    fmts = ("jpeg", "webp", "png")
    for i in range(clean):
        img = _view(PHOTOS[CLEAN[i % len(CLEAN)]], rng)
        out.append((f"clean-{i:02d}", "clean", encode(img, fmts[i % 3], 90)))
    for issue in ISSUES:
        for j in range(per_issue):
            photo = PHOTOS[CLEAN[(j + len(issue)) % len(CLEAN)]]
            img = _view(photo, rng, 100, 4.0) if issue == "odd_aspect" else \
                _view(photo, rng, 256)
            out.append((f"{issue}-{j}", issue, encode(_plant(issue, img, rng), fmts[j % 3], 90)))
    return out


def _suffix(data: bytes) -> str:
    return {b"\xff\xd8": ".jpg", b"RI": ".webp", b"\x89P": ".png"}[data[:2]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Real image files: 12 clean, 2 of each issue, one truncated file. Keys -> truth."""
    root = tmp_path_factory.mktemp("filter") / "photos"
    root.mkdir()
    truth = {}
    for key, t, data in _items(0):
        name = key + _suffix(data)
        (root / name).write_bytes(data)
        truth[name] = t
    good = (root / "clean-00.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(good[: len(good) // 2])
    truth["cut.jpg"] = "corrupt"
    return root, truth


@pytest.fixture(scope="module")
def lmdb_db(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A real LMDB of the same kind of records plus a corrupt one."""
    items = _items(1)
    records = [(k.encode(), d) for k, _, d in items] + [(b"zz-corrupt", b"\x00" * 100)]
    path = write_lmdb(tmp_path_factory.mktemp("filter-lmdb") / "scene_train_lmdb", records)
    return path, {**{k: t for k, t, _ in items}, "zz-corrupt": "corrupt"}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, folder) -> Path:
    out = tmp_path_factory.mktemp("filter-ds") / "photos64"
    extract(FolderSource(folder[0]), out, progress=False)
    return out


def _check_output(out: Path, truth: dict[str, str], config: FilterConfig = FilterConfig()):
    """Every planted image dropped for its issue with its evidence; clean ones kept."""
    ds = Dataset(out)
    rules = config.rules
    rejected = {r["key"]: r for r in ds.drops("rejected")}
    for key, t in truth.items():
        if t == "clean":
            assert key in ds.keys, (key, rejected.get(key))
        elif t == "corrupt":
            assert rejected[key]["reason"] == "corrupt"
        elif t in rules.drop and not config.flag_only:
            r = rejected[key]
            measure, direction = RULES[t]
            assert r["reason"] == t and r["measure"] == measure, r
            assert (r["value"] < r["threshold"]) if direction == "below" else \
                (r["value"] > r["threshold"]), r
            assert r["flags"][0] == {"issue": t, "measure": measure, "value": r["value"],
                                     "threshold": r["threshold"]}
        else:  # an issue that does not drop: kept, with its flag
            row = ds.manifest[ds.keys.index(key)]
            assert t in [f["issue"] for f in row["flags"]], row
    stats = ds.stats
    assert stats["carried"] == {"corrupt": 1}
    assert set(stats["thresholds"]) == set(ISSUES) and stats["flag_only"] == config.flag_only
    for issue, rule in stats["thresholds"].items():
        assert (rule["measure"], rule["direction"]) == RULES[issue]
        assert isinstance(rule["limit"], float)
    assert stats["thresholds"]["blurry"]["limit"] == rules.max_blur  # < 50 images: absolute
    planted = [t for t in truth.values() if t in ISSUES]
    for issue in ISSUES:
        assert stats["flagged"][issue] >= planted.count(issue)
    # The kept rows' pixels and measures are the input's rows, copied.
    src = Dataset(ds.inputs[0]["path"])
    rows = [r["source_id"] for r in ds.manifest]
    for name in ("images", "thumbs", "measures"):
        assert np.array_equal(ds.array(name), src.array(name)[rows])
    assert ds.table("measures").keys() == MEASURES.keys()
    return ds


def test_folder_source_is_extracted_inside_the_output_then_filtered(folder, tmp_path):
    root, truth = folder
    r = filter_source(FolderSource(root), tmp_path / "out", progress=False)
    ds = _check_output(tmp_path / "out", truth)
    assert ds.inputs[0]["path"] == str((tmp_path / "out" / "extracted").resolve())
    assert r.dropped == {i: 2 for i in ISSUES} and r.kept == 12
    # a rerun finds both the extraction and the filter finished
    again = filter_source(FolderSource(root), tmp_path / "out", progress=False)
    assert again.skipped and again.extra["extract_skipped"]


def test_lsun_database_with_a_corrupt_record(lmdb_db, tmp_path, monkeypatch):
    path, truth = lmdb_db
    r = filter_source(LsunSource([path]), tmp_path / "out", progress=False)
    _check_output(tmp_path / "out", truth)
    assert r.extra["carried"] == {"corrupt": 1}
    # Other limits, same input: --overwrite re-thresholds from the stored table; no decoding.
    _no_decoding(monkeypatch)
    strict = FilterConfig(QualityConfig(max_blur=0.2))
    with pytest.raises(UserError) as e:
        filter_source(LsunSource([path]), tmp_path / "out", strict, progress=False)
    assert e.value.param == "overwrite" and "max_blur 0.44 -> 0.2" in str(e.value)
    r2 = filter_source(LsunSource([path]), tmp_path / "out", strict, overwrite=True,
                       progress=False)
    assert r2.extra["extract_skipped"] and r2.dropped["blurry"] > r.dropped["blurry"]


def _no_decoding(monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("decoded an image")

    for name in ("imdecode", "imread"):
        monkeypatch.setattr(cv2, name, refuse)


def test_dataset_directory_drop_subset_and_rethresholding(extracted, folder, tmp_path,
                                                          monkeypatch):
    _, truth = folder
    _no_decoding(monkeypatch)
    only = FilterConfig(QualityConfig(drop=("dark", "blurry")))
    r = filter_dataset(extracted, tmp_path / "out", only, progress=False)
    assert r.dropped == {"dark": 2, "blurry": 2}
    _check_output(tmp_path / "out", truth, only)
    # the input is untouched, and a rerun is a no-op
    assert Dataset(extracted).stats["kept"] == len(truth) - 1
    assert filter_dataset(extracted, tmp_path / "out", only, progress=False).skipped


def test_flag_only_keeps_everything_and_records_flags(extracted, folder, tmp_path):
    _, truth = folder
    config = FilterConfig(flag_only=True)
    r = filter_dataset(extracted, tmp_path / "out", config, progress=False)
    assert r.kept == len(truth) - 1 and r.dropped == {}
    ds = _check_output(tmp_path / "out", truth, config)
    assert ds.stats["drop"] == [] and ds.stats["dropped"] == {}
    by_key = dict(zip(ds.keys, ds.manifest))
    for key, t in truth.items():
        if t in ISSUES:
            flags = by_key[key]["flags"]
            assert flags[0]["issue"] == t and set(flags[0]) == {"issue", "measure", "value",
                                                                 "threshold"}
        elif t == "clean":
            assert by_key[key]["flags"] == []


def test_dataset_without_measures_is_measured_from_its_pixels(extracted, tmp_path, caplog,
                                                              monkeypatch):
    """A dataset written before the measures table (or by a stage that did not decode)."""
    src = Dataset(extracted)
    old = tmp_path / "old"
    with DatasetWriter(old, "extract", {"resolution": 64}, {"images": (64, 64, 3),
                                                            "thumbs": (32, 32, 3)}) as w:
        w.add_many(src.keys, {"images": src.images, "thumbs": src.array("thumbs")})
        w.advance(len(src))
        w.finish()
    _no_decoding(monkeypatch)
    with caplog.at_level(logging.WARNING, "pipeline"):
        r = filter_dataset(old, tmp_path / "out", progress=False)
    said = [m for m in caplog.messages if "no measures table" in m]
    assert len(said) == 1 and "\n" not in said[0] and r.extra["measured"] == "pixels"
    ds = Dataset(tmp_path / "out")
    table = ds.table("measures")
    assert np.isnan(table["width"]).all()  # the source size is unknown
    reasons = {d["key"]: d["reason"] for d in ds.drops("rejected")}
    # 64 px pixels: tone and colour issues are still found; size issues cannot be
    for issue in ("dark", "bright", "low_information", "grayscale"):
        assert [reasons.get(f"{issue}-{j}{s}") for j in range(2)
                for s in (".jpg", ".webp", ".png") if f"{issue}-{j}{s}" in src.keys] == \
            [issue, issue]
    assert not {"small", "odd_aspect"} & set(reasons.values())
    assert not any(k.startswith("clean") for k in reasons)
    caplog.clear()  # a rerun is a no-op: nothing measured again, nothing said
    with caplog.at_level(logging.WARNING, "pipeline"):
        assert filter_dataset(old, tmp_path / "out", progress=False).skipped
    assert not caplog.messages


def test_extraction_records_the_measures_of_each_crop(extracted, folder):
    root, _ = folder
    ds = Dataset(extracted)
    table = ds.table("measures")
    assert list(table) == list(MEASURES)
    for i, key in enumerate(ds.keys):
        data = (root / key).read_bytes()
        image, thumb = prepare(data, 64)
        image2, thumb2, work, size = prepare_measured(data, 64, WORK_SIDE)
        # The same training pixels as plain extraction, from WebP and PNG (a JPEG is
        # decoded at a DCT scale that keeps the 128 px the measures need, so its crop's
        # offset rounds differently).
        if not key.endswith(".jpg"):
            assert np.array_equal(image, image2) and np.array_equal(thumb, thumb2)
        assert np.array_equal(ds.images[i], image2)
        assert (table["width"][i], table["height"][i]) == size
        assert np.allclose(measure_batch([work], [size], bgr=True)[0],
                           ds.array("measures")[i])


def test_faces_record_the_measures_of_the_crop_region(tmp_path):
    from pipeline.faces import FacesConfig, detect_faces, square_box

    photo = PHOTOS["astronaut"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "astronaut.png").write_bytes(encode(photo, "png"))
    config = FacesConfig(sheet=0, workers=1)
    detect_faces(open_source(tmp_path / "in"), tmp_path / "faces", config, progress=False)
    ds = Dataset(tmp_path / "faces")
    assert len(ds) >= 1
    box = ds.manifest[0]["box"]
    side = square_box(box, config.margin, photo.shape, config.border)[2]
    table = ds.table("measures")
    assert table["width"][0] == table["height"][0] == side and table["aspect"][0] == 1
    r = filter_dataset(tmp_path / "faces", tmp_path / "clean", progress=False)
    assert r.kept == len(ds) and r.extra["measured"] == "table"


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """cli.main in this process (as the console script runs it): exit code, out, err."""
    import cli

    old = sys.argv
    sys.argv = ["cli.py", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_summary_dry_run_quiet_and_one_line_errors(extracted, folder, tmp_path, capsys):
    out = tmp_path / "out"
    p = _cli("filter", str(extracted), "--out", str(out), "--drop", "dark,small")
    assert p.returncode == 0, p.stderr
    line = p.stdout.strip()
    assert "\n" not in line and "dropped 4 (2 dark, 2 small)" in line
    assert "The input had already dropped 1 (1 corrupt)" in line and str(out) in line
    code, stdout, _ = _main(capsys, "filter", str(extracted), "--out", str(tmp_path / "dry"),
                            "--dry-run", "--max-blur", "0.5")
    assert code == 0 and '"max_blur": 0.5' in stdout and not (tmp_path / "dry").exists()
    assert '"resolution": 64' in stdout  # `small`: below the dataset's own image size
    extract(FolderSource(folder[0]), tmp_path / "p32", ExtractConfig(resolution=32),
            progress=False)
    code, stdout, _ = _main(capsys, "filter", str(tmp_path / "p32"), "--out",
                            str(tmp_path / "dry"), "--dry-run")
    assert code == 0 and '"resolution": 32' in stdout
    code, stdout, _ = _main(capsys, "filter", str(extracted), "--out", str(tmp_path / "q"),
                            "-q", "--flag-only")
    assert code == 0 and stdout == "" and Dataset(tmp_path / "q").stats["flag_only"]
    for args, says in (
            (["--drop", "dark,fuzzy"], "unknown issue 'fuzzy'"),
            (["--drop", ","], "--flag-only"),
            (["--bright-clip", "2"], "--bright-clip must be between 0 and 1"),
            (["--max-blur", "0.3"], "pass --overwrite"),
            (["--out", str(extracted / "inside")], "inside the input"),
    ):
        code, _, err = _main(capsys, "filter", str(extracted), "--out", str(out), *args)
        assert code == 2 and err.count("\n") == 1 and says in err, err
    code, _, err = _main(capsys, "filter", str(tmp_path / "missing"), "--out", str(out))
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
