"""The model: networks, likelihoods p(x|z), priors p(z), posterior families q(z|x) and the VAE that holds them.

``VAE.forward`` returns a ``Pass`` (per stochastic layer a ``Latent``: z, log q, log p, KL; and p(x|z)); the
objectives and every use read it.
"""

from vaekit.model.latent import Latent, NotAvailable, Pass
from vaekit.model.layers import ConditionalLayer, LatentLayer
from vaekit.model.vae import VAE, check_parts

__all__ = ["VAE", "ConditionalLayer", "Latent", "LatentLayer", "NotAvailable", "Pass", "check_parts"]
