"""The model returns distributions of the right shapes and guards its variance."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Distribution

import vaekit
from vaekit import ConfigError, DataError
from vaekit.config import ModelConfig
from vaekit.model import VAE
from vaekit.model.posteriors import LOGVAR_MAX, LOGVAR_MIN

from conftest import tiny_model


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian-learned"])
def test_encode_and_decode_return_distributions(likelihood):
    model = tiny_model(likelihood)
    x = torch.rand(5, 1, 4, 4)
    qz_x = model.encode(x)
    assert isinstance(qz_x, Distribution)
    assert qz_x.batch_shape == (5,) and qz_x.event_shape == (3,)
    px_z = model.decode(qz_x.rsample())
    assert isinstance(px_z, Distribution)
    assert px_z.batch_shape == (5,) and px_z.event_shape == (1, 4, 4)
    assert px_z.log_prob(x).shape == (5,)


def test_log_variance_is_clamped_so_scales_stay_finite_and_positive():
    model = tiny_model()
    with torch.no_grad():
        model.encoder[-1].bias[3:] = 1e6
    std = model.encode(torch.rand(2, 1, 4, 4)).base_dist.scale
    assert torch.isfinite(std).all()
    torch.testing.assert_close(std, torch.full_like(std, torch.exp(torch.tensor(0.5 * LOGVAR_MAX)).item()))
    with torch.no_grad():
        model.encoder[-1].bias[3:] = -1e6
    std = model.encode(torch.rand(2, 1, 4, 4)).base_dist.scale
    assert (std > 0).all()
    torch.testing.assert_close(std, torch.full_like(std, torch.exp(torch.tensor(0.5 * LOGVAR_MIN)).item()))


def test_wrong_input_shape_names_the_expected_shape():
    with pytest.raises(DataError, match=r"input has shape \(2, 1, 5, 5\), expected \(batch, 1, 4, 4\)"):
        tiny_model().encode(torch.rand(2, 1, 5, 5))


def test_sample_and_reconstruct():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    s = model.sample(7, generator=g)
    assert s.shape == (7, 1, 4, 4) and s.min() >= 0 and s.max() <= 1
    again = model.sample(7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(s, again)
    # temperature 0 decodes the prior mean z = 0 for every sample
    cold = model.sample(3, temperature=0.0)
    torch.testing.assert_close(cold, cold[:1].expand_as(cold))
    x = torch.rand(4, 1, 4, 4)
    assert model.reconstruct(x).shape == x.shape
    with pytest.raises(ValueError):
        model.sample(0)


def test_prior_is_standard_normal():
    p = tiny_model().prior()
    torch.testing.assert_close(p.mean, torch.zeros(3))
    torch.testing.assert_close(p.stddev, torch.ones(3))


def test_decode_keeps_leading_sample_dimensions():
    model = tiny_model("gaussian-learned")
    z = torch.randn(2, 5, 3)  # (samples, batch, latent)
    px_z = model.decode(z)
    assert px_z.batch_shape == (2, 5) and px_z.event_shape == (1, 4, 4)
    x = torch.rand(5, 1, 4, 4)
    per_sample = torch.stack([model.decode(z[i]).log_prob(x) for i in range(2)])
    torch.testing.assert_close(px_z.log_prob(x), per_sample)


def _conditional(arch: str = "mlp") -> VAE:
    cfg = ModelConfig(arch=arch, data_shape=(1, 8, 8), hidden=(16,), channels=(4,), latent_dim=2,
                      conditional=True, labels=("cat", "dog", "eel"))
    return VAE(cfg)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_conditional_decoder_depends_on_the_label(arch):
    model = _conditional(arch)
    z = torch.randn(4, 2)
    a = model.decode(z, torch.zeros(4, dtype=torch.long)).mean
    b = model.decode(z, torch.full((4,), 2)).mean
    assert not torch.allclose(a, b)
    k = model.decode(z.expand(3, 4, 2), torch.zeros(4, dtype=torch.long)).mean  # samples broadcast over y
    torch.testing.assert_close(k[1], a)


def test_conditional_model_names_what_is_wrong_with_labels():
    model = _conditional()
    x = torch.rand(3, 1, 8, 8)
    with pytest.raises(ConfigError, match="conditional: pass the labels"):
        model.encode(x)
    with pytest.raises(DataError, match=r"0\.\.2"):
        model.encode(x, torch.tensor([0, 1, 3]))
    with pytest.raises(DataError, match=r"shape \(3,\)"):
        model.encode(x, torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="unknown label 'fox'"):
        model.label_index("fox")
    assert model.label_index("eel") == 2
    with pytest.raises(ConfigError, match="not conditional"):
        tiny_model().encode(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))


def test_conditional_model_needs_its_label_names():
    with pytest.raises(ConfigError, match=r"model\.labels"):
        VAE(ModelConfig(data_shape=(1, 8, 8), conditional=True))


@pytest.mark.parametrize("preset", ["conv", "hvae-conv", "iaf"])
def test_forward_multiply_adds_on_the_meta_device_agree_with_torchs_flop_counter(preset):
    """The count auto's precision reads (linear layers and convolutions, transposed ones included), against
    PyTorch's own flop counter on a real forward pass of the same model."""
    from torch.utils.flop_counter import FlopCounterMode

    from vaekit.model import size

    config = vaekit.preset(preset).override({"model.data_shape": [1, 28, 28]}).model
    model = vaekit.VAE(config)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(4, 1, 28, 28), None)
    assert size.forward_multiply_adds(config, 4) == counter.get_total_flops() // 2 > 0
