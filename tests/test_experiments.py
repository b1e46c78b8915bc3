"""The paper's experiments on a tiny run really trained on Fashion-MNIST (CPU, 32 px)."""

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
from dcgan.labelled import fashion_mnist, load_labelled, write_fashion_mnist
from dcgan.train import train
from demo.samples import encode
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = TrainConfig(resolution=32, nz=16, ngf=16, ndf=16, batch_size=32, steps=40,
                   device="cpu", log_every=20, sample_every=40, checkpoint_every=40)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fm32(tmp_path_factory) -> Path:
    """600 Fashion-MNIST training images as a 32 px dataset directory (with thumbs)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fm") / "fm32", 32, "train", 600)


@pytest.fixture(scope="module")
def run(fm32, tmp_path_factory) -> Path:
    """A real (tiny) training run: 40 steps of the trainer on the CPU."""
    out = tmp_path_factory.mktemp("runs") / "run"
    torch.set_num_threads(1)
    summary = train(fm32, out, TINY, progress=False)
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
def test_inception_features_separate_real_from_noise():
    path = default_inception_path()
    assert path is not None and path.is_file()  # the wheel's TorchScript file
    model = load_inception()
    assert not model.training
    fm = fashion_mnist("test", 32, 24).images
    noise = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    fa, fb = inception_features(model, fm[:12]), inception_features(model, fm[12:])
    fn = inception_features(model, noise)
    assert fa.shape == (12, 2048) and np.isfinite(fa).all()
    real_real, real_noise = distances(fa, fb), distances(fa, fn)
    assert 0 < real_real["fid"] < real_noise["fid"]
    assert real_real["kid_x1000"] < real_noise["kid_x1000"]


def test_missing_inception_is_one_line(run, fm32, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_inception(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a TorchScript"):
        load_inception(garbage)
    r = run_cli("fid", run, "--data", fm32, "--inception", tmp_path / "nope.pt", "--n", "4")
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_fid_command(run, fm32, tmp_path):
    # The real Inception on 4 + 4 images (each costs ~1 s or more on a shared CPU core).
    r = invoke("fid", run, "--data", fm32, "--n", 4, "--out", tmp_path / "fid.json",
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
    # Four rows (a, b, c, results) of nine columns (result + 8 noisy variants).
    cap = sheet.shape[0] // 4 - 66
    assert sheet.shape == (4 * (66 + cap) + 2, 9 * 66 + 2, 3)
    # The "mean a" tile is G(mean of the z of samples 1, 2, 3).
    from dcgan.sampling import generate, latents

    G, config = load_generator(run)
    z = latents(16, config, 0)
    mean_a = generate(G, z[[1, 2, 3]].mean(0, keepdim=True))[0]
    x0 = 2 + 8 * 66
    tile = sheet[2:66, x0:x0 + 64]
    import cv2

    assert np.abs(tile.astype(int) - cv2.resize(mean_a, (64, 64),
                                                interpolation=cv2.INTER_NEAREST)).max() <= 1


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
def test_filters_guided_backprop(run, fm32, tmp_path):
    from dcgan.filters import guided_backprop, guided_copy

    D, _ = load_discriminator(run)
    before = {k: v.clone() for k, v in D.state_dict().items()}
    g = guided_copy(D)
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in g.modules())
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in D.modules())
    images = fashion_mnist("train", 32, 32).images
    vis, channels = guided_backprop(D, images, features=3, per_feature=4)
    assert vis.shape == (12, 32, 32, 3) and channels == [0, 1, 2]
    assert vis.std() > 1  # real gradients, not flat grey
    assert all(torch.equal(before[k], v) for k, v in D.state_dict().items())
    r = invoke("filters", run, "--data", fm32, "--out", tmp_path / "f.png", "--features", 3,
               "--per-feature", 4, "--n", 64)
    assert r.exit_code == 0, r.output
    sheet = png(tmp_path / "f.png")
    assert sheet.shape[1] == 4 * 66 + 2 and sheet.shape[0] > 6 * 66  # 3 trained + 3 random rows


# -- features ---------------------------------------------------------------------------------
def test_labelled_folder(run, tmp_path):
    fm = fashion_mnist("test", 32, 40)
    for img, label in zip(fm.images, fm.labels):
        d = tmp_path / "two" / fm.classes[label % 2]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{len(list(d.iterdir()))}.png").write_bytes(encode(img, "png"))
    data = load_labelled(tmp_path / "two", 32)
    assert data.images.shape == (40, 32, 32, 3) and sorted(set(data.labels)) == [0, 1]
    from dcgan.features import FeaturesConfig, features_experiment

    D, _ = load_discriminator(run)
    res = features_experiment(D, 32, FeaturesConfig(str(tmp_path / "two"), 20, 20))
    assert res["train"] == 20 and res["test"] == 20 and res["classes"] == 2
    assert res["discriminator"]["accuracy"] >= 0.5  # two classes: chance is 0.5
    (tmp_path / "one" / "only").mkdir(parents=True)
    (tmp_path / "one" / "only" / "a.png").write_bytes(encode(fm.images[0], "png"))
    with pytest.raises(UserError, match="at least two class"):
        load_labelled(tmp_path / "one", 32)


def test_features_command(run, tmp_path):
    r = invoke("features", run, "--labels", 200, "--test", 200, "--out", tmp_path,
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "features.json").read_text())
    # ndf=16 at 32 px: blocks of 16, 32, 64 channels, each max-pooled to 4 x 4.
    assert res["discriminator"]["dims"] == (16 + 32 + 64) * 16
    assert res["pixels"]["dims"] == 32 * 32 * 3
    for k in ("discriminator", "random_discriminator", "pixels"):
        assert 0.4 < res[k]["accuracy"] <= 1.0  # 10 classes: chance is 0.1
    assert "discriminator" in r.output


@pytest.mark.slow  # ~5 min on 2 CPU cores: 800 training steps, then 3 x 2,000 images
def test_trained_discriminator_features_beat_pixels_with_1000_labels(tmp_path):
    """The paper's §5.1 claim on Fashion-MNIST (measured: 81.2% vs 77.4% pixels)."""
    from dcgan.features import FeaturesConfig, features_experiment

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
def test_memorization_command(run, fm32, tmp_path):
    r = invoke("memorization", run, "--data", fm32, "--out", tmp_path, "--n", 64,
               "--epochs", 20, "--rows", 4, "--k", 3)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "memorization.json").read_text())
    assert res["samples"] == 64 and res["training_images"] == 600
    assert res["distinct_training_codes"] > 50
    assert 0 <= res["key_collisions"] <= 64
    assert 0 <= res["nearest_hamming_generated"]["min"] <= 128
    # 40 steps of training make noise, far from every training image in pixels.
    assert res["nearest_pixel_rms_generated"]["min"] > res["nearest_pixel_rms_training"]["median"]
    assert png(tmp_path / "memorization.png").shape[1] == 4 * 66 + 2  # sample + 3 neighbours


def test_memorization_catches_a_copying_generator(run, fm32, tmp_path):
    """A 'generator' that returns training images must show up as exact hash matches."""
    from dcgan.memorization import MemorizationConfig, memorization
    from pipeline.dataset import Dataset

    images = torch.from_numpy(np.array(Dataset(fm32).images[:50])).permute(0, 3, 1, 2)

    class Copier(torch.nn.Module):
        def forward(self, z):
            return images[: len(z)].float() / 127.5 - 1

    _, config = load_generator(run)
    mc = MemorizationConfig(n=50, rows=4, k=2, epochs=20)
    res = memorization(Copier(), config, fm32, tmp_path, mc, progress=False)
    assert res["exact_code_matches"] == 50 and res["key_collisions"] == 50
    assert res["nearest_hamming_generated"]["median"] == 0
    assert res["nearest_pixel_rms_generated"]["median"] < 1


def test_fid_every_n_steps_during_training(fm32, tmp_path):
    """`train --fid-every`: FID/KID land in metrics.jsonl at those steps (real Inception)."""
    from dcgan.train import train

    run = tmp_path / "run"
    config = TINY.replace(steps=4, log_every=3, fid_every=2, fid_n=4, sample_every=4,
                          checkpoint_every=4)
    train(fm32, run, config, progress=False)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    by_step = {m["step"]: m for m in lines}
    assert sorted(by_step) == [2, 3, 4]  # log steps plus the FID steps
    for s in (2, 4):
        assert 1 < by_step[s]["fid"] < 2000 and np.isfinite(by_step[s]["kid_x1000"])
    assert "fid" not in by_step[3]
    assert (run / "loss.png").stat().st_size > 1000
