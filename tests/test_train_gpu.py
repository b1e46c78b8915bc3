"""The CUDA fast path (skipped without a GPU): CUDA graph step, bf16, resident and streamed
feeds, resume into fused capturable optimizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcgan.checkpoint import TrainConfig, load_checkpoint, load_generator
from dcgan.data import DataOrder, Feed
from dcgan.train import Trainer, train
from demo.samples import package_photos, random_view
from pipeline.dataset import Dataset, DatasetWriter

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def data64(tmp_path_factory):
    from pipeline.decode import center_crop, resize

    out = tmp_path_factory.mktemp("data") / "photos64"
    photos = [p for _, p in package_photos()]
    rng = np.random.default_rng(0)
    w = DatasetWriter(out, "test", {"n": 512}, {"images": (64, 64, 3)})
    for i in range(512):
        w.add(str(i), {"images": resize(center_crop(random_view(photos[i % len(photos)], rng,
                                                                short_side=96)), 64)})
    w.finish()
    return out


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"ngf": 32, "ndf": 32, "batch_size": 64, "device": "cuda",
                          "log_every": 5, "sample_every": 20, "checkpoint_every": 10, **kw})


def test_graph_step_trains_and_resumes(data64, tmp_path):
    run = tmp_path / "run"
    r = train(data64, run, _config(steps=20), progress=False)
    assert r["speed"] == "graph" and r["step"] == 20  # the capture did not fall back
    assert all(np.isfinite(v) for k, v in r["metrics"].items() if k != "step")
    r2 = train(data64, run, _config(steps=30), resume=True, progress=False)
    assert r2["speed"] == "graph" and r2["step"] == 30 and r2["steps_run"] == 10
    ckpt = load_checkpoint(run / "checkpoints/step-00000030.pt")
    assert ckpt["opt_d"]["state"][0]["step"].item() == 30  # the fused optimizer went on
    g, _ = load_generator(run, device="cuda")
    assert g(torch.rand(4, 100, device="cuda") * 2 - 1).isfinite().all()


def _eight_steps(data64, speed: str) -> tuple[Trainer, dict[str, float]]:
    """A trainer at ``speed`` (fp32) after 8 steps, closed, and its mean metrics; it did not
    fall back to another speed."""
    t = Trainer(_config(speed=speed, amp=False), Dataset(data64).images, CUDA)
    for _ in range(8):
        t.train_step()
    metrics = t.read_metrics()
    t.close()
    assert t.speed == speed
    return t, metrics


def _assert_same_metrics(got: dict[str, float], eager: dict[str, float]) -> None:
    for k in eager:
        assert got[k] == pytest.approx(eager[k], rel=0.05, abs=0.02), k


def test_graph_matches_eager_losses(data64):
    """Replaying the captured step computes what the eager step computes."""
    _, eager = _eight_steps(data64, "eager")
    _, graph = _eight_steps(data64, "graph")
    _assert_same_metrics(graph, eager)


def test_streamed_feed_matches_resident_on_gpu(data64):
    images = Dataset(data64).images
    order = DataOrder(len(images), 128, seed=2, device=CUDA)
    resident = Feed(images, order, CUDA, resident=True)
    streamed = Feed(images, DataOrder(len(images), 128, seed=2), CUDA, resident=False)
    try:
        for s in [0, 1, 2, 3, 4, 5, 9, 1]:
            assert torch.equal(resident.batch(s), streamed.batch(s)), s
    finally:
        streamed.close()


def test_compile_speed_runs_compiled_and_matches_eager(data64):
    """``--speed compile``: torch.compile inside the CUDA graph, without falling back (it once
    failed on a channels-last stride assertion and fell back to a step that could not train
    D), computing what the eager step computes. Compiling takes tens of seconds."""
    _, eager = _eight_steps(data64, "eager")
    try:
        t, compiled = _eight_steps(data64, "compile")
    finally:
        torch._dynamo.reset()
    assert t.graph is not None and all(p.requires_grad for p in t.D.parameters())
    _assert_same_metrics(compiled, eager)
