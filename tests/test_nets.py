"""Convolutional encoder and decoder: any (C, H, W), exact output sizes, leading sample dimensions."""

from __future__ import annotations

import pytest
import torch

from vaekit import VAE, ConfigError
from vaekit.config import ModelConfig
from vaekit.model.nets import ConvDecoder, ConvEncoder, downsampled


def test_downsampled_sizes_halve_rounding_up():
    assert downsampled((28, 28), 2) == [(28, 28), (14, 14), (7, 7)]
    assert downsampled((30, 45), 3) == [(30, 45), (15, 23), (8, 12), (4, 6)]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 30, 45), (1, 7, 5), (4, 9, 16)])
@pytest.mark.parametrize("channels", [(8,), (8, 16), (4, 8, 16)])
def test_conv_decoder_restores_every_image_size_exactly(shape, channels):
    enc = ConvEncoder(shape, channels, (32,), d_out=6, act="relu")
    dec = ConvDecoder(3, shape, channels, (32,), n_out=2 * shape[0], act="relu")
    assert enc(torch.rand(5, *shape)).shape == (5, 6)
    out = dec(torch.randn(4, 5, 3))  # (k samples, batch, latent)
    assert out.shape == (4, 5, 2 * shape[0] * shape[1] * shape[2])


def test_conv_vae_likelihood_broadcasts_over_posterior_samples():
    m = VAE(ModelConfig(arch="conv", data_shape=(3, 30, 45), channels=(8, 16), hidden=(32,), latent_dim=4,
                        likelihood="gaussian-learned"))
    x = torch.rand(5, 3, 30, 45)
    out = m(x, k=7)
    z, px_z = out.z, out.px_z
    assert z.shape == (7, 5, 4) and px_z.batch_shape == (7, 5) and px_z.event_shape == (3, 30, 45)
    assert px_z.log_prob(x).shape == (7, 5)
    assert m.reconstruct(x).shape == x.shape


def test_each_image_is_decoded_independently_of_its_batch():
    m = VAE(ModelConfig(arch="conv", data_shape=(1, 12, 10), channels=(4, 8), hidden=(16,), latent_dim=3)).eval()
    z = torch.randn(6, 3)
    whole = m.decode(z).mean
    one_by_one = torch.cat([m.decode(z[i : i + 1]).mean for i in range(6)])
    torch.testing.assert_close(whole, one_by_one)


def test_conv_arch_refuses_tables():
    with pytest.raises(ConfigError, match="channels, height, width"):
        VAE(ModelConfig(arch="conv", data_shape=(12,)))


def test_unknown_arch_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"model\.arch"):
        ModelConfig(arch="resnet")
