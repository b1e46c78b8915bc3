"""The trainer on real images (CPU, tiny widths): exact resume, learning, guards, the feed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dcgan.checkpoint import (
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_generator,
)
from dcgan.config import TrainConfig
from dcgan.data import DataOrder, Feed
from dcgan.models import build_models, sample_z
from dcgan.train import Trainer, TrainingDiverged, start_run, train
from pipeline.dataset import Dataset
from pipeline.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"resolution": 32, "nz": 16, "ngf": 8, "ndf": 8, "batch_size": 16, "device": "cpu",
        "log_every": 2, "sample_every": 2, "checkpoint_every": 2}


def _equal_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal_state(x, y) for x, y in zip(a, b))
    return a == b


def test_resume_is_bit_exact(data32, tmp_path):
    """6 steps == 3 steps + resume + 3 steps: weights, optimizers, samples, metrics."""
    full = TrainConfig(**TINY, steps=6)
    r = train(data32, tmp_path / "full", full, progress=False)
    assert r["status"] == "finished" and r["step"] == 6 and r["speed"] == "eager"
    train(data32, tmp_path / "half", full.replace(steps=3), progress=False)
    config = start_run(data32, tmp_path / "half", {"steps": 6}, resume=True,
                       open_data=False).config
    assert config == full  # the checkpoint's config, with the new total
    r2 = train(data32, tmp_path / "half", config, resume=True, progress=False)
    assert r2["steps_run"] == 3 and r2["step"] == 6
    a = load_checkpoint(find_checkpoint(tmp_path / "full"))
    b = load_checkpoint(find_checkpoint(tmp_path / "half"))
    assert a["step"] == b["step"] == 6
    for k in ("G", "D", "opt_g", "opt_d"):
        assert _equal_state(a[k], b[k]), k
    # 60 images, 16 a step: steps 3 and 6 straddle epochs, so the data order is tested too.
    png = "samples/step-00000006.png"
    assert (tmp_path / "full" / png).read_bytes() == (tmp_path / "half" / png).read_bytes()
    m_full = {m["step"]: m for m in map(json.loads, open(tmp_path / "full/metrics.jsonl"))}
    m_half = {m["step"]: m for m in map(json.loads, open(tmp_path / "half/metrics.jsonl"))}
    assert sorted(m_half) == [2, 3, 4, 6]
    for s in (2, 6):
        assert {k: v for k, v in m_full[s].items() if k != "img_per_s"} == \
            {k: v for k, v in m_half[s].items() if k != "img_per_s"}
    # A third run in the same place must resume, not silently start over (the CLI's words
    # are tested in test_train_cli.py).
    with pytest.raises(UserError, match="already holds a run.*continue it with `resume`"):
        train(data32, tmp_path / "full", full, progress=False)
    with pytest.raises(UserError, match="another config.*lr: 0.0002 -> 0.001"):
        train(data32, tmp_path / "full", full.replace(lr=1e-3, steps=8), resume=True,
              progress=False)


def test_run_directory(data32, tmp_path):
    run = tmp_path / "run"
    train(data32, run, TrainConfig(**{**TINY, "checkpoint_every": 1, "keep": 2}, steps=4),
          progress=False)
    assert json.loads((run / "config.json").read_text())["ngf"] == 8
    lines = [json.loads(x) for x in open(run / "metrics.jsonl")]
    assert [m["step"] for m in lines] == [2, 4]
    assert set(lines[0]) >= {"step", "loss_d", "loss_g", "d_real", "d_fake", "img_per_s"}
    assert 0 < lines[0]["d_real"] < 1 and 0 < lines[0]["d_fake"] < 1
    assert [p.name for p in list_checkpoints(run)] == ["step-00000004.pt", "step-00000003.pt"]
    import cv2

    grid = cv2.imread(str(run / "samples/step-00000004.png"))
    assert grid.shape == (8 * 33 + 1, 8 * 33 + 1, 3)  # 64 samples of 32 px, 1 px gaps
    assert cv2.imread(str(run / "loss.png")).shape == (400, 800, 3)
    ckpt = torch.load(run / "checkpoints/step-00000004.pt", weights_only=True)
    assert {"G", "D", "opt_g", "opt_d", "step", "rng", "config"} <= set(ckpt)
    g, config = load_generator(run / "generator.pt")
    assert torch.equal(next(iter(g.state_dict().values())), next(iter(ckpt["G"].values())))


def test_corrupt_checkpoint_falls_back_and_resume_recovers(data32, tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(**TINY, steps=4)
    train(data32, run, config, progress=False)
    newest = run / "checkpoints/step-00000004.pt"
    original = load_checkpoint(newest)
    newest.write_bytes(newest.read_bytes()[:1000])  # a torn file
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(newest)
    path, ckpt = latest_checkpoint(run)
    assert path.name == "step-00000002.pt" and ckpt["step"] == 2
    train(data32, run, config, resume=True, progress=False)  # redoes steps 3-4
    assert _equal_state(load_checkpoint(newest)["G"], original["G"])


def test_checkpoints_load_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"config": {}, "G": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="corrupt or not a checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(UserError, match="no checkpoint"):
        latest_checkpoint(tmp_path)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(data32, tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(**{**TINY, "log_every": 1}, steps=2)
    train(data32, run, config, progress=False)
    # Make the run blow up after its checkpoint: D's Adam steps become huge on resume.
    path = run / "checkpoints/step-00000002.pt"
    ckpt = load_checkpoint(path)
    for group in ckpt["opt_d"]["param_groups"]:
        group["lr"] = 1e30
    torch.save(ckpt, path)
    with pytest.raises(TrainingDiverged, match="NaN or infinite between steps 2 and 3.*"
                                               "last good checkpoint is kept.*step-00000002"):
        train(data32, run, config.replace(steps=8), resume=True, progress=False)
    assert list_checkpoints(run) == [path]
    assert latest_checkpoint(run)[1]["step"] == 2


def test_learning_moves_samples_towards_the_data(data32, tmp_path):
    """A short run moves the samples' colour statistics towards the photos'.

    The statistics are per-channel means, spreads and within-image spreads; a generator that
    does not learn stays at its initial (grey, flat) output and fails the check.
    """
    config = TrainConfig(resolution=32, ngf=16, ndf=16, batch_size=32, lr=1e-3, steps=120,
                         log_every=40, sample_every=1000, checkpoint_every=1000,
                         device="cpu")
    train(data32, tmp_path / "run", config, progress=False)

    def stats(x: np.ndarray) -> np.ndarray:  # x: N x H x W x 3 in [-1, 1]
        return np.concatenate([x.mean((0, 1, 2)), x.std((0, 1, 2)),
                               x.reshape(len(x), -1, 3).std(1).mean(0)])

    data = Dataset(data32).images.astype(np.float32) / 127.5 - 1
    target = stats(data)
    z = sample_z(256, config, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    g0 = build_models(config)[0].eval()
    g1 = load_generator(tmp_path / "run")[0]
    with torch.no_grad():
        before = stats(g0(z).permute(0, 2, 3, 1).numpy())
        after = stats(g1(z).permute(0, 2, 3, 1).numpy())
    d0, d1 = np.abs(before - target).sum(), np.abs(after - target).sum()
    assert d1 < 0.75 * d0, (before, after, target)
    assert (after[3:] > before[3:] + 0.05).all()  # colour spread grew in every channel


def test_data_order_epochs_and_ranks():
    order = DataOrder(10, 4, seed=3)
    seen = torch.cat([order.indices(s) for s in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:])  # a new permutation each epoch
    r0, r1 = DataOrder(10, 4, 3, 0, 2), DataOrder(10, 4, 3, 1, 2)
    assert torch.equal(torch.cat([r0.indices(7), r1.indices(7)]), order.indices(7))
    with pytest.raises(UserError, match="split evenly"):
        DataOrder(10, 5, 0, 0, 2)


def test_streamed_feed_matches_resident(data32):
    images = Dataset(data32).images
    order = DataOrder(len(images), 16, seed=1)
    resident = Feed(images, order, torch.device("cpu"), resident=True)
    streamed = Feed(images, order, torch.device("cpu"), resident=False)
    try:
        for s in [0, 1, 2, 3, 4, 9, 10, 2]:  # in order, then jumps (as after a resume)
            a, b = resident.batch(s), streamed.batch(s)
            assert a.shape == (16, 32, 32, 3) and torch.equal(a, b), s
    finally:
        streamed.close()


def test_training_on_a_streamed_feed_equals_resident(data32):
    """Data too large for the device streams from the memory map: same steps, same weights."""
    images = Dataset(data32).images
    config = TrainConfig(**TINY, steps=3)
    weights = []
    for resident in (True, False):
        t = Trainer(config, images, torch.device("cpu"), resident=resident)
        for _ in range(3):
            t.train_step()
        t.close()
        weights.append(t.G.state_dict())
    assert _equal_state(*weights)


def test_a_failure_in_g_half_of_the_step_leaves_d_trainable(data32):
    """G's half of the step freezes D's weights; if it raises (a torch.compile failure shows at
    the first call, and the trainer then goes on without compiling), D is trainable again and
    the next step trains both networks."""
    t = Trainer(TrainConfig(**TINY, steps=2), Dataset(data32).images, torch.device("cpu"))
    calls = []

    def failing_d(x):
        calls.append(1)
        if len(calls) == 3:  # D's third call in a step is G's half
            raise RuntimeError("compile failed")
        return t.D(x)

    t.d_run = failing_d
    with pytest.raises(RuntimeError, match="compile failed"):
        t.train_step()
    assert all(p.requires_grad for p in t.D.parameters())
    t.d_run = t.D
    before = [p.detach().clone() for p in (*t.D.parameters(), *t.G.parameters())]
    t.train_step()
    after = [*t.D.parameters(), *t.G.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    t.close()


def test_monitoring_intervals_scale_with_the_run():
    """Unset intervals give ~100-250 metrics lines, 8-20 grids and 4-10 checkpoints for any
    run length, in round numbers; given ones are kept."""
    assert TrainConfig(steps=150).intervals() == (1, 10, 20)
    assert TrainConfig(steps=10000).intervals() == (50, 500, 1000)  # the old fixed defaults
    assert TrainConfig(steps=600).intervals() == (5, 50, 100)
    for steps in (1, 7, 150, 999, 1001, 12345, 10**6):
        every = TrainConfig(steps=steps).intervals()
        assert steps <= 250 or 100 <= steps // every.log <= 250
        assert steps <= 20 or 8 <= steps // every.sample <= 20
        assert str(every.log).strip("0") in ("1", "2", "5")
    assert TrainConfig(steps=150, log_every=7).intervals() == (7, 10, 20)
    with pytest.raises(UserError, match="log_every must be at least 1"):
        TrainConfig(log_every=0)


def test_a_short_run_gives_a_readable_curve_and_several_grids(data32, tmp_path):
    """150 steps used to log 3 points and write one grid; loss.png has both panels."""
    run = tmp_path / "run"
    config = TrainConfig(**{k: v for k, v in TINY.items() if not k.endswith("every")},
                         steps=150)
    train(data32, run, config, progress=False)
    steps = [json.loads(x)["step"] for x in open(run / "metrics.jsonl")]
    assert steps == list(range(1, 151))
    assert len(list((run / "samples").glob("step-*.png"))) == 15
    assert [p.name for p in list_checkpoints(run)] == [
        "step-00000150.pt", "step-00000140.pt", "step-00000120.pt"]  # 3: every 20, the end
    saved = json.loads((run / "config.json").read_text())
    assert (saved["log_every"], saved["sample_every"], saved["checkpoint_every"]) == (1, 10, 20)
    import cv2

    png = cv2.imread(str(run / "loss.png"))[..., ::-1]  # RGB
    assert png.shape == (400, 800, 3)
    left, right = png[:, :400].reshape(-1, 3), png[:, 400:].reshape(-1, 3)

    def has(pixels: np.ndarray, rgb: tuple[int, int, int]) -> bool:
        return int((np.abs(pixels.astype(int) - rgb).sum(1) < 80).sum()) > 300

    from dcgan.run import _COLOURS

    assert has(left, _COLOURS["loss_d"]) and has(left, _COLOURS["loss_g"])
    assert has(right, _COLOURS["d_real"]) and has(right, _COLOURS["d_fake"])
    assert not has(left, _COLOURS["d_real"]) and not has(right, _COLOURS["loss_g"])


def test_round_ticks():
    from dcgan.run import _tick_label, nice_ticks

    assert nice_ticks(0, 150) == [0, 50, 100, 150]
    assert nice_ticks(0.04, 8.33) == [0, 2, 4, 6, 8, 10]
    assert [_tick_label(t) for t in nice_ticks(0, 1)] == ["0", "0.2", "0.4", "0.6", "0.8", "1"]
    assert _tick_label(20000.0) == "20k"


def test_resume_reads_the_checkpoint_once(data32, tmp_path, monkeypatch):
    """Resuming used to load the newest checkpoint three times before the first step."""
    import dcgan.checkpoint

    run = tmp_path / "run"
    train(data32, run, TrainConfig(**TINY, steps=2), progress=False)
    loads = []
    real = dcgan.checkpoint.load_checkpoint
    monkeypatch.setattr(dcgan.checkpoint, "load_checkpoint",
                        lambda *a, **k: (loads.append(a[0]), real(*a, **k))[1])
    r = train(data32, run, TrainConfig(**TINY, steps=2), resume=True, progress=False)
    assert r["steps_run"] == 0 and len(loads) == 1


def _imports(path) -> set[str]:
    """Modules ``path`` imports at run time (module level or in functions; not the ones
    under ``if TYPE_CHECKING``)."""
    import ast

    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_training_modules_import_no_cycle_and_speak_no_flags():
    """dcgan's training modules form no import cycle (models does not import checkpoint);
    their errors name arguments, not command-line flags."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "dcgan"
    mods = ["config", "models", "checkpoint", "trainer", "train", "run", "data", "ddp"]
    graph = {m: {i.split(".")[1] for i in _imports(root / f"{m}.py")
                 if i.startswith("dcgan.") and i.split(".")[1] in mods} for m in mods}
    # models and config import no other training module: the checkpoint, trainer and loop
    # build on them, not the other way round.
    assert "checkpoint" not in graph["models"] and not graph["config"] - {"models"}

    def reaches(a: str, b: str, seen: frozenset = frozenset()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph[a])

    assert not [m for m in mods if reaches(m, m)], graph
    import ast

    for m in ("config", "models", "checkpoint", "trainer", "train"):
        tree = ast.parse((root / f"{m}.py").read_text())
        said = [c.value for node in ast.walk(tree) if isinstance(node, ast.Raise) or (
                    isinstance(node, ast.Call) and ast.unparse(node.func).startswith("log."))
                for c in ast.walk(node) if isinstance(c, ast.Constant)
                and isinstance(c.value, str)]
        assert said and not [t for t in said if re.search(r"--[a-z]", t)], m
