"""Convolutional encoder and decoder: any (C, H, W), exact output sizes, leading sample dimensions."""

from __future__ import annotations

import pytest
import torch

from vaekit import VAE, ConfigError
from vaekit.config import ModelConfig
from vaekit.model.nets import ConvDecoder, ConvEncoder, downsampled, up_conv


def test_downsampled_sizes_halve_rounding_up():
    assert downsampled((28, 28), 2) == [(28, 28), (14, 14), (7, 7)]
    assert downsampled((30, 45), 3) == [(30, 45), (15, 23), (8, 12), (4, 6)]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 30, 45), (1, 7, 5), (4, 9, 16)])
@pytest.mark.parametrize("channels", [(8,), (8, 16), (4, 8, 16)])
@pytest.mark.parametrize("upsample", ["transposed", "resize"])
def test_conv_decoder_restores_every_image_size_exactly(shape, channels, upsample):
    enc = ConvEncoder(shape, channels, (32,), d_out=6, act="relu")
    dec = ConvDecoder(3, shape, channels, (32,), n_out=2 * shape[0], act="relu", upsample=upsample)
    assert enc(torch.rand(5, *shape)).shape == (5, 6)
    out = dec(torch.randn(4, 5, 3))  # (k samples, batch, latent)
    assert out.shape == (4, 5, 2 * shape[0] * shape[1] * shape[2])


def test_resize_upsampling_has_no_checkerboard():
    """A constant map stays constant away from the border through resize-then-convolve, whatever the weights;
    through a stride-2 transposed convolution it comes out 2x2-periodic (Odena et al. 2016)."""
    torch.manual_seed(0)
    flat = torch.ones(1, 4, 6, 6)
    resized = up_conv(4, 1, (6, 6), (12, 12), "resize")(flat)[0, 0, 1:-1, 1:-1]
    torch.testing.assert_close(resized, resized[0, 0].expand_as(resized))
    transposed = up_conv(4, 1, (6, 6), (12, 12), "transposed")(flat)[0, 0, 1:-1, 1:-1]
    torch.testing.assert_close(transposed[2:, 2:], transposed[:-2, :-2])  # periodic with period 2 ...
    assert (transposed[:-1] - transposed[1:]).abs().max() > 1e-3  # ... and not constant: neighbours alternate


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


def test_upsample_reaches_every_conv_decoder_and_is_checked():
    for extra in ({}, {"lower_latent_dims": (3,), "latent_channels": 2}):  # ConvDecoder, and MapDecoder
        m = VAE(ModelConfig(arch="conv", data_shape=(3, 9, 7), channels=(4, 8), hidden=(16,), latent_dim=3,
                            upsample="resize", **extra))
        assert any(isinstance(layer, torch.nn.Upsample) for layer in m.modules())
        assert not any(isinstance(layer, torch.nn.ConvTranspose2d) for layer in m.modules())
        assert m(torch.rand(2, 3, 9, 7)).px_z.event_shape == (3, 9, 7)
    with pytest.raises(ConfigError, match=r"model\.upsample"):
        ModelConfig(upsample="bilinear")
