"""The DCGAN networks: the paper's construction at 32, 64 and 128 px, init, loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dcgan.checkpoint import load_discriminator, load_generator, save_checkpoint
from dcgan.config import TrainConfig
from dcgan.models import Discriminator, Generator, build_models, sample_z, weights_init
from pipeline.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("res,blocks", [(32, 3), (64, 4), (128, 5)])
def test_shapes_range_and_features(res, blocks):
    g, d = Generator(nz=20, ngf=8, resolution=res), Discriminator(ndf=8, resolution=res)
    z = torch.rand(3, 20) * 2 - 1
    x = g(z)
    assert x.shape == (3, 3, res, res)
    assert torch.equal(x, g(z[:, :, None, None]))  # (N, nz) and (N, nz, 1, 1) agree
    assert x.abs().max() <= 1
    assert d(x).shape == (3,)
    feats = d.features(x)
    assert len(feats) == blocks
    assert [f.shape[-1] for f in feats] == [res // 2 ** (i + 1) for i in range(blocks)]
    assert [f.shape[1] for f in feats] == [8 * 2 ** i for i in range(blocks)]


@pytest.mark.parametrize("channels_last", [False, True])
def test_project_and_head_are_the_layers_they_replace(channels_last):
    """G's first layer and D's last run as matrix products in the model's layout; they compute
    what the ConvTranspose2d / Conv2d modules (whose weights they use) compute, and keep the
    layout: a channels-last model gives channels-last activations and input gradients."""
    torch.manual_seed(0)
    g, d = Generator(nz=20, ngf=8), Discriminator(ndf=8)
    g.eval(), d.eval()  # running batch-norm statistics: the same function on every call
    z = torch.rand(3, 20) * 2 - 1
    x = torch.randn(3, 3, 64, 64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g_ref = g.main(z[:, :, None, None])
    h = x
    for block in d.blocks:
        h = block(h)
    d_ref = d.head(h).flatten()
    g, d = g.to(memory_format=fmt), d.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt).requires_grad_(True)
    seen = []  # the project step's output, as the batch norm after it receives it
    g.main[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    out = g(z)
    torch.testing.assert_close(out, g_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d(x), d_ref, rtol=1e-5, atol=1e-6)
    assert seen[0].shape == (3, 64, 4, 4) and seen[0].is_contiguous(memory_format=fmt)
    d(x).sum().backward()
    assert out.is_contiguous(memory_format=fmt) and x.grad.is_contiguous(memory_format=fmt)
    if channels_last:  # unambiguous (3 channels, 64 x 64): the layout really is channels-last
        assert not out.is_contiguous() and not x.grad.is_contiguous()


def test_paper_architecture_64():
    """§3: no pooling or fully connected layers; BN except G's output and D's input; ReLU in G
    with Tanh out; LeakyReLU(0.2) in D; D ends in a logit, not a sigmoid."""
    g, d = Generator(), Discriminator()
    for net in (g, d):
        kinds = {type(m) for m in net.modules()}
        assert not kinds & {nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.Sigmoid}
    g_layers = list(g.main)
    assert isinstance(g_layers[0], nn.ConvTranspose2d) and g_layers[0].in_channels == 100
    assert isinstance(g_layers[-1], nn.Tanh)
    assert isinstance(g_layers[-2], nn.ConvTranspose2d)  # no BN before the output
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g.modules()) == 4
    assert sum(isinstance(m, nn.ReLU) for m in g.modules()) == 4
    first = list(d.blocks[0])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in first)  # no BN on D's input
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 3
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))
    # The paper's widths: 1024 (4x4) -> 512 -> 256 -> 128 in G for ngf 128; 512 at 4x4 here.
    assert g_layers[0].out_channels == 512 and d.head.in_channels == 512


def test_weights_init_normal_002():
    torch.manual_seed(0)
    g, d = build_models(TrainConfig())
    convs = [m.weight for net in (g, d) for m in net.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    w = torch.cat([c.flatten() for c in convs])
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    bn = torch.cat([m.weight for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(bn.mean().item() - 1) < 5e-3 and abs(bn.std().item() - 0.02) < 5e-3
    fresh = nn.Conv2d(3, 3, 3)
    weights_init(fresh)
    assert fresh.weight.std().item() < 0.05  # not PyTorch's default kaiming init


def test_sample_z_distributions():
    u = sample_z(4000, TrainConfig(), torch.Generator().manual_seed(0))
    assert u.shape == (4000, 100) and u.min() >= -1 and u.max() <= 1
    assert abs(u.std().item() - 1 / 3 ** 0.5) < 0.01  # uniform on [-1, 1]
    n = sample_z(4000, TrainConfig(z_dist="normal"), torch.Generator().manual_seed(0))
    assert abs(n.std().item() - 1) < 0.01 and n.abs().max() > 1
    again = sample_z(4000, TrainConfig(), torch.Generator().manual_seed(0))
    assert torch.equal(u, again)


def test_load_generator_and_discriminator(tmp_path):
    config = TrainConfig(resolution=32, ngf=8, ndf=8, nz=10)
    g, d = build_models(config)
    path = save_checkpoint({"config": config.to_dict(), "step": 1, "G": g.state_dict(),
                            "D": d.state_dict()}, tmp_path / "checkpoints" / "step-00000001.pt")
    g2, c2 = load_generator(tmp_path)
    assert c2 == config and not g2.training
    z = torch.randn(2, 10)
    g.eval()
    assert torch.equal(g(z), g2(z))
    d2, _ = load_discriminator(path)
    d.eval()
    assert torch.equal(d(g(z)), d2(g(z)))
    save_checkpoint({"config": config.to_dict(), "G": g.state_dict()}, tmp_path / "gen.pt")
    assert load_generator(tmp_path / "gen.pt")[1] == config
    with pytest.raises(UserError, match="generator only"):
        load_discriminator(tmp_path / "gen.pt")


def test_config_validation_and_roundtrip():
    c = TrainConfig(resolution=128, z_dist="normal", lr=1e-3)
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(UserError, match="resolution"):
        TrainConfig(resolution=48)
    with pytest.raises(UserError, match="z-dist"):
        TrainConfig(z_dist="cauchy")
    with pytest.raises(UserError, match="unknown"):
        TrainConfig.from_dict({"learning_rate": 1})
